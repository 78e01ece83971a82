"""sim_node + policy_node, started the way `mot stack sim` starts them, driven by an /instruction."""

import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest
from sensor_msgs.msg import JointState
from std_msgs.msg import String
from trajectory_msgs.msg import JointTrajectory

pytest.importorskip("sim")
from ros_nodes.stack import build_nodes  # noqa: E402

LOWER = np.array([-2.9, -2.0, -2.6, -2.4, -2.0, -2.9, 0.0])
UPPER = np.array([2.9, 2.0, 2.6, 2.4, 2.0, 2.9, 0.08])


def start_sim_stack(ros, checkpoint, max_steps):
    # lock_memory off: mlockall would lock the whole pytest process (tests/ros_nodes/test_memory_lock.py
    # covers it in a child process). The e-stop files live in a temporary directory, not the user's.
    state = Path(tempfile.mkdtemp(prefix="mot-closed-loop-"))
    overrides = {"policy_node": {"checkpoint": str(checkpoint), "lock_memory": False,
                                 "estop_latch_file": str(state / "estop.json"), "estop_token_file": str(state / "token")},
                 "sim_node": {"max_episode_steps": max_steps, "image_size": 64, "lock_memory": False}}
    for node in build_nodes("sim", overrides, context=ros.context):
        ros.add(node)


def test_instruction_drives_the_sim_to_an_episode_result(ros, tiny_checkpoint):
    trajectories = ros.collect(JointTrajectory, "joint_trajectory")
    states = ros.collect(JointState, "joint_states")
    statuses = ros.collect(String, "status")
    start_sim_stack(ros, tiny_checkpoint, max_steps=25)
    instruction = ros.node.create_publisher(String, "instruction", 10)
    ros.wait_subscribers(instruction, count=2)  # sim_node and policy_node
    ros.wait_for(lambda: len(states) > 0, 10, "joint states from sim_node")
    instruction.publish(String(data="pick up the red cube"))

    def finished():
        return [s for s in map(lambda m: json.loads(m.data), statuses) if s["done"] and s["episode"] == 1]
    ros.wait_for(lambda: finished(), 30, "the episode's final status")
    result = finished()[0]
    assert result["instruction"] == "pick up the red cube" and result["reason"] in ("success", "timeout")
    assert result["step"] == 25 or result["success"]

    chunks = [t for t in trajectories if len(t.points) > 1]
    assert len(chunks) >= 3, "policy_node re-plans several times in a 2.5 s episode"
    for trajectory in trajectories:
        positions = np.array([p.positions for p in trajectory.points])
        assert np.all(positions >= LOWER - 1e-9) and np.all(positions <= UPPER + 1e-9)
    moved = np.abs(np.array(states[-1].position) - np.array(states[0].position)).max()
    assert moved > 1e-3, "the sim follows the trajectories"


def test_mot_say_waits_for_the_episode_result(ros, tiny_checkpoint):
    start_sim_stack(ros, tiny_checkpoint, max_steps=15)
    ros.wait_for(lambda: ros.node.count_publishers("status") > 0, 10, "sim_node")
    env = {"ROS_DOMAIN_ID": str(ros.domain_id), "ROS_AUTOMATIC_DISCOVERY_RANGE": "LOCALHOST"}
    import os
    done = subprocess.run([sys.executable, "-m", "training.cli", "say", "pick up the red cube", "--wait", "--timeout", "40"],
                          capture_output=True, text=True, timeout=60, env={**os.environ, **env})
    assert done.returncode in (0, 1), done.stderr  # 0: success, 1: the (random) policy failed; not 2 (timeout)
    status = json.loads(done.stdout.strip().splitlines()[-1])
    assert status["done"] and status["instruction"] == "pick up the red cube"
