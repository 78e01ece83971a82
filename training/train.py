"""`mot train`: the two training stages of the MoT policy.

    mot train --stage align  --data data/demos --out runs/align  --steps 1500
    mot train --stage policy --data data/demos --out runs/policy --init runs/align/checkpoint --steps 4000

align:  the image projection + vision expert learn grounding: from the instruction and the images,
        predict where the referred object (and pad) is on the table. The language expert is frozen.
        Grounding accuracy (object within 3 cm) on held-out episodes is printed and logged.
policy: flow matching of the body expert; language and vision frozen, so the prefix runs without
        autograd (MoTPolicy.compute_loss) and a step costs little more than the body expert.

AdamW, linear warmup + cosine decay, gradient clipping, optional EMA of the weights, a CSV of scalars
and a loss-curve PNG, periodic atomic checkpoints (`OUT/checkpoint` = a policy checkpoint, with EMA
weights when enabled; `OUT/train_state.pt` = raw weights, optimizer, scheduler, step). `--resume`
continues after a kill -9, losing at most one checkpoint interval. Batches are drawn from a seed that
depends only on (seed, step, rank), so a resumed run sees exactly the batches it would have seen.

Multi-process: `torchrun --nproc_per_node 2 -m training.train ...` (DDP, gloo on CPU); each rank draws
its own batches, gradients are averaged, rank 0 writes files.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import datetime
import io
import json
import math
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from policy import MoTPolicy, NormStats, PolicyConfig
from policy.checkpoint import STORAGE_DTYPES
from policy.inputs import validate_batch
from policy.pointing import GroundingHead
from training.data import ChunkDataset, atomic_write_bytes, read_episodes, split_episodes
from training.pointed import swap_points

GROUNDING_TOLERANCE_M = 0.03


@dataclass
class TrainConfig:
    stage: str
    data: str
    out: str
    preset: str = "small"
    init: str | None = None  # a policy checkpoint to start from (the align stage's, for "policy")
    routing: str = "mot"
    prefix_mask: str = "blockwise"
    train_vision: bool = False  # ablation: unfreeze the vision expert in the policy stage
    # New policies only: PolicyConfig.image_token_stride (None: the preset's; 16 = 8x8 tokens per camera).
    image_token_stride: int | None = None
    # align: chance per sample that the instruction becomes a referring expression for a random object
    # of the scene (training/data.py ChunkDataset.batch); needs datasets with per-frame scene tracks.
    referents: float = 0.5
    # align: share of those referring expressions that name a pad of the scene too (ChunkDataset.batch).
    pad_referents: float = 0.0
    # Share of every batch drawn from the first `early_window` frames of the episodes. There the arm is
    # still at home: nothing but the words and pixels says where to go (later, the arm's pose and the
    # gripper in the images do), so these are the frames that teach grounding. 0: uniform over frames.
    early_fraction: float = 0.0
    early_window: int = 3
    # policy: weight of the body's auxiliary grounding loss (BodyGroundingHead; 0 = flow loss only).
    body_grounding: float = 1.0
    # policy: give the body a goal token (PolicyConfig.goal_token) that the grounding loss then trains.
    goal_token: bool = False
    # policy: the state also carries where the instruction's object and pad appear (PolicyConfig.target_points;
    # trained on the simulator's ground truth). "sim": at inference too, from the simulator's info (an upper
    # bound: the body's success with grounding solved; the checkpoint runs in `mot eval` only).
    target_points: str | None = None
    # policy: the cameras whose target points the state carries (PolicyConfig.point_cameras; None: all).
    point_cameras: list[str] | None = None
    # policy: std of Gaussian noise added to the training target points, in image fractions (0.02 = 2.6 px at
    # 128 px): a body trained on the simulator's exact points then tolerates a pointer's error.
    point_noise: float = 0.0
    # policy: an align run whose pointer's points replace the exact ones for a `pointed_share` of the samples
    # (training/pointed.py): the body learns from the points it will get on a robot.
    train_points_from: str | None = None
    pointed_share: float = 0.5
    # "on": joint targets relative to the measured joints (the preset's delta_action_mask); "off":
    # absolute; None: the preset's choice for a new policy, the --init checkpoint's otherwise.
    delta_actions: str | None = None
    steps: int = 2000
    batch_size: int = 32
    lr: float = 3e-4
    weight_decay: float = 1e-4
    warmup: int = 100
    min_lr_ratio: float = 0.1
    grad_clip: float = 1.0
    ema: float = 0.0  # EMA decay (0 = off), e.g. 0.999
    log_every: int = 25
    eval_every: int = 250
    ckpt_every: int = 250
    holdout_fraction: float = 0.1
    save_dtype: str = "float32"  # storage dtype of OUT/checkpoint ("float16" for the shipped checkpoint)
    cache_prefix: bool = True  # policy stage: compute the frozen text/image K/V once (training/prefix_cache.py)
    prefix_cache_dir: str | None = None  # where built caches are kept (None: OUT/prefix_cache; share it across runs)
    seed: int = 0
    resume: bool = False
    stop_at: int | None = None  # leave after this step (checkpointed), as a kill would; --resume continues

    def __post_init__(self) -> None:
        if self.stage not in ("align", "policy"):
            raise ValueError(f"stage: expected 'align' or 'policy', received {self.stage!r}")
        for name in ("steps", "batch_size", "log_every", "eval_every", "ckpt_every", "early_window"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name}: expected > 0, received {getattr(self, name)}")
        if self.save_dtype not in STORAGE_DTYPES:
            raise ValueError(f"save_dtype: expected one of {sorted(STORAGE_DTYPES)}, received {self.save_dtype!r}")
        if self.delta_actions not in (None, "on", "off"):
            raise ValueError(f"delta_actions: expected 'on', 'off' or None, received {self.delta_actions!r}")
        if not 0.0 <= self.ema < 1.0:
            raise ValueError(f"ema: expected a decay in [0, 1), received {self.ema}")
        if self.body_grounding < 0:
            raise ValueError(f"body_grounding: expected a weight >= 0, received {self.body_grounding}")
        for name in ("referents", "pad_referents"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name}: expected a probability in [0, 1], received {getattr(self, name)}")
        if self.point_noise < 0 or (self.point_noise > 0 and self.target_points is None):
            raise ValueError(f"point_noise: expected >= 0, and target_points set when > 0; received {self.point_noise} "
                             f"with target_points {self.target_points!r}")
        if self.train_points_from is not None and (self.target_points is None or not 0.0 < self.pointed_share <= 1.0):
            raise ValueError(f"train_points_from: expected target_points set and pointed_share in (0, 1], received "
                             f"target_points {self.target_points!r} and pointed_share {self.pointed_share}")
        if self.point_cameras is not None and self.target_points is None:
            raise ValueError(f"point_cameras: expected target_points set with it, received point_cameras "
                             f"{self.point_cameras} and target_points None")
        if self.target_points is not None and self.stage != "policy":
            raise ValueError("target_points: expected stage 'policy' (it widens the body's state), "
                             f"received stage {self.stage!r}")
        if not 0.0 <= self.early_fraction <= 1.0:
            raise ValueError(f"early_fraction: expected a share of the batch in [0, 1], received {self.early_fraction}")


class BodyGroundingHead(nn.Module):
    """Policy stage, training only: the instruction's object and pad (x, y in decimetres) read from the
    body token `MoTPolicy.encode_state` hands back: the goal token when the config has one, else the
    state token. Discarded after training.

    The flow loss alone lets the body infer its goal from the arm: mid-reach the joint angles already
    point at the target, so most frames are predicted without looking at the scene. Every action token
    attends to this token, so asking it where the referred object and pad are gives the body a dense
    reason to read the prefix. Read from the state token, the head can answer from the arm's pose too;
    the goal token never sees the state, so its error (and `start_grounding_err_m` in evaluate_stage,
    on frames where the arm is at home) measures what the body gets from the words and pixels.
    """

    def __init__(self, width: int):
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(width, 256), nn.GELU(), nn.Linear(256, 4))

    def forward(self, state_h: torch.Tensor) -> torch.Tensor:
        """state token (B, D_body) -> (object xy, pad xy) in decimetres (B, 4)."""
        return self.mlp(state_h)


def grounding_targets(batch: dict) -> torch.Tensor:
    """(B, 4) object xy + pad xy in decimetres (NaN where the episode has no pad)."""
    g = batch["grounding"]
    return torch.from_numpy(np.concatenate([g["target_object_pos"][:, :2], g["target_pad_pos"][:, :2]], 1) * 10)


def pixel_cells(pixels: np.ndarray, grid: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Image positions (B, cams, 2) as (u, v) in [0, 1] -> where they fall among the image tokens:
    (sample, camera) indices of the points inside an image, their token index (camera, row, column
    order) and their (du, dv) offset from that cell's centre in cells, in [-0.5, 0.5)."""
    with np.errstate(invalid="ignore"):
        inside = ((pixels >= 0) & (pixels < 1)).all(-1)  # NaN (unknown) compares False: not inside
    bi, ci = np.nonzero(inside)
    scaled = pixels[bi, ci] * grid  # (n, 2) = (column, row) in cells
    cell = scaled.astype(np.int64)
    token = ci * grid * grid + cell[:, 1] * grid + cell[:, 0]
    return bi, ci, token, (scaled - cell - 0.5).astype(np.float32)


