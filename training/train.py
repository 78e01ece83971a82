"""`mot train`: the two training stages of the MoT policy.

    mot train --stage align  --data runs/demos --out runs/align  --steps 1500
    mot train --stage policy --data runs/demos --out runs/policy --init runs/align/checkpoint --steps 4000

align:  the image projection + vision expert learn grounding (training/losses.py); language frozen.
policy: flow matching of the body expert; language and vision frozen, so the prefix runs without
        autograd (or comes from the prefix cache) and a step costs little more than the body expert.

AdamW, linear warmup + cosine decay, gradient clipping, optional EMA of the weights, scalars to CSV,
PNG and TensorBoard (training/metrics.py), periodic atomic checkpoints (`OUT/checkpoint` = a policy
checkpoint, with EMA weights when enabled; `OUT/train_state.pt` = raw weights, optimizer, step).
`--resume` continues after a kill -9, losing at most one checkpoint interval. Batches are drawn from a
seed that depends only on (seed, step, rank), so a resumed run sees exactly the batches it would have seen.

Multi-process: `torchrun --nproc_per_node 2 -m training.train ...` (DDP, gloo on CPU); each rank draws
its own batches, gradients are averaged, rank 0 writes files.
"""

from __future__ import annotations

import dataclasses
import datetime
import io
import json
import math
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from tqdm import tqdm

from policy import MoTPolicy, NormStats, PolicyConfig
from policy.artifacts import atomic_write_bytes, atomic_write_json
from policy.checkpoint import STORAGE_DTYPES, load_checkpoint, save_checkpoint
from policy.errors import InputError
from policy.options import parse
from training.cli import run_command
from training.config import RETIRED_FIELDS, TrainConfig
from training.data import ChunkDataset, DatasetFeatures, dataset_features, read_episodes, split_episodes
from training.holdout import evaluate_stage
from training.losses import StageLoss
from training.metrics import MetricsLog
from training.prefix_cache import PrefixCache, cache_bytes


# -- schedule and batches ----------------------------------------------------------------------------
def lr_at(step: int, cfg: TrainConfig) -> float:
    """Linear warmup to 1, then cosine decay to min_lr_ratio (a multiplier of cfg.lr)."""
    if step < cfg.warmup:
        return (step + 1) / cfg.warmup
    progress = min(1.0, (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup))
    return cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def batch_indices(step: int, rank: int, cfg: TrainConfig, n: int) -> np.ndarray:
    """Sample indices (batch_size,) for this step and rank, uniform over the n samples. Depends only on
    (seed, step, rank): a resumed run draws the same."""
    return np.random.default_rng([cfg.seed, step, rank]).integers(0, n, cfg.batch_size)


# -- the policy and its data -------------------------------------------------------------------------
def action_mask(cfg: TrainConfig, features: DatasetFeatures) -> tuple[bool, ...] | None:
    """Which action dimensions a new body predicts relative to the state: the dataset's own mask (joint
    targets named like the state's joints, not the gripper) when it has one, else the preset's when it fits
    the dataset's action size; none with --delta-actions off."""
    preset = PolicyConfig.preset(cfg.preset).delta_action_mask
    fits = preset if preset is not None and len(preset) == features.action_dim <= features.state_dim else None
    known = features.delta_action_mask if features.delta_action_mask and any(features.delta_action_mask) else None
    if cfg.delta_actions == "off":
        return None
    mask = known or fits
    if cfg.delta_actions == "on" and mask is None:
        raise InputError(f"delta_actions: 'on' needs to know which actions are joint targets: the dataset names none "
                         f"(state {features.state_names}, actions {features.action_names}) and preset {cfg.preset!r} "
                         f"defines no delta_action_mask for {features.action_dim} actions")
    return mask


