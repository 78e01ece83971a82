"""`mot say "pick up the red cube" [--wait]`: publish a typed instruction (or "stop": the e-stop).

With ``--wait`` it waits for the ``status`` topic (sim_node, or any task monitor publishing the same
JSON) to report this instruction's episode done, prints that status and exits 0 on success, 1 on
failure, 2 on timeout.
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass
from typing import Annotated

import rclpy
import tyro
from std_msgs.msg import Bool, String

from policy.errors import InputError
from policy.options import parse
from ros_nodes.commands import parse_command
from ros_nodes.common import RELIABLE_QOS

EXIT_SUCCESS, EXIT_FAILURE, EXIT_TIMEOUT = 0, 1, 2


@dataclass
class SayConfig:
    text: tyro.conf.Positional[Annotated[str, tyro.conf.arg(metavar="TEXT")]]
    """the instruction; a sentence with a stop phrase ('stop', 'halt', 'freeze', "don't move") publishes the e-stop instead"""
    wait: bool = False
    """wait for the episode status and exit with its result"""
    timeout: float = 120.0
    """seconds to wait with --wait"""
    discovery_timeout: float = 5.0
    """seconds to wait for a subscriber before publishing anyway"""
    topic: str = "instruction"
    """the instruction topic"""
    status_topic: str = "status"
    """the episode status topic (JSON) that --wait reads"""
    estop_topic: str = "estop"
    """the e-stop topic (std_msgs/Bool) a stop phrase publishes True on"""

    def __post_init__(self) -> None:
        for name in ("timeout", "discovery_timeout"):
            if not getattr(self, name) >= 0:
                raise InputError(f"{name}: expected seconds >= 0, received {getattr(self, name)}")
        for name in ("topic", "status_topic", "estop_topic"):
            if not getattr(self, name).strip():
                raise InputError(f"{name}: expected a topic name, received an empty string")


def _spin_until(node, predicate, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while not predicate():
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return False
        rclpy.spin_once(node, timeout_sec=min(0.1, remaining))
    return True


def main(argv: list[str] | None = None) -> int:
    args = parse(SayConfig, argv, "mot say", __doc__)
    command = parse_command(args.text)
    if not command.estop and not command.instruction:
        print("mot say: nothing to say (empty instruction)", file=sys.stderr)
        return EXIT_FAILURE
    rclpy.init(args=["mot_say"])
    node = rclpy.create_node("mot_say")
    try:
        # The sim keeps publishing the last episode's status, which may be a finished episode with this
        # same instruction: wait for our episode to be seen running, then for that episode to finish.
        # Episodes numbered up to `baseline` (seen before we published) are someone else's.
        progress = {"baseline": -1, "published": False, "latest": -1}
        started: list[int] = []
        finished: list[dict] = []

        def on_status(msg: String) -> None:
            try:
                status = json.loads(msg.data)
            except ValueError:
                return
            episode = int(status.get("episode", -1))
            progress["latest"] = max(progress["latest"], episode)
            if not progress["published"] or status.get("instruction") != command.instruction:
                return
            if status.get("mode") == "running" and not started and episode > progress["baseline"]:
                started.append(status.get("episode"))
            elif status.get("done") and started and status.get("episode") == started[0]:
                finished.append(status)

        if args.wait and not command.estop:
            node.create_subscription(String, args.status_topic, on_status, RELIABLE_QOS)
        if command.estop:
            publisher, message = node.create_publisher(Bool, args.estop_topic, RELIABLE_QOS), Bool(data=True)
        else:
            publisher, message = node.create_publisher(String, args.topic, RELIABLE_QOS), String(data=command.instruction)
        # A volatile publisher that publishes before discovery completes sends to nobody: wait for a reader.
        if not _spin_until(node, lambda: publisher.get_subscription_count() > 0, args.discovery_timeout):
            print(f"mot say: no subscriber on {publisher.topic_name} after {args.discovery_timeout} s; publishing anyway",
                  file=sys.stderr)
        progress["baseline"], progress["published"] = progress["latest"], True
        publisher.publish(message)
        what = "e-stop" if command.estop else repr(command.instruction)
        print(f"mot say: published {what} on {publisher.topic_name}")
        if not args.wait or command.estop:
            _spin_until(node, lambda: False, 0.3)  # let the reliable writer deliver before we tear down
            return EXIT_SUCCESS

        if not _spin_until(node, lambda: bool(finished), args.timeout):
            print(f"mot say: no result for {command.instruction!r} within {args.timeout} s", file=sys.stderr)
            return EXIT_TIMEOUT
        print(json.dumps(finished[0], sort_keys=True))
        return EXIT_SUCCESS if finished[0].get("success") else EXIT_FAILURE
    finally:
        node.destroy_node()
        rclpy.shutdown()


if __name__ == "__main__":
    raise SystemExit(main())