def cell_targets(pixels: np.ndarray, grid: int) -> torch.Tensor:
    """Image positions (B, cams, 2) in [0, 1] -> (B, cams * grid**2) target distribution over the image
    tokens (token order: camera, row, column), uniform over the cells that show the point in any
    camera; all zeros where none does (NaN, or outside the image)."""
    b, cams, _ = pixels.shape
    target = np.zeros((b, cams * grid * grid), np.float32)
    bi, _, token, _ = pixel_cells(pixels, grid)
    target[bi, token] = 1.0
    total = target.sum(1, keepdims=True)
    return torch.from_numpy(np.divide(target, total, out=np.zeros_like(target), where=total > 0))


def xy_loss(xy: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Smooth L1 between (B, 4) predictions and targets in decimetres, where the target is known."""
    known = torch.isfinite(target)
    if not known.any():  # e.g. a dataset without positions: no term (and no NaN)
        return xy.sum() * 0.0
    return F.smooth_l1_loss(xy[known], target[known])


PIXEL_KEYS = ("target_object_pixels", "target_pad_pixels")  # order of GroundingHead's scores


class StageLoss(nn.Module):
    """One module per stage so DDP can wrap it: forward(batch) -> scalar loss."""

    def __init__(self, policy: MoTPolicy, stage: str, body_grounding: float = 0.0):
        super().__init__()
        self.policy, self.stage, self.body_grounding = policy, stage, body_grounding
        self.head = GroundingHead(policy.dims.width) if stage == "align" else None
        body_width = policy.action_in.out_features
        self.body_head = BodyGroundingHead(body_width) if stage == "policy" and body_grounding > 0 else None

    def grounding(self, batch: dict) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """-> token scores (B, N_image, 2), token offsets (B, N_image, 2, 2), (object xy, pad xy) in
        decimetres (B, 4)."""
        obs = validate_batch(batch, self.policy.cfg)
        with torch.no_grad():  # the language expert is frozen: its K/V need no graph
            text = self.policy.encode_text(*self.policy.tokenizer(obs.instruction))
        _, image_h = self.policy.encode_images(obs.images, text, return_hidden=True)
        return self.head(image_h)

    def policy_losses(self, batch: dict, noise: torch.Tensor | None = None,
                      time: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """-> flow loss, body head's (object xy, pad xy) in decimetres (B, 4) or None without the head."""
        if "prefix" in batch:  # frozen prefix from the PrefixCache
            flow, state_h = self.policy.flow_matching_loss(
                batch["prefix"], torch.from_numpy(batch["state"]), torch.from_numpy(batch["actions"]), noise, time,
                return_state_hidden=True)
        else:
            flow, state_h = self.policy.compute_loss(batch, noise, time, return_state_hidden=True)
        return flow, (self.body_head(state_h) if self.body_head is not None else None)

    def forward(self, batch: dict) -> torch.Tensor:
        if self.stage == "policy":
            flow, xy = self.policy_losses(batch)
            if xy is None:
                return flow
            return flow + self.body_grounding * xy_loss(xy, grounding_targets(batch))
        scores, offsets, xy = self.grounding(batch)
        loss = xy_loss(xy, grounding_targets(batch))
        grid = self.policy.cfg.feature_grid
        for k, key in enumerate(PIXEL_KEYS):  # where the data says which cells show the object / pad:
            if key not in batch["grounding"]:
                continue
            # cross-entropy of the token scores against the cells that show it,
            dist = cell_targets(batch["grounding"][key], grid)
            seen = dist.sum(1) > 0
            if seen.any():
                loss = loss - (dist[seen] * torch.log_softmax(scores[seen, :, k], dim=1)).sum(1).mean()
            # and, for each of those tokens, where in its cell (smooth L1 in half-cells).
            bi, _, token, offset = pixel_cells(batch["grounding"][key], grid)
            if len(bi):
                predicted = offsets[torch.from_numpy(bi), torch.from_numpy(token), k]
                loss = loss + F.smooth_l1_loss(2 * predicted, 2 * torch.from_numpy(offset))
        return loss


def jitter_points(state: np.ndarray, dims: int, sigma: float, rng: np.random.Generator) -> np.ndarray:
    """Training states (B, S) whose last `dims` entries are target points -> the same with Gaussian noise of
    std `sigma` on the points, clipped into the image [0, 1] (the joints are untouched)."""
    out = state.copy()
    out[:, -dims:] = np.clip(out[:, -dims:] + rng.normal(0.0, sigma, (len(out), dims)), 0.0, 1.0)
    return out


def lr_at(step: int, cfg: TrainConfig) -> float:
    """Linear warmup to 1, then cosine decay to min_lr_ratio (a multiplier of cfg.lr)."""
    if step < cfg.warmup:
        return (step + 1) / cfg.warmup
    progress = min(1.0, (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup))
    return cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def batch_indices(step: int, rank: int, cfg: TrainConfig, n: int, early: np.ndarray | None = None) -> np.ndarray:
    """Sample indices (batch_size,) for this step and rank: uniform over the n samples, then the first
    round(early_fraction * batch_size) replaced by draws from `early` (the samples of the episodes'
    first early_window frames). Depends only on (seed, step, rank): a resumed run draws the same."""
    rng = np.random.default_rng([cfg.seed, step, rank])
    indices = rng.integers(0, n, cfg.batch_size)
    n_early = int(round(cfg.early_fraction * cfg.batch_size))
    if n_early and early is not None and len(early):
        indices[:n_early] = early[rng.integers(0, len(early), n_early)]
    return indices


# -- evaluation during training --------------------------------------------------------------------
@torch.no_grad()
def evaluate_stage(loss_module: StageLoss, data: ChunkDataset, cfg: TrainConfig, max_samples: int = 256) -> dict:
    """align: for the episodes' instructions, grounding accuracy (object xy within 3 cm), its median error
    and cell accuracy (the top-scored image token shows the object); where the data has scene tracks,
    cell accuracy for referring expressions to random objects too. policy: flow loss at fixed
    noise/time, and with the body's grounding head the same accuracy and error of its object xy.

    Both stages also report `start_grounding_err_m`: the median object xy error on the first frame of
    each held-out episode, where the arm is at home and the wrist camera sees no close-up: the frame
    where the target must be found from the scene, and the one a rollout starts from; next to it
    `start_guess_err_m`, the same error for a constant guess (the mean position): no scene read at all.
    align adds `start_cell_acc`: on those frames, the top-scored token shows the object."""
    n = min(max_samples, len(data))
    indices = np.random.default_rng(12345).choice(len(data), n, replace=False)
    was_training = loss_module.training
    loss_module.eval()
    results: dict[str, list] = {"loss": [], "err": [], "cell_hit": [], "referent_cell_hit": [], "start_err": [],
                                "start_target": [], "start_cell_hit": []}
    gen = torch.Generator().manual_seed(0)
    has_tracks = any(ep.track is not None for ep in data.episodes)
    grid = loss_module.policy.cfg.feature_grid

    def object_error_m(xy: torch.Tensor, target: torch.Tensor) -> list[float]:
        """Object xy error (m) per sample where the target is known."""
        known = torch.isfinite(target[:, 0])
        return ((xy[known, :2] - target[known, :2]).norm(dim=1) / 10).tolist()

    def hits(batch: dict) -> tuple[list[float], list[bool], torch.Tensor, torch.Tensor]:
        """(object xy error in m, top-scored token shows the object) per sample where known."""
        scores, _, xy = loss_module.grounding(batch)
        target = grounding_targets(batch)
        dist = cell_targets(batch["grounding"]["target_object_pixels"], grid)
        seen = dist.sum(1) > 0
        top = scores[seen, :, 0].argmax(dim=1)
        cell_hit = dist[seen].gather(1, top[:, None])[:, 0] > 0
        return object_error_m(xy, target), cell_hit.tolist(), xy, target

    for start in range(0, n, cfg.batch_size):
        batch = data.batch(indices[start:start + cfg.batch_size])
        if cfg.stage == "align":
            err, cell_hit, xy, target = hits(batch)
            results["err"] += err
            results["cell_hit"] += cell_hit
            results["loss"].append(xy_loss(xy, target).item())
            if has_tracks:  # every instruction replaced: does it find the object it is asked about?
                rng = np.random.default_rng([12345, start])
                results["referent_cell_hit"] += hits(data.batch(indices[start:start + cfg.batch_size],
                                                                referent_prob=1.0, rng=rng))[1]
        else:
            b = len(batch["instruction"])
            shape = (b, loss_module.policy.cfg.horizon, loss_module.policy.cfg.action_dim)
            noise, t = torch.randn(shape, generator=gen), torch.rand(b, generator=gen) * 0.98 + 0.01
            flow, xy = loss_module.policy_losses(batch, noise, t)
            results["loss"].append(flow.item())
            if xy is not None:
                results["err"] += object_error_m(xy, grounding_targets(batch))
    if cfg.stage == "align" or loss_module.body_head is not None:
        starts = np.flatnonzero(data.index[:, 1] == 0)[:max_samples]
        for start in range(0, len(starts), cfg.batch_size):
            batch = data.batch(starts[start:start + cfg.batch_size])
            if cfg.stage == "align":
                _, start_hits, xy, target = hits(batch)
                results["start_cell_hit"] += start_hits
            else:
                xy, target = loss_module.policy_losses(batch)[1], grounding_targets(batch)
            results["start_err"] += object_error_m(xy, target)
            results["start_target"] += target[torch.isfinite(target[:, 0]), :2].tolist()
    loss_module.train(was_training)
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


# -- files -------------------------------------------------------------------------------------------
def trainable_state(module: nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in module.named_parameters() if p.requires_grad}


def save_training(out: Path, loss_module: StageLoss, opt, step: int, ema: dict | None, cfg: TrainConfig) -> None:
    """Policy checkpoint (EMA weights if enabled) + resumable training state, both atomic."""
    policy = loss_module.policy
    raw = trainable_state(loss_module)
    if ema is not None:  # the checkpoint users run is the EMA; the raw weights stay in train_state
        with torch.no_grad():
            for name, p in loss_module.named_parameters():
                if name in ema:
                    p.copy_(ema[name])
    policy.save(out / "checkpoint", dtype=STORAGE_DTYPES[cfg.save_dtype])
    if ema is not None:
        with torch.no_grad():
            for name, p in loss_module.named_parameters():
                if name in raw:
                    p.copy_(raw[name])
    buf = io.BytesIO()
    torch.save({"step": step, "params": raw, "ema": ema, "optimizer": opt.state_dict(),
                "config": dataclasses.asdict(cfg)}, buf)
    atomic_write_bytes(out / "train_state.pt", buf.getvalue())


class MetricsLog:
    """CSV of scalars (one row per log step) + a loss-curve PNG; rows past a resumed step are dropped."""

    FIELDS = ["step", "loss", "lr", "grad_norm", "samples_per_s", "elapsed_s", "val_loss", "grounding_acc",
              "grounding_err_m", "start_grounding_err_m", "start_guess_err_m", "grounding_cell_acc",
              "referent_cell_acc", "start_cell_acc"]

    def __init__(self, out: Path, resume_step: int):
        self.path, self.rows = out / "metrics.csv", []
        if resume_step > 0 and self.path.exists():
            with open(self.path) as f:
                self.rows = [r for r in csv.DictReader(f) if int(r["step"]) <= resume_step]

    def add(self, row: dict) -> None:
        self.rows.append({k: row.get(k, "") for k in self.FIELDS})

    def flush(self, title: str) -> None:
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=self.FIELDS)
        writer.writeheader()
        writer.writerows(self.rows)
        atomic_write_bytes(self.path, buf.getvalue().encode())
        self.plot(title)

    def plot(self, title: str) -> None:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        steps = [int(r["step"]) for r in self.rows if r["loss"] != ""]
        losses = [float(r["loss"]) for r in self.rows if r["loss"] != ""]
        if not steps:
            return
        fig, ax = plt.subplots(figsize=(6, 3.5))
        ax.plot(steps, losses, label="train loss")
        val = [(int(r["step"]), float(r["val_loss"])) for r in self.rows if r["val_loss"] not in ("", None)]
        if val:
            ax.plot(*zip(*val), "o-", label="held-out loss")
        ax.set_yscale("log")
        ax.set_xlabel("step")
        ax.set_title(title)
        ax.legend()
        fig.tight_layout()
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=100)
        plt.close(fig)
        atomic_write_bytes(self.path.with_name("loss.png"), buf.getvalue())