def build_policy(cfg: TrainConfig, features: DatasetFeatures) -> MoTPolicy:
    """A new policy fits its dataset (as LeRobot builds a policy's features from its dataset): cameras, state
    and action sizes and the relative action dimensions come from `features`, the architecture from the
    preset. An --init checkpoint must fit the dataset already. Then the target points, chosen when the body
    starts training."""
    if cfg.init:
        policy = load_checkpoint(cfg.init)
        if cfg.routing != policy.cfg.routing or cfg.prefix_mask != policy.cfg.prefix_mask:
            raise InputError(f"init: checkpoint has routing={policy.cfg.routing!r} prefix_mask={policy.cfg.prefix_mask!r}, "
                             f"this run asks for routing={cfg.routing!r} prefix_mask={cfg.prefix_mask!r}")
        if cfg.image_token_stride not in (None, policy.cfg.image_token_stride):
            raise InputError(f"image_token_stride: the init checkpoint's image tokens have stride "
                             f"{policy.cfg.image_token_stride}, this run asks for {cfg.image_token_stride}")
        robot_state = policy.cfg.robot_state_dim
        got = (sorted(features.cameras), features.state_dim, features.action_dim)
        if got != (sorted(policy.cfg.cameras), robot_state, policy.cfg.action_dim):
            raise InputError(f"data: the init checkpoint reads cameras {sorted(policy.cfg.cameras)}, state {robot_state}, "
                             f"actions {policy.cfg.action_dim}; the dataset has cameras {got[0]}, state {got[1]}, "
                             f"actions {got[2]}")
        if cfg.delta_actions is not None:  # the action space belongs to the body: chosen when it starts training
            policy.set_delta_action_mask(action_mask(cfg, features))
        if cfg.prefix_pool is not None:  # what the body attends to: the vision expert does not depend on it
            policy.cfg = dataclasses.replace(policy.cfg, prefix_pool=cfg.prefix_pool)  # validates
    else:
        overrides = {k: getattr(cfg, k) for k in ("image_token_stride", "prefix_pool") if getattr(cfg, k) is not None}
        policy = MoTPolicy(PolicyConfig.preset(
            cfg.preset, routing=cfg.routing, prefix_mask=cfg.prefix_mask, cameras=features.cameras,
            state_dim=features.state_dim, action_dim=features.action_dim,
            delta_action_mask=action_mask(cfg, features), **overrides))
    if cfg.target_points is not None and policy.cfg.target_points != cfg.target_points:
        policy.set_target_points(cfg.target_points)  # (an --init checkpoint trained with them keeps its own)
    return policy


def load_data(cfg: TrainConfig, policy: MoTPolicy, rank: int) -> tuple[ChunkDataset, ChunkDataset]:
    """(train, held-out) chunk datasets of cfg.data for `policy`; sets the policy's norm stats from the
    train split when the body starts (or a new policy)."""
    _, episodes = read_episodes(cfg.data, warn=rank == 0)
    if cfg.stage == "align" and not any(ep.track is not None for ep in episodes):
        raise InputError(f"data: the align stage needs scene tracks (where each object is per frame), which "
                         f"{cfg.data} lacks (imported data has none); train --stage policy on it instead")
    cameras = list(policy.cfg.cameras)
    train_eps, hold_eps = split_episodes(episodes, cfg.holdout_fraction, cfg.seed)
    # The body's state carries the target points; the align stage points itself and reads only the robot's state.
    points = policy.cfg.target_points is not None and cfg.stage == "policy"
    data = ChunkDataset(train_eps, cameras, policy.cfg.horizon, target_points=points)
    holdout = ChunkDataset(hold_eps or train_eps, cameras, policy.cfg.horizon, target_points=points)
    if cfg.stage == "policy" or not cfg.init:
        policy.set_norm_stats(NormStats.from_arrays(*data.all_states_chunks(), policy.cfg.delta_action_mask))
    return data, holdout


def prefix_cache(cfg: TrainConfig, policy: MoTPolicy, data: ChunkDataset, rank: int, distributed: bool,
                 progress: bool) -> PrefixCache | None:
    """The frozen text/image K/V of every training frame, when nothing before the body trains (policy stage,
    block-wise mask). Rank 0 builds (or loads) it; the other ranks then load what it saved."""
    if cfg.stage != "policy" or not cfg.cache_prefix or policy.prefix_trainable() or policy.cfg.prefix_mask != "blockwise":
        return None
    directory = Path(cfg.prefix_cache_dir) if cfg.prefix_cache_dir else Path(cfg.out) / "prefix_cache"
    cache = None
    if rank == 0:
        print(f"frozen prefix of {len(data)} frames ({cache_bytes(policy, len(data)) / 2**30:.2f} GiB): {directory}")
        cache, loaded = PrefixCache.load_or_build(policy, data, directory, progress=progress)
        print("prefix cache: " + ("loaded (same config, frozen weights and frames)" if loaded else "built and saved"))
    if distributed:
        dist.barrier()
    if rank != 0:
        cache, _ = PrefixCache.load_or_build(policy, data, directory, progress=False)
    return cache


# -- files -------------------------------------------------------------------------------------------
def trainable_state(module: nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in module.named_parameters() if p.requires_grad}


