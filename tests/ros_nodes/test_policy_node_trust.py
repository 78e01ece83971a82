"""Issue 19 on a real ROS graph: what a robot integrator measured, each one short.

Implausible joint states and bad instructions are also covered with plain numbers in
test_controller.py / test_plausibility.py; here the node's own callbacks, topics and processes.
"""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml
from diagnostic_msgs.msg import DiagnosticArray
from std_msgs.msg import String
from trajectory_msgs.msg import JointTrajectory

from ros_nodes.policy_node import PolicyNode
from tests.ros_nodes.test_policy_node_safety import (HOME, SIM_YAML, FakeRobot, assert_safe, chunks, raw_string,
                                                     start)

ROOT = Path(__file__).resolve().parents[2]


def diagnostics_of(messages, name="policy_node: policy"):
    statuses = [s for m in messages for s in m.status if s.name == name]
    return [(s.level[0], s.message, {kv.key: kv.value for kv in s.values}) for s in statuses]


def test_an_impossible_joint_state_holds_and_is_reported(ros, tiny_checkpoint):
    node, robot, instruction = start(ros, tiny_checkpoint, diagnostics_hz=4.0)
    trajectories = ros.collect(JointTrajectory, "joint_trajectory")
    diagnostics = ros.collect(DiagnosticArray, "/diagnostics")
    instruction.publish(String(data="pick up the red cube"))
    ros.wait_for(lambda: len(chunks(trajectories)) >= 1, 20, "chunks")
    ros.wait_for(lambda: any(level == 0 for level, _, _ in diagnostics_of(diagnostics)), 5, "an OK diagnostic")
    n = len(trajectories)
    robot.position = HOME.copy()
    robot.position[0] = 1e6  # shoulder_pan reported at 1e6 rad
    ros.wait_for(lambda: node.controller.mode == "hold", 2, "the hold")

    def reported_rejections() -> int:
        reports = diagnostics_of(diagnostics)
        return int(reports[-1][2].get("rejected/out_of_range", 0)) if reports else 0

    # Ten rejected states at the robot's 10 Hz take 1 s idle; a loaded CI machine delays the fake
    # robot's timer, so wait on the count the node reports rather than on the clock.
    ros.wait_for(lambda: reported_rejections() >= 10, 15, "ten rejected joint states on /diagnostics")
    after = trajectories[n:]
    first_hold = next(i for i, t in enumerate(after) if len(t.points) == 1)
    assert chunks(after[first_hold:]) == [], "no chunk while the joint state is implausible"
    assert np.allclose(after[first_hold].points[0].positions, HOME), "held at the last believable state"
    level, message, values = diagnostics_of(diagnostics)[-1]
    assert level == 1 and "holding" in message
    assert "outside the limits" in values["last_rejection/out_of_range"]
    robot.position = HOME.copy()
    ros.wait_for(lambda: len(chunks(trajectories[n + first_hold:])) >= 1, 10, "planning to resume")
    assert_safe(trajectories)


def test_bad_and_flooding_instructions(ros, tiny_checkpoint):
    """Non-UTF-8 bytes are dropped (not planned as U+FFFD text); 5 Hz instructions still let it plan."""
    node, robot, instruction = start(ros, tiny_checkpoint)
    trajectories = ros.collect(JointTrajectory, "joint_trajectory")
    instruction.publish(raw_string(b"pick up the \xff\xfe cube"))
    ros.wait_for(lambda: node.controller.metrics.rejections["malformed"] == 1, 5, "the drop")
    assert node.controller.mode == "idle" and node.controller.status(0)["instruction"] == ""
    texts = ["pick up the red cube", "push the blue block"]
    deadline = time.monotonic() + 4.0
    k = 0
    while time.monotonic() < deadline:
        instruction.publish(String(data=texts[k % 2]))
        k += 1
        time.sleep(0.2)
    assert len(chunks(trajectories)) >= 3, f"{len(chunks(trajectories))} chunks with instructions at 5 Hz"
    assert node.controller.metrics.superseded_instructions > 0
    assert_safe(trajectories)


class _Runner:
    """A stand-in for PolicyRunner: holds still (chunks at the observed state); "die" ends the worker."""

    def __init__(self, breaks_after: int, how: str) -> None:
        self.calls, self.breaks_after, self.how = 0, breaks_after, how

    def infer(self, images, state, instruction):
        self.calls += 1
        if self.calls > self.breaks_after and self.how == "die":
            raise SystemExit  # ends the worker thread silently, like a thread killed from inside
        return np.tile(state, (10, 1))


def _break_result_handling(node, after: int) -> None:
    """Our own code after infer raises (a bug, a broken publisher) from the ``after``-th result on."""
    on_result, calls = node.controller.on_result, [0]

    def broken(*args, **kwargs):
        calls[0] += 1
        if calls[0] > after:
            raise RuntimeError("result handling failed")
        return on_result(*args, **kwargs)
    node.controller.on_result = broken


def _fake_node(ros, runner, state_dir):
    args = ["--ros-args", "--params-file", str(SIM_YAML), "-p", "cameras:=[front,wrist]", "-p", "lock_memory:=false",
            "-p", f"estop_latch_file:={state_dir / 'estop.json'}", "-p", f"estop_token_file:={state_dir / 'token'}",
            "-p", "diagnostics_hz:=4.0"]
    return ros.add(PolicyNode(runner=runner, cli_args=args, context=ros.context))


