"""policy_node's `trusted_key`: a robot never runs a checkpoint its key did not sign.

With a trusted key the node does not start on an unsigned or mis-signed checkpoint (CheckpointError
naming it; the console script exits 1 with that one line and publishes nothing); a checkpoint signed
with the key starts and plans, a policy that points included: its grounding head is in the checkpoint,
so the signature covers it.
"""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from safetensors.torch import load_file, save_file
from std_msgs.msg import String
from trajectory_msgs.msg import JointTrajectory

from policy import MoTPolicy, PolicyConfig
from policy.artifacts import sha256_file
from policy.checkpoint import load_checkpoint, save_checkpoint
from policy.errors import CheckpointError
from policy.signing import TRUSTED_KEY_ENV, generate_key_pair, sign_manifest
from tests.ros_nodes.test_policy_node_safety import SIM_YAML, chunks, start

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def keys(tmp_path, monkeypatch):
    monkeypatch.delenv(TRUSTED_KEY_ENV, raising=False)  # only the parameter configures a key here
    return generate_key_pair(tmp_path / "trusted"), generate_key_pair(tmp_path / "other")


def _signed_copy(checkpoint: Path, private_key: str, tmp_path: Path) -> Path:
    copy = tmp_path / f"signed_{Path(private_key).parent.name}"
    shutil.copytree(checkpoint, copy)
    sign_manifest(copy / "manifest.json", private_key)
    return copy


@pytest.mark.parametrize("how", ["unsigned", "signed by another key"])
def test_a_node_with_a_trusted_key_refuses_an_untrusted_checkpoint(ros, tiny_checkpoint, tmp_path, keys, how):
    trusted, other = keys
    checkpoint = tiny_checkpoint if how == "unsigned" else _signed_copy(tiny_checkpoint, other["private_key"], tmp_path)
    trajectories = ros.collect(JointTrajectory, "joint_trajectory")
    with pytest.raises(CheckpointError, match="signed manifest" if how == "unsigned" else "does not verify"):
        start(ros, checkpoint, trusted_key=trusted["public_key"])
    assert trajectories == []


def test_a_node_with_a_trusted_key_runs_a_checkpoint_signed_with_it(ros, tiny_checkpoint, tmp_path, keys):
    trusted, _ = keys
    node, _, instruction = start(ros, _signed_copy(tiny_checkpoint, trusted["private_key"], tmp_path),
                                 trusted_key=trusted["public_key"])
    trajectories = ros.collect(JointTrajectory, "joint_trajectory")
    instruction.publish(String(data="pick up the red cube"))
    ros.wait_for(lambda: len(chunks(trajectories)) >= 1, 30, "a chunk from the signed checkpoint")


def test_the_signature_covers_the_grounding_head_a_policy_points_with(ros, tmp_path, keys):
    """A signed target-points checkpoint starts and plans with no pointer beside it; its grounding head swapped
    (and the manifest re-hashed to match, so the files check out) no longer verifies under the key."""
    trusted, _ = keys
    policy = MoTPolicy(PolicyConfig.preset("tiny"))
    policy.set_target_points("model")
    signed = save_checkpoint(policy, tmp_path / "pointing", signing_key=trusted["private_key"])
    node, _, instruction = start(ros, signed, trusted_key=trusted["public_key"])
    trajectories = ros.collect(JointTrajectory, "joint_trajectory")
    instruction.publish(String(data="put the red cube on the blue pad"))
    ros.wait_for(lambda: len(chunks(trajectories)) >= 1, 30, "a chunk from the signed pointing checkpoint")
    assert node.runner.last_points.shape == (8,)

    swapped = tmp_path / "swapped"
    shutil.copytree(signed, swapped)
    weights = load_file(swapped / "model.safetensors")
    weights["grounding.score.weight"] = -weights["grounding.score.weight"]  # points somewhere else
    save_file(weights, swapped / "model.safetensors")
    manifest = json.loads((swapped / "manifest.json").read_text())
    manifest["files"]["model.safetensors"] = sha256_file(swapped / "model.safetensors")
    (swapped / "manifest.json").write_text(json.dumps(manifest, indent=2))
    assert load_checkpoint(swapped, trusted_key=None).cfg.target_points == "model"  # consistent files: it loads
    with pytest.raises(CheckpointError, match="does not verify"):
        start(ros, swapped, trusted_key=trusted["public_key"])


def test_policy_node_exits_with_one_line_on_an_unsigned_checkpoint(ros, tiny_checkpoint, tmp_path, keys):
    trusted, _ = keys
    trajectories = ros.collect(JointTrajectory, "joint_trajectory")
    env = {**os.environ, "ROS_DOMAIN_ID": str(ros.domain_id), "ROS_AUTOMATIC_DISCOVERY_RANGE": "LOCALHOST"}
    done = subprocess.run([sys.executable, "-m", "ros_nodes.policy_node", "--ros-args", "--params-file", str(SIM_YAML),
                           "-p", f"checkpoint:={tiny_checkpoint}", "-p", f"trusted_key:={trusted['public_key']}",
                           "-p", "lock_memory:=false", "-p", f"estop_latch_file:={tmp_path / 'estop.json'}",
                           "-p", f"estop_token_file:={tmp_path / 'token'}"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 1 and "Traceback" not in done.stderr, done.stderr[-3000:]
    assert "checkpoint: expected a signed manifest" in done.stderr and trusted["key_id"] in done.stderr, done.stderr
    assert trajectories == []
