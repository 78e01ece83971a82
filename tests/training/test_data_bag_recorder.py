"""sim -> bag -> dataset -> policy: the sim stack (sim_node + policy_node) runs briefly with bag_recorder,
`mot data import rosbag` turns the bag into a dataset, and a policy reads that dataset's batches."""

import json
import os
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import yaml

# DDS stays on this machine (as tests/ros_nodes/conftest.py does), before rclpy initialises anything.
os.environ["ROS_AUTOMATIC_DISCOVERY_RANGE"] = "LOCALHOST"
os.environ.pop("ROS_STATIC_PEERS", None)
rclpy = pytest.importorskip("rclpy", reason="ROS 2 rclpy not installed: pip install -e '.[ros]'")
pytest.importorskip("sim")

from rclpy.executors import MultiThreadedExecutor  # noqa: E402
from std_msgs.msg import String  # noqa: E402

from policy import MoTPolicy, PolicyConfig  # noqa: E402
from policy.checkpoint import load_checkpoint, save_checkpoint  # noqa: E402
from ros_nodes import policy_node  # noqa: E402
from ros_nodes.bag_recorder import SIM_TOPICS  # noqa: E402
from ros_nodes.stack import build_nodes  # noqa: E402
from training.data import ChunkDataset, dataset_features, read_episodes  # noqa: E402
from training.data_cli import main  # noqa: E402

STEPS = 12  # per episode: 1.2 s at the sim's 10 Hz


def wait_for(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.02)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


@pytest.mark.parametrize("storage", ["mcap"])
def test_sim_stack_recording_becomes_a_dataset_a_policy_reads(tmp_path, storage):
    checkpoint = save_checkpoint(MoTPolicy(PolicyConfig.preset("tiny")), tmp_path / "tiny")
    bag = tmp_path / "run.bag"
    state = Path(tempfile.mkdtemp(prefix="mot-bag-", dir=tmp_path))
    policy_params = {"checkpoint": str(checkpoint), "lock_memory": False, "estop_latch_file": str(state / "estop.json"),
                     "estop_token_file": str(state / "token")}
    overrides = {"policy_node": {k: v for k, v in policy_params.items() if k in policy_node.PARAMETERS},
                 "sim_node": {"max_episode_steps": STEPS, "image_size": 64, "lock_memory": False},
                 "bag_recorder": {"path": str(bag), "storage": storage}}
    context = rclpy.Context()
    rclpy.init(context=context, domain_id=(os.getpid() * 37) % 200 + 1)
    nodes = []
    executor = MultiThreadedExecutor(num_threads=4, context=context)
    try:
        nodes = build_nodes("sim", overrides, extra=[("bag_recorder", "ros_nodes.bag_recorder:BagRecorder")],
                            context=context)
        helper = rclpy.create_node("test_helper", context=context)
        nodes.append(helper)
        for node in nodes:
            executor.add_node(node)
        statuses = []
        helper.create_subscription(String, "status", lambda m: statuses.append(json.loads(m.data)), 10)
        spinner = threading.Thread(target=executor.spin, daemon=True)
        spinner.start()
        publisher = helper.create_publisher(String, "instruction", 10)
        wait_for(lambda: publisher.get_subscription_count() >= 3, 15, "sim_node, policy_node and the recorder")
        for episode, text in enumerate(["pick up the red cube", "pick up the red cube"], start=1):
            publisher.publish(String(data=text))
            wait_for(lambda e=episode: any(s["done"] and s["episode"] == e for s in statuses), 30, f"episode {episode}")
        time.sleep(0.3)
    finally:
        executor.shutdown(timeout_sec=2.0)
        for node in reversed(nodes):
            close = getattr(node, "close", None)
            if close:
                close()  # the recorder finishes the bag here
            node.destroy_node()
        context.try_shutdown()
    assert (bag / "metadata.yaml").is_file()

    # max_age_s 2: on a loaded CI machine the sim can stall for over the default 0.5 s, which would split an
    # episode at the gap (training/rosbag_decode.py control_ticks)
    (tmp_path / "topics.yaml").write_text(yaml.safe_dump({**SIM_TOPICS, "max_age_s": 2.0}))
    out = tmp_path / "dataset"
    assert main(["import", "rosbag", str(bag), "--out", str(out), "--topics", str(tmp_path / "topics.yaml"),
                 "--no-progress"]) == 0
    manifest, episodes = read_episodes(out)
    # Two episodes with the same words: split at each instruction message, idle ticks between them dropped.
    assert [ep.instruction for ep in episodes] == ["pick up the red cube"] * 2
    assert all(STEPS - 3 <= ep.steps <= STEPS + 1 for ep in episodes), [ep.steps for ep in episodes]
    features = dataset_features(out)
    assert features.cameras == ("front", "wrist") and features.image_size == (64, 64)
    assert (features.state_dim, features.action_dim) == (7, 7) and 9.0 <= features.fps <= 11.0
    assert features.delta_action_mask == (True,) * 6 + (False,)
    # The actions are the policy's commands the sim followed: the arm moves toward them.
    ep = episodes[0]
    assert np.abs(ep.actions - ep.states).max() > 1e-4
    # ... and a policy consumes the imported dataset's batches.
    policy = load_checkpoint(checkpoint)
    data = ChunkDataset(episodes, list(policy.cfg.cameras), policy.cfg.horizon)
    batch = data.batch(np.arange(4))
    chunk = policy.sample_actions({k: batch[k] for k in ("images", "state", "instruction")})
    assert tuple(chunk.shape) == (4, policy.cfg.horizon, 7) and np.isfinite(chunk.numpy()).all()