def save_training(out: Path, loss_module: StageLoss, opt, step: int, ema: dict | None, cfg: TrainConfig) -> None:
    """Policy checkpoint (EMA weights if enabled) + resumable training state, both atomic."""
    raw = trainable_state(loss_module)
    if ema is not None:  # the checkpoint users run is the EMA; the raw weights stay in train_state
        with torch.no_grad():
            for name, p in loss_module.named_parameters():
                if name in ema:
                    p.copy_(ema[name])
    save_checkpoint(loss_module.policy, out / "checkpoint", dtype=STORAGE_DTYPES[cfg.save_dtype])
    if ema is not None:
        with torch.no_grad():
            for name, p in loss_module.named_parameters():
                if name in raw:
                    p.copy_(raw[name])
    buf = io.BytesIO()
    torch.save({"step": step, "params": raw, "ema": ema, "optimizer": opt.state_dict(),
                "config": dataclasses.asdict(cfg)}, buf)
    atomic_write_bytes(out / "train_state.pt", buf.getvalue())


def resume_state(cfg: TrainConfig, loss_module: StageLoss, opt, rank: int) -> tuple[int, dict | None]:
    """(step to start at, EMA weights) from OUT/train_state.pt when resuming, else (0, None)."""
    path = Path(cfg.out) / "train_state.pt"
    if not (cfg.resume and path.exists()):
        return 0, None
    state = torch.load(path, map_location="cpu", weights_only=True)
    for name, off in RETIRED_FIELDS.items():  # a run of a removed experiment cannot continue as another recipe
        if state["config"].get(name, off) != off:
            raise InputError(f"resume: {path} was trained with {name}={state['config'][name]!r}, an experiment "
                             f"removed from the product (git tag experiments-2026-11); start a new run")
    named = dict(loss_module.named_parameters())
    with torch.no_grad():
        for name, value in state["params"].items():
            named[name].copy_(value)
    if state["step"] < cfg.steps:  # a finished run is only re-evaluated: its optimizer state is not needed
        opt.load_state_dict(state["optimizer"])
    if rank == 0:
        print(f"resuming {cfg.out} at step {state['step']}")
    return state["step"], state["ema"]


# -- the loop ----------------------------------------------------------------------------------------
def init_distributed() -> tuple[bool, int, int]:
    """(distributed, rank, world size); under torchrun, joins the gloo process group."""
    distributed = int(os.environ.get("WORLD_SIZE", "1")) > 1
    if distributed and not dist.is_initialized():
        # Ranks wait at a barrier while rank 0 builds the prefix cache (tens of minutes for a large
        # dataset): gloo's default 30-minute timeout would fail them.
        dist.init_process_group("gloo", timeout=datetime.timedelta(hours=3))
    return distributed, (dist.get_rank() if distributed else 0), (dist.get_world_size() if distributed else 1)


def native_bfloat16() -> bool:
    """True when this CPU multiplies bfloat16 in hardware (AVX512-BF16 or AMX), where oneDNN runs a bfloat16
    GEMM at 2-4x the float32 rate; elsewhere bfloat16 is emulated and slower than float32."""
    probes = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(getattr(torch.cpu, name, lambda: False)() for name in probes)


def resolve_precision(precision: str) -> str:
    """'auto' -> 'bfloat16' where the CPU has it natively, else 'float32'; 'bfloat16' is refused (one line, before
    any work) on a CPU that would emulate it; 'float32' stays."""
    if precision == "auto":
        return "bfloat16" if native_bfloat16() else "float32"
    if precision == "bfloat16" and not native_bfloat16():
        raise InputError("precision: 'bfloat16' needs a CPU with AVX512-BF16 or AMX (this one emulates bfloat16, "
                         f"which is slower than float32: {torch.backends.cpu.get_cpu_capability()}); use 'float32' "
                         "or 'auto'")
    return precision


def autocast(precision: str) -> torch.autocast:
    """The forward pass's autocast for a resolved precision: bfloat16 matmuls and convolutions, float32 weights,
    optimizer state and the ops autocast keeps in float32 (softmax, norms, losses). No loss scaling: bfloat16 has
    float32's exponent range."""
    return torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bfloat16")


def train_batch(cfg: TrainConfig, data: ChunkDataset, cache: PrefixCache | None, step: int, rank: int) -> dict:
    """This step's batch: from the prefix cache (policy stage), with referring expressions (align)."""
    indices = batch_indices(step, rank, cfg, len(data))
    if cache is not None:
        batch = data.batch(indices, images=False)
        batch["prefix"] = cache.prefix(indices)
        return batch
    if cfg.stage == "align":
        return data.batch(indices, referent_prob=cfg.referents, rng=np.random.default_rng([cfg.seed, step, rank, 2]),
                          pad_referent_prob=cfg.pad_referents)
    return data.batch(indices)