# -- the loop ----------------------------------------------------------------------------------------
def build_policy(cfg: TrainConfig) -> MoTPolicy:
    if cfg.init:
        policy = MoTPolicy.load(cfg.init)
        if cfg.routing != policy.cfg.routing or cfg.prefix_mask != policy.cfg.prefix_mask:
            raise ValueError(f"init: checkpoint has routing={policy.cfg.routing!r} prefix_mask={policy.cfg.prefix_mask!r}, "
                             f"this run asks for routing={cfg.routing!r} prefix_mask={cfg.prefix_mask!r}")
        if cfg.image_token_stride not in (None, policy.cfg.image_token_stride):
            raise ValueError(f"image_token_stride: the init checkpoint's image tokens have stride "
                             f"{policy.cfg.image_token_stride}, this run asks for {cfg.image_token_stride}")
    else:
        overrides = {} if cfg.image_token_stride is None else {"image_token_stride": cfg.image_token_stride}
        policy = MoTPolicy(PolicyConfig.preset(cfg.preset, routing=cfg.routing, prefix_mask=cfg.prefix_mask,
                                               **overrides))
    if cfg.delta_actions is not None:
        # The action space belongs to the body expert: choose it when the body starts training
        # (e.g. from an align checkpoint, whose body never trained).
        mask = PolicyConfig.preset(cfg.preset).delta_action_mask if cfg.delta_actions == "on" else None
        if cfg.delta_actions == "on" and mask is None:
            raise ValueError(f"delta_actions: preset {cfg.preset!r} defines no delta_action_mask")
        policy.set_delta_action_mask(mask)
    if cfg.goal_token:  # a body module, like the action space: added when the body starts training
        policy.add_goal_token()
    if cfg.target_points is not None and policy.cfg.target_points != cfg.target_points:
        policy.set_target_points(cfg.target_points, cfg.point_cameras)  # (an --init checkpoint trained with them keeps its own)
    elif cfg.point_cameras is not None and tuple(cfg.point_cameras) != policy.cfg.target_point_cameras:
        raise ValueError(f"point_cameras: the --init checkpoint's body reads the points of {list(policy.cfg.target_point_cameras)}, "
                         f"received {cfg.point_cameras}; train from its align checkpoint to change them")
    return policy


