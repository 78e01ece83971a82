"""`mot bench grounding`: first-frame pointing of a checkpoint on recorded episodes, each with its own instruction."""

import json

import numpy as np
import torch

from policy.checkpoint import save_checkpoint
from tests.policy.policies import tiny_policy
from training.cli import main as mot
from training.data import ChunkDataset
from training.losses import cell_targets
from training.manifest import read_episodes


def test_a_policy_that_always_picks_the_first_token_scores_where_that_cell_shows_the_object(sim_dataset, tmp_path,
                                                                                            capsys):
    policy = tiny_policy(points=True)
    with torch.no_grad():  # every token scores the same: the top token is the first (front camera, top left)
        policy.grounding.score.weight.zero_()
        policy.grounding.score.bias.zero_()
    save_checkpoint(policy, tmp_path / "flat")
    save_checkpoint(tiny_policy(points=True, seed=1), tmp_path / "other")
    assert mot(["bench", "grounding", "--data", str(sim_dataset), "--checkpoints", str(tmp_path / "flat"),
                  str(tmp_path / "other"), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)

    _, episodes = read_episodes(sim_dataset)
    data = ChunkDataset(episodes, list(policy.cfg.cameras), policy.cfg.horizon)
    first = np.flatnonzero(data.index[:, 1] == 0)
    cells = cell_targets(data.batch(first)["grounding"]["target_object_pixels"], policy.cfg.feature_grid)
    seen = cells.sum(1) > 0
    flat, other = result["policies"]
    assert flat["frames"] == other["frames"] == int(seen.sum()) > 0
    assert flat["object_cell_acc"] == round(float((cells[seen, 0] > 0).float().mean()), 4)
    tasks = np.array([data.episodes[e].task for e in data.index[first, 0]])[seen.numpy()]
    hit = (cells[seen, 0] > 0).numpy()
    assert flat["per_task"] == {t: round(float(hit[tasks == t].mean()), 4) for t in sorted(set(tasks))}
    assert set(other["per_task"]) == set(flat["per_task"]) and 0 <= other["object_cell_acc"] <= 1
    assert result["split"] == "train"
    assert result["chance_cell_acc"] == round(float(np.mean([1 / len(ep.track.object_names) for ep in episodes])), 4)


def test_a_policy_that_does_not_point_is_refused_in_one_line(sim_dataset, tmp_path, capsys):
    save_checkpoint(tiny_policy(points=False), tmp_path / "ckpt")
    assert mot(["bench", "grounding", "--data", str(sim_dataset), "--checkpoints", str(tmp_path / "ckpt")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("mot bench: checkpoints: expected policies that point") and "\n" not in err
