"""`mot demo`: the shipped checkpoint through `mot run`, else an untrained small policy that points, then acts."""

import json

import numpy as np
import pytest

from policy.checkpoint import FORMAT
from policy.runtime import PolicyRunner
from training import demo
from training.paths import DEFAULT_CHECKPOINT


def _shipped_format() -> str | None:
    try:
        return json.loads((DEFAULT_CHECKPOINT / "manifest.json").read_text()).get("format")
    except (OSError, ValueError, AttributeError):
        return None


def test_without_a_shipped_checkpoint_an_untrained_policy_points_then_acts(monkeypatch, capsys):
    benches = []
    monkeypatch.setattr(demo, "default_checkpoint", lambda: None)
    monkeypatch.setattr(demo.bench, "main", lambda argv: benches.append(argv) or 0)
    assert demo.main(["pick up the red cube"]) == 0
    out = capsys.readouterr().out
    assert "instruction: 'pick up the red cube'" in out and "action chunk (10, 7) (untrained small policy)" in out
    for camera in ("front", "wrist"):
        line = next(line for line in out.splitlines() if line.startswith(f"pointed in {camera}: object at (u, v) ["))
        assert "(confidence 0." in line and ", pad at [" in line
    assert benches == [["inference", "--json", "--iters", "5", "--random-weights"]]


@pytest.mark.parametrize("rc,expected", [(0, 0), (1, 0), (2, 2)])  # 1: the episode ran and failed: the demo worked
def test_with_a_shipped_checkpoint_the_demo_is_mot_run(monkeypatch, rc, expected):
    runs = []
    monkeypatch.setattr(demo, "default_checkpoint", lambda: DEFAULT_CHECKPOINT)
    monkeypatch.setattr(demo.run, "main", lambda argv: runs.append(argv) or rc)
    assert demo.main(["--seed", "3"]) == expected
    assert runs == [["put the red cube on the blue pad", "--seed", "3"]]


@pytest.mark.skipif(_shipped_format() != FORMAT, reason=f"checkpoints/default is not {FORMAT} (a policy that points "
                    "itself) yet: its replacement lands separately")
def test_the_shipped_checkpoint_points_then_acts_from_the_robots_state_alone():
    runner = PolicyRunner.from_checkpoint(DEFAULT_CHECKPOINT)
    cfg = runner.config
    assert cfg.target_points == "model"
    rng = np.random.default_rng(0)
    images = {c: rng.integers(0, 256, (cfg.image_size, cfg.image_size, 3), dtype=np.uint8) for c in cfg.cameras}
    chunk = runner.infer(images, np.zeros(runner.robot_state_dim, np.float32), "put the red cube on the blue pad")
    assert chunk.shape == (cfg.horizon, cfg.action_dim) and np.isfinite(chunk).all()
    assert runner.last_points.shape == (4 * len(cfg.cameras),)
    assert ((runner.last_points >= 0) & (runner.last_points <= 1)).all()
    assert runner.last_confidence.shape == (2 * len(cfg.cameras),)
