"""inference_nice (policy_node): the inference thread and the backend's pool threads get the configured nice value.

Positive values need no privilege, so the tests use them; the launch YAMLs' -10 needs CAP_SYS_NICE, and a refusal
is logged, never fatal.
"""

import os
import threading

import pytest

from ros_nodes import common
from ros_nodes.common import check_nice, set_thread_nice, thread_ids
from ros_nodes.policy_node import PolicyNode

from .test_policy_node_safety import SIM_YAML


def _nice(tid: int) -> int:
    return os.getpriority(os.PRIO_PROCESS, tid)


class _Idle(threading.Thread):
    """A thread that waits until released: stands for a backend's pool thread."""

    def __init__(self):
        super().__init__(daemon=True)
        self.release = threading.Event()

    def run(self):
        self.release.wait(30)


def test_set_thread_nice_sets_only_the_named_threads():
    pool, bystander = _Idle(), _Idle()
    pool.start(), bystander.start()
    try:
        before = _nice(bystander.native_id)
        assert set_thread_nice({pool.native_id}, 6, pytest.fail)
        assert _nice(pool.native_id) == 6
        assert _nice(bystander.native_id) == before  # Linux nice is per thread: nothing else moved
        assert {pool.native_id, bystander.native_id, threading.get_native_id()} <= thread_ids()
    finally:
        pool.release.set(), bystander.release.set()


def test_a_refused_nice_is_logged_and_inference_goes_on(monkeypatch):
    def refuse(*args):
        raise PermissionError(1, "Operation not permitted")

    monkeypatch.setattr(common.os, "setpriority", refuse)
    messages = []
    assert not set_thread_nice({threading.get_native_id()}, -10, messages.append)
    assert len(messages) == 1 and messages[0].startswith("inference_nice: nice -10 refused") and "CAP_SYS_NICE" in messages[0]


@pytest.mark.parametrize("value", [-21, 20, True, 1.5, "5"])
def test_out_of_range_nice_is_refused_naming_the_parameter(value):
    with pytest.raises(ValueError, match=r"inference_nice: expected an int in -20\.\.19 \(0: normal priority\), received"):
        check_nice(value)


class _Runner:
    """The smallest runner the node accepts (no config: cameras and joints come from the parameters)."""

    robot_state_dim = 7

    def infer(self, images, state, instruction):
        raise RuntimeError("not used")


def test_the_worker_and_the_threads_the_backend_started_while_loading_get_the_nice_value(ros, tmp_path, monkeypatch):
    pool = _Idle()

    def load_runner(self, p):  # as onnxruntime does: its pool threads start with the sessions
        pool.start()
        return _Runner()

    monkeypatch.setattr(PolicyNode, "_load_runner", load_runner)
    bystander = _Idle()
    bystander.start()  # a thread that existed before loading keeps its value
    args = ["--ros-args", "--params-file", str(SIM_YAML), "-p", "cameras:=[front,wrist]", "-p", "lock_memory:=false",
            "-p", "checkpoint:=unused", "-p", "inference_nice:=7",
            "-p", f"estop_latch_file:={tmp_path / 'estop.json'}", "-p", f"estop_token_file:={tmp_path / 'token'}"]
    try:
        before = _nice(bystander.native_id)
        node = ros.add(PolicyNode(cli_args=args, context=ros.context))
        ros.wait_for(lambda: _nice(node._worker.native_id) == 7, 5, "the worker thread at nice 7")
        assert _nice(pool.native_id) == 7
        assert _nice(bystander.native_id) == before
    finally:
        pool.release.set(), bystander.release.set()


def test_the_node_refuses_a_nice_outside_the_kernels_range(ros, tmp_path):
    args = ["--ros-args", "--params-file", str(SIM_YAML), "-p", "cameras:=[front,wrist]", "-p", "inference_nice:=-30",
            "-p", f"estop_latch_file:={tmp_path / 'estop.json'}", "-p", f"estop_token_file:={tmp_path / 'token'}"]
    with pytest.raises(ValueError, match=r"inference_nice: expected an int in -20\.\.19 \(0: normal priority\), received -30"):
        PolicyNode(runner=_Runner(), cli_args=args, context=ros.context)
