"""ROS test harness: real rclpy, DDS confined to this machine, a fresh domain per test.

Each test gets its own rclpy ``Context`` initialised with its own ``domain_id``, so tests never hear
each other (or another test run on the same machine) even though they share one process.
"""

from __future__ import annotations

import os
import threading
import time
from typing import Callable

# Before rclpy initialises anything: discovery stays on localhost (no multicast onto the network).
os.environ["ROS_AUTOMATIC_DISCOVERY_RANGE"] = "LOCALHOST"
os.environ.pop("ROS_STATIC_PEERS", None)

import pytest  # noqa: E402

rclpy = pytest.importorskip("rclpy", reason="ROS 2 rclpy not installed: pip install -e '.[ros]'")

from rclpy.exceptions import InvalidHandle  # noqa: E402
from rclpy.executors import MultiThreadedExecutor  # noqa: E402

from policy import MoTPolicy, PolicyConfig  # noqa: E402
from policy.checkpoint import save_checkpoint  # noqa: E402
from ros_nodes.common import close_node  # noqa: E402

# Domain ids 1..200, offset by the process id so two test runs on one machine do not collide either.
_domain_counter = [(os.getpid() * 37) % 200]


def next_domain_id() -> int:
    _domain_counter[0] = _domain_counter[0] % 200 + 1
    return _domain_counter[0]


class Ros:
    """A context + executor spinning on a background thread + a helper node for the test's own pubs/subs."""

    def __init__(self) -> None:
        self.domain_id = next_domain_id()
        self.context = rclpy.Context()
        rclpy.init(context=self.context, domain_id=self.domain_id)
        self.executor = MultiThreadedExecutor(num_threads=4, context=self.context)
        self.node = rclpy.create_node("test_harness", context=self.context)
        self.executor.add_node(self.node)
        self.nodes = [self.node]
        self.retired: list = []  # out of the spin, destroyed in close()
        self.errors: list[BaseException] = []
        self._closing = False
        self._thread = threading.Thread(target=self._spin, daemon=True)
        self._thread.start()

    def _spin(self) -> None:
        # An exception escaping a callback ends spin(): that is a node crash, and close() fails the test.
        # Except during close(): Executor.shutdown() destroys its guard condition without waiting for the
        # spin loop to leave its wait set, so the loop may trip over a destroyed handle on its way out.
        try:
            self.executor.spin()
        except Exception as exc:
            teardown_race = self._closing and isinstance(exc, InvalidHandle)
            if self.context.ok() and not teardown_race:
                self.errors.append(exc)

    def add(self, node):
        self.nodes.append(node)
        self.executor.add_node(node)
        return node

    def retire(self, node) -> None:
        """Take a node out of the spin and close it, as if its process exited; the others keep running.

        Its handles are destroyed in close(), once the spin has stopped. Destroying them now would race
        rclpy: removing a node from a spinning executor does not wait for the node's callbacks already
        handed to an executor thread, and one of them touching a destroyed handle raises InvalidHandle
        out of spin() (CI saw it once). Until then its subscriptions stay matched, so wait_subscribers
        does not count them.
        """
        self.executor.remove_node(node)
        self.nodes.remove(node)
        self.retired.append(node)
        getattr(node, "close", lambda: None)()  # policy_node: its final hold; destroyed in close()

    def collect(self, msg_type, topic: str, qos=10) -> list:
        received: list = []
        self.node.create_subscription(msg_type, topic, received.append, qos)
        return received

    def wait_for(self, predicate: Callable[[], bool], timeout: float, what: str = "condition") -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if predicate():
                return
            time.sleep(0.02)
        raise AssertionError(f"timed out after {timeout} s waiting for {what}")

    def wait_subscribers(self, publisher, count: int = 1, timeout: float = 10.0) -> None:
        """Wait for ``count`` live subscriptions on the publisher's topic (retired nodes' do not count)."""
        topic = publisher.topic_name
        retired = sum(s.topic_name == topic for node in self.retired for s in node.subscriptions)
        self.wait_for(lambda: publisher.get_subscription_count() >= count + retired, timeout, f"subscribers on {topic}")

    def close(self) -> None:
        self._closing = True
        self.executor.shutdown(timeout_sec=2.0)
        self._thread.join(timeout=5.0)  # the spin loop is out before any node handle is destroyed
        for node in reversed(self.nodes):
            close_node(node)
        for node in self.retired:
            node.destroy_node()
        self.context.try_shutdown()
        assert not self.errors, f"a node crashed: {self.errors!r}"


@pytest.fixture
def ros():
    harness = Ros()
    yield harness
    harness.close()


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory):
    """A randomly initialised tiny-preset checkpoint (cameras front+wrist, 7-D state/action)."""
    path = tmp_path_factory.mktemp("ckpt") / "tiny"
    save_checkpoint(MoTPolicy(PolicyConfig.preset("tiny")), path)
    return path
