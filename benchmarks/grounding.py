"""Does a policy point at what its instruction names?  On recorded episodes of either split; prints JSON.

    mot collect --split heldout --episodes 200 --seed 900000 --out runs/heldout_demos     # held-out words, 40 s
    mot bench grounding --data runs/heldout_demos --checkpoints checkpoints/default runs/retrieval --json

Closed-loop success (`mot eval`) takes minutes per checkpoint and mixes pointing with acting; this isolates the
pointing. For each episode's first frame (the arm at home: the target must be found from the scene, as at the
start of every `mot eval` episode) the policy reads the episode's own instruction and its grounding head scores
every image token; a hit is a top-scored token whose cell shows the instruction's object (the same test as
`mot train`'s `start_cell_acc`, training/holdout.py). Per checkpoint:

  object_cell_acc            share of first frames where the top token shows the object, overall and per task
  front_misses               the front camera's top token, per first frame that shows the object there: which
                             object is nearest its cell centre, as the instruction's ("right"), another colour of
                             the same shape, the same colour of another shape, the colour of the instruction's
                             pad, or another
  chance_cell_acc            what picking a random object of the scene would score (1 / objects, averaged)
  frames, split              how many first frames, and the dataset's instruction split (its manifest)

Nothing here trains: the held-out split is only ever evaluated.
"""

from __future__ import annotations

import json
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from policy.checkpoint import load_checkpoint  # noqa: E402
from policy.errors import InputError  # noqa: E402
from policy.options import parse  # noqa: E402
from training.cli import run_command  # noqa: E402
from training.data import ChunkDataset  # noqa: E402
from training.episodes import Episode  # noqa: E402
from training.holdout import grounding_hits  # noqa: E402
from training.losses import StageLoss  # noqa: E402
from training.manifest import read_episodes  # noqa: E402


@dataclass
class GroundingBenchConfig:
    data: Path
    """a `mot collect` dataset with scene tracks (either split)"""
    checkpoints: list[Path] = field(default_factory=lambda: [Path("checkpoints/default")])
    """policies that point (target_points 'model'), measured on the same frames"""
    episodes: int = 200
    """first frames of this many episodes (all when fewer)"""
    batch_size: int = 50
    json: bool = False
    """print the JSON object on one line"""


MISS_KINDS = ("right", "same_shape", "same_colour", "pad_colour", "other")


def miss_kind(track, uv: np.ndarray) -> str | None:
    """Which object of the first frame is nearest `uv` (u, v) in the front camera (camera 0), as a MISS_KINDS
    entry relative to the instruction's object (names are "<colour> <shape>"); None where the front camera does
    not show that object (or the episode records no pixels)."""
    if track.object_pixels is None:
        return None
    pixels = track.object_pixels[0, :, 0]  # (objects, 2) where each object is in the front camera
    if not ((pixels[track.target_object] >= 0) & (pixels[track.target_object] < 1)).all():
        return None
    nearest = int(np.argmin(np.linalg.norm(pixels - uv, axis=1)))
    if nearest == track.target_object:
        return "right"
    (colour, shape), (near_colour, near_shape) = (track.object_names[i].split() for i in (track.target_object, nearest))
    if near_shape == shape:
        return "same_shape"
    if near_colour == colour:
        return "same_colour"
    pad = track.pad_names[track.target_pad].split()[0] if track.target_pad >= 0 else None
    return "pad_colour" if near_colour == pad else "other"


def front_misses(scores: torch.Tensor, episodes: list[Episode], grid: int) -> list[str | None]:
    """Token scores (B, cams * grid^2, 2) of B first frames -> miss_kind of the front camera's top object token."""
    top = scores[:, :grid * grid, 0].argmax(dim=1).numpy()  # token order: camera, row, column
    uv = (np.stack([top % grid, top // grid], axis=1) + 0.5) / grid  # (B, 2) cell centres
    return [miss_kind(ep.track, point) for ep, point in zip(episodes, uv)]


@torch.no_grad()
def measure(checkpoint: Path, policy, data: ChunkDataset, frames: np.ndarray, batch_size: int) -> dict:
    """One policy's first-frame hits on `frames` (indices into `data`), overall and per task family (frames whose
    object shows in no cell are left out, as grounding_hits does)."""
    loss = StageLoss(policy.eval(), "align")
    task_of = np.array([data.episodes[e].task for e in data.index[frames, 0]])
    per_task = {}
    for task in sorted(set(task_of)):
        mine = frames[task_of == task]
        per_task[task] = [hit for start in range(0, len(mine), batch_size)
                          for hit in grounding_hits(loss, data.batch(mine[start:start + batch_size]))[1]]
    hits = [hit for task_hits in per_task.values() for hit in task_hits]
    kinds = [kind for start in range(0, len(frames), batch_size)
             for kind in front_misses(loss.grounding(data.batch(frames[start:start + batch_size]))[0],
                                      [data.episodes[e] for e in data.index[frames[start:start + batch_size], 0]],
                                      policy.cfg.feature_grid)]
    return {"checkpoint": str(checkpoint), "language_model": policy.cfg.language_model or "minilm",
            "text_bridge": policy.cfg.text_bridge if policy.cfg.bridged else None,
            "object_cell_acc": round(float(np.mean(hits)), 4),
            "per_task": {task: round(float(np.mean(h)), 4) for task, h in per_task.items() if h}, "frames": len(hits),
            "front_misses": {kind: kinds.count(kind) for kind in MISS_KINDS}}


def run(cfg: GroundingBenchConfig) -> dict:
    manifest, episodes = read_episodes(cfg.data)
    episodes = [ep for ep in episodes if ep.track is not None and ep.track.target_object >= 0][:cfg.episodes]
    if not episodes:
        raise InputError(f"data: expected episodes with scene tracks (`mot collect` records them), {cfg.data} has none")
    policies = [load_checkpoint(c) for c in cfg.checkpoints]
    for checkpoint, policy in zip(cfg.checkpoints, policies):
        if policy.cfg.target_points is None:
            raise InputError(f"checkpoints: expected policies that point (target_points 'model'), {checkpoint} has none")
    data = ChunkDataset(episodes, list(policies[0].cfg.cameras), policies[0].cfg.horizon)
    frames = np.flatnonzero(data.index[:, 1] == 0)
    chance = float(np.mean([1 / len(ep.track.object_names) for ep in episodes]))
    return {"data": str(cfg.data), "split": manifest.get("split"), "chance_cell_acc": round(chance, 4),
            "policies": [measure(c, p, data, frames, cfg.batch_size) for c, p in zip(cfg.checkpoints, policies)]}


def main(argv: list[str] | None = None) -> int:
    cfg = parse(GroundingBenchConfig, argv, "mot bench grounding", __doc__.split("\n\n")[0])
    print(json.dumps(run(cfg), indent=None if cfg.json else 2))
    return 0


if __name__ == "__main__":  # as a script too: a mistake is one line and exit 2, as under `mot bench`
    sys.exit(run_command("bench grounding", main, sys.argv[1:]))
