"""rclpy plumbing shared by the nodes: QoS profiles, parameter helpers, safe decoding, a main() wrapper."""

from __future__ import annotations

import json
import sys
from typing import Any, Callable

import rclpy
from rclpy.node import Node
from rclpy.qos import HistoryPolicy, QoSProfile, ReliabilityPolicy, qos_profile_sensor_data
from rclpy.serialization import deserialize_message
from std_msgs.msg import String

# Camera frames: best effort, keep only the newest (a late frame is worth less than the next one).
# A best-effort subscriber also matches a reliable publisher, so third-party camera drivers work.
IMAGE_QOS = qos_profile_sensor_data
# Commands, states, instructions, e-stop: reliable, a short queue.
RELIABLE_QOS = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE, history=HistoryPolicy.KEEP_LAST)


def now_s(node: Node) -> float:
    return node.get_clock().now().nanoseconds * 1e-9


def declare(node: Node, defaults: dict[str, Any]) -> dict[str, Any]:
    """Declare every parameter in ``defaults`` (the node's whole parameter surface) and read them back.

    Keeping each node's parameters in one module-level dict is what lets the launch-file test check
    that YAML and launch files name only parameters a node declares.
    """
    for name, value in defaults.items():
        node.declare_parameter(name, value)
    return {name: node.get_parameter(name).value for name in defaults}


def decode_string(raw: bytes) -> str:
    """A serialized std_msgs/String -> its text. Raises ValueError for bytes that are not UTF-8.

    Subscriptions to text topics are raw: rclpy would otherwise decode inside the executor, and a
    non-UTF-8 payload from a misbehaving publisher would raise there and take the node down.
    """
    try:
        return deserialize_message(raw, String).data
    except Exception as exc:  # UnicodeDecodeError, or a truncated/corrupt CDR buffer
        raise ValueError(f"instruction: expected UTF-8 std_msgs/String, received undecodable bytes ({exc})") from exc


def json_string(payload: dict) -> String:
    return String(data=json.dumps(payload, sort_keys=True))


def run_node(factory: Callable[[], Node], argv: list[str] | None = None, threads: int = 2) -> int:
    """Console-script body: init, build the node, spin a multi-threaded executor, shut down cleanly."""
    from rclpy.executors import ExternalShutdownException, MultiThreadedExecutor

    rclpy.init(args=sys.argv if argv is None else ["node", *argv])
    node = None
    try:
        node = factory()
        executor = MultiThreadedExecutor(num_threads=threads)
        executor.add_node(node)
        executor.spin()
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    except Exception as exc:  # a node that cannot start (missing checkpoint, bad parameters) says why
        if node is not None and not rclpy.ok():  # a signal shut the context down while spinning: clean stop
            return 0
        print(f"{factory.__name__ if hasattr(factory, '__name__') else 'node'}: {exc}", file=sys.stderr)
        return 1
    finally:
        if node is not None:
            close = getattr(node, "close", None)
            if close:
                close()
            node.destroy_node()
        if rclpy.ok():
            rclpy.shutdown()
    return 0
