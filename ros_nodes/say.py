"""`mot say "pick up the red cube" [--wait]`: publish a typed instruction (or "stop": the e-stop).

With ``--wait`` it waits for the ``status`` topic (sim_node, or any task monitor publishing the same
JSON) to report this instruction's episode done, prints that status and exits 0 on success, 1 on
failure, 2 on timeout.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

EXIT_SUCCESS, EXIT_FAILURE, EXIT_TIMEOUT = 0, 1, 2


def _spin_until(node, predicate, timeout: float) -> bool:
    import rclpy

    deadline = time.monotonic() + timeout
    while not predicate():
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return False
        rclpy.spin_once(node, timeout_sec=min(0.1, remaining))
    return True


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="mot say", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("text", help="the instruction; a sentence with a stop phrase ('stop', 'halt', 'freeze', \"don't move\") publishes the e-stop instead")
    parser.add_argument("--wait", action="store_true", help="wait for the episode status and exit with its result")
    parser.add_argument("--timeout", type=float, default=120.0, help="seconds to wait with --wait (default 120)")
    parser.add_argument("--discovery-timeout", type=float, default=5.0,
                        help="seconds to wait for a subscriber before publishing anyway (default 5)")
    parser.add_argument("--topic", default="instruction")
    parser.add_argument("--status-topic", default="status")
    parser.add_argument("--estop-topic", default="estop")
    args = parser.parse_args(argv)

    import rclpy
    from std_msgs.msg import Bool, String

    from ros_nodes.commands import parse_command
    from ros_nodes.common import RELIABLE_QOS

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
