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


# -- real-time hygiene ---------------------------------------------------------------------------------
MCL_CURRENT, MCL_FUTURE = 1, 2  # <sys/mman.h>


def memory_lock_flags(memlock_limit: int) -> int:
    """mlockall flags for an RLIMIT_MEMLOCK soft limit: MCL_FUTURE only when the limit is unlimited,
    because with MCL_FUTURE every later allocation past the limit would fail (a MemoryError mid-run)."""
    import resource

    return MCL_CURRENT | MCL_FUTURE if memlock_limit == resource.RLIM_INFINITY else MCL_CURRENT


def lock_process_memory(log: Callable[[str], None]) -> bool:
    """Lock the process's pages in RAM (mlockall), as ros2_control's ``lock_memory`` does.

    A control process must not stall on a page fault: when the kernel pages out "cold" memory (memory
    pressure, or a proactive-reclaim daemon), the next inference or camera callback would wait on the
    disk to read code or weights back in. Returns False (and logs why) where locking is not permitted.
    """
    import ctypes
    import os
    import resource

    soft, _ = resource.getrlimit(resource.RLIMIT_MEMLOCK)
    flags = memory_lock_flags(soft)
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.mlockall(flags) != 0:
        errno = ctypes.get_errno()
        log(f"lock_memory: mlockall failed ({os.strerror(errno)}); running with pageable memory "
            f"(raise RLIMIT_MEMLOCK, e.g. `ulimit -l unlimited` or limits.conf, to lock)")
        return False
    if not flags & MCL_FUTURE:
        log("lock_memory: RLIMIT_MEMLOCK is limited: locked the current pages only, not later allocations")
    return True


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
