"""A policy fits the data it trains on: collect from another env (other camera names, 4-dim state and
action), train a tiny policy on it, evaluate it with `mot eval --env` in that env."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from policy.checkpoint import load_checkpoint
from training.collect import collect
from training.config import TrainConfig
from training.data import dataset_features
from training.train import train

REPO = Path(__file__).resolve().parents[2]
ENV = "tests.training.other_robot_env:make_other_env"


def test_another_robot_collects_trains_and_evaluates(tmp_path):
    data = tmp_path / "demos"
    collect(data, episodes=6, tasks=["reach"], workers=1, image_size=48, env_spec=ENV,
            expert_spec="tests.training.other_robot_env:other_expert", progress=False)
    features = dataset_features(data)
    assert (features.cameras, features.state_dim, features.action_dim) == (("overhead", "side"), 4, 4)
    assert features.delta_action_mask == (True, True, True, False) and features.fps == 5
    # The policy stage trains without scene tracks; the align stage says in one line why it cannot.
    with pytest.raises(ValueError, match="the align stage needs scene tracks"):
        train(TrainConfig(stage="align", data=str(data), out=str(tmp_path / "align"), preset="tiny", steps=1),
              progress=False)
    result = train(TrainConfig(stage="policy", data=str(data), out=str(tmp_path / "run"), preset="tiny", steps=3,
                               batch_size=4, warmup=1, log_every=1, eval_every=3, ckpt_every=3), progress=False)
    policy = load_checkpoint(result["checkpoint"])
    assert (policy.cfg.cameras, policy.cfg.state_dim, policy.cfg.action_dim) == (("overhead", "side"), 4, 4)
    assert policy.cfg.delta_action_mask == (True, True, True, False)
    done = subprocess.run([sys.executable, "-m", "training.cli", "eval", "--checkpoint", result["checkpoint"],
                           "--env", ENV, "--episodes", "2", "--split", "train", "--json"], cwd=REPO,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    family = json.loads(done.stdout)["splits"]["train"]["per_family"]["reach"]
    assert family["episodes"] == 2 and 0 <= family["successes"] <= 2
    # The sim's own env has other cameras: refused in one line, not run with zero-filled cameras.
    done = subprocess.run([sys.executable, "-m", "training.cli", "eval", "--checkpoint", result["checkpoint"],
                           "--episodes", "1", "--tasks", "reach", "--split", "train"], cwd=REPO,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 2 and "pass --env module:factory" in done.stderr and "Traceback" not in done.stderr