@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")  # the "die" case, on purpose
def test_a_failing_or_dead_worker_is_a_fault_with_a_hold_and_an_error_diagnostic(ros, tmp_path):
    FakeRobot(ros)
    instruction = ros.node.create_publisher(String, "instruction", 10)
    trajectories = ros.collect(JointTrajectory, "joint_trajectory")
    diagnostics = ros.collect(DiagnosticArray, "/diagnostics")
    for how in ("raise", "die"):
        node = _fake_node(ros, _Runner(breaks_after=2, how=how), tmp_path / how)
        if how == "raise":
            _break_result_handling(node, after=2)
        ros.wait_subscribers(instruction)
        n_trajectories, n_diagnostics = len(trajectories), len(diagnostics)
        instruction.publish(String(data="pick up the red cube"))
        ros.wait_for(lambda: node.controller.mode == "fault", 20, f"the fault ({how})")
        assert ("inference worker" in node.controller.fault) if how == "raise" else ("died" in node.controller.fault)
        ros.wait_for(lambda: any(len(t.points) == 1 for t in trajectories[n_trajectories:]), 2, "the hold")
        # /diagnostics is published at diagnostics_hz (1 Hz): a few periods, so a loaded machine's late tick passes
        ros.wait_for(lambda: any(d[0] == 2 for d in diagnostics_of(diagnostics[n_diagnostics:])), 5,
                     "an ERROR diagnostic")
        level, message, values = next(d for d in diagnostics_of(diagnostics[n_diagnostics:]) if d[0] == 2)
        assert message.startswith("fault") and values["mode"] == "fault"
        n = len(trajectories)
        instruction.publish(String(data="push the blue block"))  # a new instruction does not clear a fault
        time.sleep(0.5)
        assert chunks(trajectories[n:]) == [] and node.controller.mode == "fault"
        ros.retire(node)


def _stack_params(tmp_path) -> Path:
    params = yaml.safe_load(SIM_YAML.read_text())
    params["policy_node"]["ros__parameters"].update(
        estop_latch_file=str(tmp_path / "estop.json"), estop_token_file=str(tmp_path / "token"), lock_memory=False)
    params["sim_node"]["ros__parameters"].update(image_size=64, lock_memory=False, max_episode_steps=1000)
    path = tmp_path / "sim.yaml"
    path.write_text(yaml.safe_dump(params))
    return path


def test_sigint_on_mot_stack_sim_publishes_a_final_hold_and_exits_cleanly(ros, tiny_checkpoint, tmp_path):
    trajectories = ros.collect(JointTrajectory, "joint_trajectory")
    env = {**os.environ, "ROS_DOMAIN_ID": str(ros.domain_id), "ROS_AUTOMATIC_DISCOVERY_RANGE": "LOCALHOST",
           "MUJOCO_GL": os.environ.get("MUJOCO_GL", "egl"), "PYTHONUNBUFFERED": "1"}
    process = subprocess.Popen([sys.executable, "-m", "ros_nodes.stack", "sim", "--checkpoint", str(tiny_checkpoint),
                                "--params", str(_stack_params(tmp_path))], cwd=ROOT, env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        instruction = ros.node.create_publisher(String, "instruction", 10)
        ros.wait_for(lambda: instruction.get_subscription_count() >= 2 or process.poll() is not None, 90,
                     "sim_node and policy_node")
        assert process.poll() is None, process.communicate()[1][-3000:]
        instruction.publish(String(data="pick up the red cube"))
        ros.wait_for(lambda: len(chunks(trajectories)) >= 2, 60, "chunks from the stack")
        n = len(trajectories)
        process.send_signal(signal.SIGINT)
        out, err = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
    assert process.returncode == 0, err[-3000:]
    assert "Traceback" not in err, err[-3000:]
    ros.wait_for(lambda: len(trajectories) > n, 2, "the final hold")
    assert len(trajectories[-1].points) == 1, "the last command is a hold"
    assert "stopped" in out
    assert_safe(trajectories)


def test_sigterm_on_policy_node_publishes_a_final_hold(ros, tiny_checkpoint, tmp_path):
    robot = FakeRobot(ros)
    trajectories = ros.collect(JointTrajectory, "joint_trajectory")
    env = {**os.environ, "ROS_DOMAIN_ID": str(ros.domain_id), "ROS_AUTOMATIC_DISCOVERY_RANGE": "LOCALHOST"}
    process = subprocess.Popen([sys.executable, "-m", "ros_nodes.policy_node", "--ros-args", "--params-file",
                                str(SIM_YAML), "-p", f"checkpoint:={tiny_checkpoint}", "-p", "lock_memory:=false",
                                "-p", f"estop_latch_file:={tmp_path / 'estop.json'}",
                                "-p", f"estop_token_file:={tmp_path / 'token'}"],
                               cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        instruction = ros.node.create_publisher(String, "instruction", 10)
        ros.wait_for(lambda: instruction.get_subscription_count() >= 1 or process.poll() is not None, 90, "policy_node")
        assert process.poll() is None, process.communicate()[1][-3000:]
        instruction.publish(String(data="pick up the red cube"))
        ros.wait_for(lambda: len(chunks(trajectories)) >= 1, 60, "chunks")
        n = len(trajectories)
        process.send_signal(signal.SIGTERM)
        _, err = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
    assert process.returncode == 0 and "Traceback" not in err, err[-3000:]
    ros.wait_for(lambda: len(trajectories) > n, 2, "the final hold")
    assert len(trajectories[-1].points) == 1 and np.allclose(trajectories[-1].points[0].positions, robot.position)
