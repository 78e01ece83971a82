"""Held-out evaluation during training: what `mot train` prints and logs at every --eval-every.

align:  grounding accuracy (object xy within 3 cm), its median error and cell accuracy (the top-scored
        image token shows the object), for the episodes' instructions and, where the data has scene
        tracks, for referring expressions to random objects; on each episode's first frame (the arm at
        home: the target must be found from the scene) the object error next to a constant guess's.
policy: flow loss at fixed noise and times (comparable across runs and steps).
"""

from __future__ import annotations

import numpy as np
import torch

from training.data import ChunkDataset
from training.losses import StageLoss, cell_targets, grounding_targets, xy_loss

GROUNDING_TOLERANCE_M = 0.03


def object_error_m(xy: torch.Tensor, target: torch.Tensor) -> list[float]:
    """Object xy error (m) per sample where the target is known; xy, target (B, 4) in decimetres."""
    known = torch.isfinite(target[:, 0])
    return ((xy[known, :2] - target[known, :2]).norm(dim=1) / 10).tolist()


def grounding_hits(loss_module: StageLoss, batch: dict) -> tuple[list[float], list[bool], torch.Tensor, torch.Tensor]:
    """(object xy error in m, top-scored token shows the object) per sample where known, + xy, target."""
    scores, _, xy = loss_module.grounding(batch)
    target = grounding_targets(batch)
    dist = cell_targets(batch["grounding"]["target_object_pixels"], loss_module.policy.cfg.feature_grid)
    seen = dist.sum(1) > 0
    top = scores[seen, :, 0].argmax(dim=1)
    cell_hit = dist[seen].gather(1, top[:, None])[:, 0] > 0
    return object_error_m(xy, target), cell_hit.tolist(), xy, target


def align_metrics(loss_module: StageLoss, data: ChunkDataset, indices: np.ndarray, batch_size: int,
                  max_samples: int) -> dict:
    results: dict[str, list] = {"loss": [], "err": [], "cell_hit": [], "referent_cell_hit": [], "start_err": [],
                                "start_target": [], "start_cell_hit": []}
    has_tracks = any(ep.track is not None for ep in data.episodes)
    for start in range(0, len(indices), batch_size):
        chunk = indices[start:start + batch_size]
        err, cell_hit, xy, target = grounding_hits(loss_module, data.batch(chunk))
        results["err"] += err
        results["cell_hit"] += cell_hit
        results["loss"].append(xy_loss(xy, target).item())
        if has_tracks:  # every instruction replaced: does it find the object it is asked about?
            batch = data.batch(chunk, referent_prob=1.0, rng=np.random.default_rng([12345, start]))
            results["referent_cell_hit"] += grounding_hits(loss_module, batch)[1]
    starts = np.flatnonzero(data.index[:, 1] == 0)[:max_samples]  # each episode's first frame
    for start in range(0, len(starts), batch_size):
        err, hits, _, target = grounding_hits(loss_module, data.batch(starts[start:start + batch_size]))
        results["start_cell_hit"] += hits
        results["start_err"] += err
        results["start_target"] += target[torch.isfinite(target[:, 0]), :2].tolist()

    out = {"val_loss": float(np.mean(results["loss"]))}
    if results["err"]:
        out["grounding_acc"] = float(np.mean(np.array(results["err"]) < GROUNDING_TOLERANCE_M))
        out["grounding_err_m"] = float(np.median(results["err"]))
    if results["start_err"]:
        out["start_grounding_err_m"] = float(np.median(results["start_err"]))
        targets = np.array(results["start_target"])  # decimetres
        out["start_guess_err_m"] = float(np.median(np.linalg.norm(targets - targets.mean(0), axis=1)) / 10)
    for key, name in (("cell_hit", "grounding_cell_acc"), ("referent_cell_hit", "referent_cell_acc"),
                      ("start_cell_hit", "start_cell_acc")):
        if results[key]:
            out[name] = float(np.mean(results[key]))
    return out


def policy_metrics(loss_module: StageLoss, data: ChunkDataset, indices: np.ndarray, batch_size: int) -> dict:
    gen = torch.Generator().manual_seed(0)  # the same noise and times at every evaluation
    cfg, losses = loss_module.policy.cfg, []
    for start in range(0, len(indices), batch_size):
        batch = data.batch(indices[start:start + batch_size])
        b = len(batch["instruction"])
        noise = torch.randn((b, cfg.horizon, cfg.action_dim), generator=gen)
        t = torch.rand(b, generator=gen) * 0.98 + 0.01
        losses.append(loss_module.flow_loss(batch, noise, t).item())
    return {"val_loss": float(np.mean(losses))}


@torch.no_grad()
def evaluate_stage(loss_module: StageLoss, data: ChunkDataset, batch_size: int, max_samples: int = 256) -> dict:
    """The stage's held-out metrics on (at most) max_samples fixed samples of `data`."""
    n = min(max_samples, len(data))
    indices = np.random.default_rng(12345).choice(len(data), n, replace=False)
    was_training = loss_module.training
    loss_module.eval()
    try:
        if loss_module.stage == "align":
            return align_metrics(loss_module, data, indices, batch_size, max_samples)
        return policy_metrics(loss_module, data, indices, batch_size)
    finally:
        loss_module.train(was_training)