def train(cfg: TrainConfig, progress: bool = True) -> dict:
    distributed = int(os.environ.get("WORLD_SIZE", "1")) > 1
    if distributed and not dist.is_initialized():
        # Ranks wait at a barrier while rank 0 builds the prefix cache (tens of minutes for a large
        # dataset): gloo's default 30-minute timeout would fail them.
        dist.init_process_group("gloo", timeout=datetime.timedelta(hours=3))
    rank = dist.get_rank() if distributed else 0
    world = dist.get_world_size() if distributed else 1
    torch.manual_seed(cfg.seed)  # identical initial weights on every rank
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)

    manifest, episodes = read_episodes(cfg.data, warn=rank == 0)
    policy = build_policy(cfg)
    train_eps, hold_eps = split_episodes(episodes, cfg.holdout_fraction, cfg.seed)
    cameras = list(policy.cfg.cameras)
    if sorted(cameras) != sorted(manifest["cameras"]):
        raise ValueError(f"data: expected cameras {cameras} (the policy's), received {manifest['cameras']}")
    points = {"target_points": policy.cfg.target_points is not None, "point_cameras": policy.cfg.target_point_cameras}
    data = ChunkDataset(train_eps, cameras, policy.cfg.horizon, **points)
    holdout = ChunkDataset(hold_eps or train_eps, cameras, policy.cfg.horizon, **points)
    if cfg.stage == "policy" or not cfg.init:
        policy.set_norm_stats(NormStats.from_arrays(*data.all_states_chunks(), policy.cfg.delta_action_mask))
    policy.set_stage(cfg.stage, train_vision=cfg.train_vision)

    # Where the prefix cache and a pointer's training points are kept (shared across runs when given).
    directory = Path(cfg.prefix_cache_dir) if cfg.prefix_cache_dir else out / "prefix_cache"
    cache = None
    if cfg.stage == "policy" and cfg.cache_prefix and not policy.prefix_trainable() \
            and policy.cfg.prefix_mask == "blockwise":
        from training.prefix_cache import PrefixCache, cache_bytes

        if rank == 0:
            print(f"frozen prefix of {len(data)} frames ({cache_bytes(policy, len(data)) / 2**30:.2f} GiB): {directory}")
        # Rank 0 builds (or loads) it; the other ranks then load what it saved instead of building it
        # again side by side (same key: same config, frozen weights and frames on every rank).
        if rank == 0:
            cache, loaded = PrefixCache.load_or_build(policy, data, directory, progress=progress)
        if distributed:
            dist.barrier()
        if rank != 0:
            cache, loaded = PrefixCache.load_or_build(policy, data, directory, progress=False)
        if rank == 0:
            print("prefix cache: " + ("loaded (same config, frozen weights and frames)" if loaded else "built and saved"))
    pointed = None
    if cfg.train_points_from is not None:
        from policy.pointing import Pointer
        from training.pointed import pointed_points

        pointer = Pointer.from_align_run(cfg.train_points_from, cameras, policy.cfg.target_point_cameras)
        # As the prefix cache: rank 0 computes them, the other ranks load its file.
        if rank == 0:
            pointed = pointed_points(pointer, data, directory, progress=progress)
        if distributed:
            dist.barrier()
        if rank != 0:
            pointed = pointed_points(pointer, data, directory, progress=False)
        del pointer
    # Same RNG stream on every rank: same head init.
    loss_module = StageLoss(policy, cfg.stage, body_grounding=cfg.body_grounding)
    params = [p for p in loss_module.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)

    start, ema = 0, None
    state_path = out / "train_state.pt"
    if cfg.resume and state_path.exists():
        state = torch.load(state_path, map_location="cpu", weights_only=True)
        named = dict(loss_module.named_parameters())
        with torch.no_grad():
            for name, value in state["params"].items():
                named[name].copy_(value)
        start, ema = state["step"], state["ema"]
        if start < cfg.steps:  # a finished run is only re-evaluated: its optimizer state is not needed
            opt.load_state_dict(state["optimizer"])
        if rank == 0:
            print(f"resuming {out} at step {start}")
    if cfg.ema > 0 and ema is None:
        ema = trainable_state(loss_module)

    model = nn.parallel.DistributedDataParallel(loss_module) if distributed else loss_module
    log = MetricsLog(out, start)
    title = f"{cfg.stage} stage ({policy.cfg.routing}, {cfg.preset})"
    bar = tqdm(range(start, cfg.steps), initial=start, total=cfg.steps, desc=f"train {cfg.stage}",
               disable=not progress or rank != 0)
    early = np.flatnonzero(data.index[:, 1] < cfg.early_window)  # samples of each episode's first frames
    model.train()
    t_start, t_window, samples_window = time.perf_counter(), time.perf_counter(), 0
    last: dict = {}
    for step in bar:
        if cfg.stop_at is not None and step >= cfg.stop_at:
            break
        for group in opt.param_groups:
            group["lr"] = cfg.lr * lr_at(step, cfg)
        indices = batch_indices(step, rank, cfg, len(data), early)
        # Flow noise and times come from the global torch RNG: seed it per (step, rank) so a resumed
        # run draws exactly what the uninterrupted run would have drawn.
        torch.manual_seed(int(np.random.default_rng([cfg.seed, step, rank, 1]).integers(2**62)))
        if cache is not None:
            batch = data.batch(indices, images=False)
            batch["prefix"] = cache.prefix(indices)
        elif cfg.stage == "align":
            batch = data.batch(indices, referent_prob=cfg.referents, rng=np.random.default_rng([cfg.seed, step, rank, 2]),
                               pad_referent_prob=cfg.pad_referents)
        else:
            batch = data.batch(indices)
        if pointed is not None:
            batch["state"] = swap_points(batch["state"], pointed[indices], cfg.pointed_share,
                                         np.random.default_rng([cfg.seed, step, rank, 4]))
        if cfg.point_noise > 0:
            batch["state"] = jitter_points(batch["state"], policy.cfg.target_point_dim, cfg.point_noise,
                                           np.random.default_rng([cfg.seed, step, rank, 3]))
        loss = model(batch)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        grad_norm = float(nn.utils.clip_grad_norm_(params, cfg.grad_clip))
        opt.step()
        if ema is not None:
            with torch.no_grad():
                for name, p in loss_module.named_parameters():
                    if name in ema:
                        ema[name].lerp_(p, 1 - cfg.ema)
        samples_window += cfg.batch_size * world
        done = step + 1
        evaluate_now = done % cfg.eval_every == 0 or done == cfg.steps
        if rank == 0 and (done % cfg.log_every == 0 or evaluate_now):
            now = time.perf_counter()
            row = {"step": done, "loss": f"{loss.item():.6f}", "lr": f"{cfg.lr * lr_at(step, cfg):.3e}",
                   "grad_norm": f"{grad_norm:.4f}", "samples_per_s": f"{samples_window / (now - t_window):.2f}",
                   "elapsed_s": f"{now - t_start:.1f}"}
            if evaluate_now:
                last = evaluate_stage(loss_module, holdout, cfg)
                row.update({k: f"{v:.4f}" for k, v in last.items()})
                tqdm.write(f"step {done}: " + ", ".join(f"{k} {v:.4f}" for k, v in last.items()))
            log.add(row)
            bar.set_postfix(loss=f"{loss.item():.4f}")
            t_window, samples_window = now, 0
        if rank == 0 and (done % cfg.ckpt_every == 0 or done == cfg.steps or done == cfg.stop_at):
            save_training(out, loss_module, opt, done, ema, cfg)
            log.flush(title)
    if rank == 0 and start >= cfg.steps:  # a finished run, resumed: evaluate what it saved (result.json)
        last = evaluate_stage(loss_module, holdout, cfg)
        print("evaluated the finished run: " + ", ".join(f"{k} {v:.4f}" for k, v in last.items()))
    result = {"stage": cfg.stage, "steps": cfg.steps, "checkpoint": str(out / "checkpoint"), "world_size": world,
              "train_samples": len(data), "holdout_samples": len(holdout), **last}
    if distributed:
        # DDP keeps replicas identical by averaging gradients: check it, parameter by parameter.
        flat = torch.cat([p.detach().flatten() for p in params])
        gathered = [torch.empty_like(flat) for _ in range(world)]
        dist.all_gather(gathered, flat)
        result["max_rank_param_diff"] = max(float((g - gathered[0]).abs().max()) for g in gathered)
        dist.barrier()
    if rank == 0:
        atomic_write_bytes(out / "result.json", json.dumps(result, indent=2).encode())
        print(json.dumps(result))
    return result


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="mot train", description=__doc__.split("\n\n")[0])
    defaults = TrainConfig(stage="policy", data="", out="")
    p.add_argument("--stage", required=True, choices=["align", "policy"])
    p.add_argument("--data", required=True, help="dataset directory from `mot collect`")
    p.add_argument("--out", required=True, help="run directory (checkpoint, train_state.pt, metrics.csv, loss.png)")
    p.add_argument("--init", default=None, help="policy checkpoint to start from (align's, for --stage policy)")
    p.add_argument("--preset", default=defaults.preset, choices=["tiny", "small"])
    p.add_argument("--routing", default=defaults.routing, choices=["mot", "dense"])
    p.add_argument("--prefix-mask", default=defaults.prefix_mask, choices=["blockwise", "bidirectional"])
    p.add_argument("--train-vision", action="store_true", help="ablation: unfreeze the vision expert in 'policy'")
    p.add_argument("--image-token-stride", type=int, choices=[16, 32], default=None,
                   help="new policy: pixels per image token side (16: 8x8 tokens per camera at 128 px, 4x the "
                        "tokens of the preset's 32)")
    p.add_argument("--goal-token", action="store_true",
                   help="policy: a body token that sees text and images but not the state, trained by the "
                        "--body-grounding loss to say where the instruction's object and pad are")
    p.add_argument("--target-points", choices=["sim"], default=None,
                   help="policy: the state also carries where the instruction's object and pad appear in each camera, "
                        "trained on the simulator's ground truth; 'sim': read from the simulator at inference too "
                        "(an upper bound; only `mot eval` runs the checkpoint)")
    p.add_argument("--point-cameras", nargs="+", default=None, metavar="CAMERA",
                   help="policy, with --target-points: only these cameras' points (default: every camera's); e.g. "
                        "'front': a wrist camera loses the target from view, where a pointer has nothing to point at")
    p.add_argument("--train-points-from", default=None, metavar="ALIGN_RUN",
                   help="policy, with --target-points: for a --pointed-share of the samples, the points this align "
                        "run's pointer gives instead of the exact ones (computed once, kept by the prefix cache)")
    p.add_argument("--delta-actions", choices=["on", "off"], default=None,
                   help="joint targets relative to the measured joints (on) or absolute (off); default: the "
                        "preset's for a new policy, the --init checkpoint's otherwise")
    for name in ("steps", "batch_size", "warmup", "log_every", "eval_every", "ckpt_every", "seed", "early_window"):
        p.add_argument(f"--{name.replace('_', '-')}", type=int, default=getattr(defaults, name))
    for name in ("lr", "weight_decay", "min_lr_ratio", "grad_clip", "ema", "holdout_fraction", "referents", "pad_referents",
                 "body_grounding", "early_fraction", "point_noise", "pointed_share"):
        p.add_argument(f"--{name.replace('_', '-')}", type=float, default=getattr(defaults, name))
    p.add_argument("--save-dtype", default=defaults.save_dtype, choices=sorted(STORAGE_DTYPES),
                   help="storage dtype of OUT/checkpoint (training state stays float32)")
    p.add_argument("--no-cache-prefix", dest="cache_prefix", action="store_false",
                   help="policy stage: recompute the frozen prefix every step instead of caching it")
    p.add_argument("--prefix-cache-dir", default=None,
                   help="policy stage: keep the built prefix cache here (default OUT/prefix_cache); runs on the same "
                        "data and align checkpoint share it")
    p.add_argument("--resume", action="store_true", help="continue from OUT/train_state.pt if present")
    p.add_argument("--stop-at", type=int, default=None, help="leave after this step (time-sliced training)")
    args = vars(p.parse_args(argv))
    cfg = TrainConfig(**args)
    train(cfg)
    return 0


if __name__ == "__main__":
    sys.exit(main())
