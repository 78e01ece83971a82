"""`mot stack sim --record BAG`: the graph's topics go into a ROS 2 bag, finished on SIGINT, that
`mot data import rosbag --topics launch/config/sim_topics.yaml` turns into a dataset."""

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from std_msgs.msg import String

from ros_nodes.bag_recorder import SIM_TOPICS
from ros_nodes.stack import StackConfig
from training.rosbag_import import bag_info, import_rosbag

ROOT = Path(__file__).resolve().parents[2]
SIM_YAML = ROOT / "launch" / "config" / "sim.yaml"
TOPICS_YAML = ROOT / "launch" / "config" / "sim_topics.yaml"
STEPS = 20  # per episode: 2 s at the sim's 10 Hz (room for the first plan on a loaded machine)


def _stack_params(tmp_path) -> Path:
    params = yaml.safe_load(SIM_YAML.read_text())
    params["policy_node"]["ros__parameters"].update(
        estop_latch_file=str(tmp_path / "estop.json"), estop_token_file=str(tmp_path / "token"), lock_memory=False)
    params["sim_node"]["ros__parameters"].update(image_size=64, lock_memory=False, max_episode_steps=STEPS)
    path = tmp_path / "sim.yaml"
    path.write_text(yaml.safe_dump(params))
    return path


def test_the_shipped_topics_file_is_the_recorders_mapping():
    assert yaml.safe_load(TOPICS_YAML.read_text()) == SIM_TOPICS


def test_record_wants_a_new_bag_and_the_sim_graph(tmp_path):
    with pytest.raises(ValueError, match="record: expected a new bag directory"):
        StackConfig("sim", tmp_path, record=tmp_path)
    with pytest.raises(ValueError, match="record: expected the sim graph"):
        StackConfig("robot", tmp_path, record=tmp_path / "bag")


def test_mot_stack_sim_record_writes_a_bag_that_imports_as_a_dataset(ros, tiny_checkpoint, tmp_path):
    bag = tmp_path / "bag"
    env = {**os.environ, "ROS_DOMAIN_ID": str(ros.domain_id), "ROS_AUTOMATIC_DISCOVERY_RANGE": "LOCALHOST",
           "MUJOCO_GL": os.environ.get("MUJOCO_GL", "egl"), "PYTHONUNBUFFERED": "1"}
    process = subprocess.Popen([sys.executable, "-m", "training.cli", "stack", "sim", "--checkpoint", str(tiny_checkpoint),
                                "--params", str(_stack_params(tmp_path)), "--record", str(bag)],
                               cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    statuses = ros.collect(String, "status")
    try:
        instruction = ros.node.create_publisher(String, "instruction", 10)
        # sim_node, policy_node and the recorder all subscribe to /instruction.
        ros.wait_for(lambda: instruction.get_subscription_count() >= 3 or process.poll() is not None, 90,
                     "sim_node, policy_node and bag_recorder")
        assert process.poll() is None, process.communicate()[1][-3000:]
        instruction.publish(String(data="pick up the red cube"))
        ros.wait_for(lambda: any(json.loads(m.data).get("done") for m in statuses), 60, "the episode to end")
        process.send_signal(signal.SIGINT)
        out, err = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
    assert process.returncode == 0 and "Traceback" not in err, err[-3000:]
    assert "bag_recorder" in out and "stopped" in out, out
    assert (bag / "metadata.yaml").is_file() and not list(tmp_path.glob(".bag.*.tmp"))

    topics = bag_info(bag)["topics"]
    assert topics["/camera/front/image_raw"]["count"] > 0 and topics["/camera/wrist/image_raw"]["count"] > 0, topics
    assert topics["/joint_states"]["count"] > 0 and topics["/joint_trajectory"]["count"] > 0, topics
    assert topics["/instruction"]["count"] == 1, topics

    # The shipped mapping, with a gap tolerance for a loaded CI machine: a sim stalled for over 0.5 s (the default
    # max_age_s) would otherwise split the one episode in two (training/rosbag_decode.py control_ticks).
    topics_file = tmp_path / "sim_topics.yaml"
    topics_file.write_text(yaml.safe_dump({**yaml.safe_load(TOPICS_YAML.read_text()), "max_age_s": 2.0}))
    manifest = import_rosbag(bag, tmp_path / "dataset", topics_file, progress=False)
    episodes = list(manifest["episodes"].values())
    assert len(episodes) == 1 and manifest["cameras"] == ["front", "wrist"], manifest