def train(cfg: TrainConfig, progress: bool = True) -> dict:
    # Resolved before any work (bfloat16 on a CPU without it is refused here); the run's saved config and
    # result.json then say which precision it trained in, whatever it asked for.
    precision = resolve_precision(cfg.precision)
    if cfg.precision == "auto":
        print(f"precision: auto -> {precision}")
    cfg = dataclasses.replace(cfg, precision=precision)
    amp = autocast(cfg.precision)
    distributed, rank, world = init_distributed()
    torch.manual_seed(cfg.seed)  # identical initial weights on every rank
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    policy = build_policy(cfg, dataset_features(cfg.data))
    data, holdout = load_data(cfg, policy, rank)
    policy.set_stage(cfg.stage, train_vision=cfg.train_vision, only_bridge=cfg.only_bridge)
    cache = prefix_cache(cfg, policy, data, rank, distributed, progress)
    loss_module = StageLoss(policy, cfg.stage)  # same RNG stream on every rank: same head init
    params = [p for p in loss_module.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    start, ema = resume_state(cfg, loss_module, opt, rank)
    if cfg.ema > 0 and ema is None:
        ema = trainable_state(loss_module)

    model = nn.parallel.DistributedDataParallel(loss_module) if distributed else loss_module
    log = MetricsLog(out, start) if rank == 0 else None
    title = f"{cfg.stage} stage ({policy.cfg.routing}, {cfg.preset})"
    bar = tqdm(range(start, cfg.steps), initial=start, total=cfg.steps, desc=f"train {cfg.stage}",
               disable=not progress or rank != 0)
    model.train()
    t_start = t_window = time.perf_counter()
    samples_window, last = 0, {}
    for step in bar:
        if cfg.stop_at is not None and step >= cfg.stop_at:
            break
        for group in opt.param_groups:
            group["lr"] = cfg.lr * lr_at(step, cfg)
        batch = train_batch(cfg, data, cache, step, rank)
        # Flow noise and times come from the global torch RNG: seed it per (step, rank) so a resumed
        # run draws exactly what the uninterrupted run would have drawn.
        torch.manual_seed(int(np.random.default_rng([cfg.seed, step, rank, 1]).integers(2**62)))
        with amp:
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
        if log is not None and (done % cfg.log_every == 0 or evaluate_now):
            now = time.perf_counter()
            row = {"step": done, "loss": f"{loss.item():.6f}", "lr": f"{cfg.lr * lr_at(step, cfg):.3e}",
                   "grad_norm": f"{grad_norm:.4f}", "samples_per_s": f"{samples_window / (now - t_window):.2f}",
                   "elapsed_s": f"{now - t_start:.1f}"}
            if evaluate_now:
                last = evaluate_stage(loss_module, holdout, cfg.batch_size)
                row.update({k: f"{v:.4f}" for k, v in last.items()})
                tqdm.write(f"step {done}: " + ", ".join(f"{k} {v:.4f}" for k, v in last.items()))
            log.add(row)
            bar.set_postfix(loss=f"{loss.item():.4f}")
            t_window, samples_window = now, 0
        if log is not None and (done % cfg.ckpt_every == 0 or done == cfg.steps or done == cfg.stop_at):
            save_training(out, loss_module, opt, done, ema, cfg)
            log.flush(title)
    if log is not None:
        log.close()
    return finish(cfg, loss_module, params, holdout, last, start, len(data), rank, world, distributed)


def finish(cfg: TrainConfig, loss_module: StageLoss, params: list, holdout: ChunkDataset, last: dict, start: int,
           train_samples: int, rank: int, world: int, distributed: bool) -> dict:
    """result.json (the last held-out metrics; a finished run that was resumed is evaluated again)."""
    if rank == 0 and start >= cfg.steps:
        last = evaluate_stage(loss_module, holdout, cfg.batch_size)
        print("evaluated the finished run: " + ", ".join(f"{k} {v:.4f}" for k, v in last.items()))
    result = {"stage": cfg.stage, "steps": cfg.steps, "checkpoint": str(Path(cfg.out) / "checkpoint"),
              "precision": cfg.precision, "world_size": world, "train_samples": train_samples,
              "holdout_samples": len(holdout), **last}
    if distributed:
        # DDP keeps replicas identical by averaging gradients: check it, parameter by parameter.
        flat = torch.cat([p.detach().flatten() for p in params])
        gathered = [torch.empty_like(flat) for _ in range(world)]
        dist.all_gather(gathered, flat)
        result["max_rank_param_diff"] = max(float((g - gathered[0]).abs().max()) for g in gathered)
        dist.barrier()
    if rank == 0:
        atomic_write_json(Path(cfg.out) / "result.json", result)
        print(json.dumps(result))
    return result


def main(argv: list[str] | None = None) -> int:
    train(parse(TrainConfig, argv, "mot train", __doc__.split("\n\n")[0]))
    return 0


if __name__ == "__main__":  # torchrun -m training.train: the same error handling as `mot train`
    sys.exit(run_command("train", main, sys.argv[1:]))
