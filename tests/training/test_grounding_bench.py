"""`mot bench grounding`: first-frame pointing of a checkpoint on recorded episodes, each with its own instruction."""

import json
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from policy.checkpoint import save_checkpoint
from tests.policy.policies import tiny_policy
from benchmarks.grounding import miss_kind
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
    front = [ep.track.object_pixels[0, ep.track.target_object, 0] for ep in data.episodes]
    shown = sum(bool(((uv >= 0) & (uv < 1)).all()) for uv in front)
    assert sum(flat["front_misses"].values()) == shown > 0  # one kind per first frame whose front camera shows it
    assert result["split"] == "train"
    assert result["chance_cell_acc"] == round(float(np.mean([1 / len(ep.track.object_names) for ep in episodes])), 4)


def test_a_policy_that_does_not_point_is_refused_in_one_line(sim_dataset, tmp_path, capsys):
    save_checkpoint(tiny_policy(points=False), tmp_path / "ckpt")
    assert mot(["bench", "grounding", "--data", str(sim_dataset), "--checkpoints", str(tmp_path / "ckpt")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("mot bench: checkpoints: expected policies that point") and "\n" not in err


TRACK = SimpleNamespace(object_names=["red cube", "blue cube", "red cylinder", "green cylinder", "white cube"],
                        pad_names=["green pad", "white pad"], target_object=0, target_pad=0,
                        object_pixels=np.array([[[[0.1, 0.1]], [[0.5, 0.5]], [[0.9, 0.1]], [[0.1, 0.9]],
                                                 [[0.9, 0.9]]]], np.float32))  # (T=1, objects, cams=1, 2)


@pytest.mark.parametrize("uv, kind", [((0.12, 0.1), "right"), ((0.5, 0.45), "same_shape"),
                                      ((0.85, 0.1), "same_colour"), ((0.1, 0.8), "pad_colour"),
                                      ((0.9, 0.95), "same_shape")])
def test_a_miss_is_named_by_how_the_nearest_object_differs_from_the_instructions(uv, kind):
    assert miss_kind(TRACK, np.array(uv)) == kind


def test_a_miss_is_other_when_the_nearest_object_shares_nothing_and_none_where_the_front_camera_misses_it():
    other = SimpleNamespace(**{**vars(TRACK), "target_pad": 1})  # the pad is white: green cylinder shares nothing
    assert miss_kind(other, np.array([0.1, 0.8])) == "other"
    hidden = SimpleNamespace(**{**vars(TRACK), "object_pixels": TRACK.object_pixels.copy()})
    hidden.object_pixels[0, 0, 0] = [1.2, 0.5]  # off the image
    assert miss_kind(hidden, np.array([0.5, 0.5])) is None
    assert miss_kind(SimpleNamespace(**{**vars(TRACK), "object_pixels": None}), np.array([0.5, 0.5])) is None
