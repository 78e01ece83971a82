"""Training throughput (prints one JSON object).

    python benchmarks/train.py --json [--data DIR] [--preset small] [--image-token-stride 16] [--batch-size 16] [--iters 5]

Figures, in samples/s (median over --iters timed optimizer steps after one warm-up step):
- policy_cached_prefix:  the policy stage as `mot train` runs it (frozen text/image K/V cached)
- policy_frozen_prefix:  the policy stage recomputing the frozen prefix without autograd every step
- full_backprop:         every expert trainable (language, vision, body), the same loss
- align:                 the align stage (image projection + vision expert, grounding head)
- data_loading:          JPEG decode + chunk assembly of a batch (must not be the bottleneck)
and the ratios policy_cached_prefix / full_backprop (target >= 3) and data_loading / policy_cached_prefix.
Without --data, 8 scripted episodes are collected into a temporary directory first.
"""

from __future__ import annotations

import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from dataclasses import dataclass  # noqa: E402
from typing import Literal  # noqa: E402

from policy import MoTPolicy, NormStats, PolicyConfig  # noqa: E402
from policy.options import parse  # noqa: E402
from training.collect import collect  # noqa: E402
from training.data import ChunkDataset, read_episodes  # noqa: E402
from training.prefix_cache import PrefixCache  # noqa: E402
from training.losses import StageLoss  # noqa: E402
from training.cli import run_command  # noqa: E402


def samples_per_s(step, batch_size: int, iters: int) -> float:
    step()  # warm-up (allocations, lazy init)
    times = []
    for _ in range(iters):
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
    return batch_size / statistics.median(times)


def optimizer_step(module: torch.nn.Module, loss_fn):
    params = [p for p in module.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-5)

    def step():
        loss = loss_fn()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return step


@dataclass
class TrainBenchConfig:
    data: Path | None = None
    """dataset from `mot collect` (default: collect 8 episodes into a temporary directory)"""
    preset: Literal["tiny", "small"] = "small"
    """policy preset (random weights: training cost does not depend on them)"""
    episodes: int = 8
    """episodes of --data to use (the cache is built over them)"""
    image_token_stride: Literal[16, 32] | None = None
    """PolicyConfig.image_token_stride (default: the preset's)"""
    batch_size: int = 16
    """samples per step"""
    iters: int = 5
    """timed steps per figure"""
    json: bool = True
    """print one JSON object (always; kept for symmetry with the other benchmarks)"""


def main(argv: list[str] | None = None) -> int:
    args = parse(TrainBenchConfig, argv, "mot bench train", __doc__.splitlines()[0])
    torch.manual_seed(0)
    overrides = {} if args.image_token_stride is None else {"image_token_stride": args.image_token_stride}
    cfg = PolicyConfig.preset(args.preset, **overrides)
    data_dir = args.data
    if data_dir is None:
        data_dir = Path(tempfile.mkdtemp(prefix="mot-bench-train-"))
        collect(data_dir, episodes=8, tasks=["reach", "pick", "push", "place"], image_size=cfg.image_size,
                progress=False)
    _, episodes = read_episodes(data_dir)
    # Throughput does not depend on the dataset's size; a few episodes keep the prefix cache build short.
    data = ChunkDataset(episodes[: args.episodes], list(cfg.cameras), cfg.horizon)
    rng = np.random.default_rng(0)
    idx = rng.integers(0, len(data), args.batch_size)
    batch = data.batch(idx)
    b = args.batch_size
    out: dict = {"preset": args.preset, "image_token_stride": cfg.image_token_stride, "batch_size": b, "frames": len(data), "torch_threads": torch.get_num_threads()}

    out["data_loading"] = samples_per_s(lambda: data.batch(rng.integers(0, len(data), b)), b, args.iters)

    policy = MoTPolicy(cfg, NormStats.from_arrays(*data.all_states_chunks(), cfg.delta_action_mask))
    policy.set_stage("policy")
    cache = PrefixCache(policy, data, progress=False)
    state, actions = torch.from_numpy(batch["state"]), torch.from_numpy(batch["actions"])
    out["policy_cached_prefix"] = samples_per_s(
        optimizer_step(policy, lambda: policy.flow_matching_loss(cache.prefix(idx), state, actions)), b, args.iters)
    out["policy_frozen_prefix"] = samples_per_s(optimizer_step(policy, lambda: policy.compute_loss(batch)), b,
                                                args.iters)

    full = MoTPolicy(cfg)
    full.requires_grad_(True)
    full.trunk.requires_grad_(False)  # the trunk is a frozen feature extractor, not an expert
    out["full_backprop"] = samples_per_s(optimizer_step(full, lambda: full.compute_loss(batch)), b, args.iters)

    align = MoTPolicy(cfg)
    align.set_stage("align")
    loss = StageLoss(align, "align")
    out["align"] = samples_per_s(optimizer_step(loss, lambda: loss(batch)), b, args.iters)

    out["ratio_cached_vs_full_backprop"] = out["policy_cached_prefix"] / out["full_backprop"]
    out["ratio_frozen_vs_full_backprop"] = out["policy_frozen_prefix"] / out["full_backprop"]
    out["ratio_data_loading_vs_policy"] = out["data_loading"] / out["policy_cached_prefix"]
    print(json.dumps({k: round(v, 3) if isinstance(v, float) else v for k, v in out.items()}, indent=2))
    return 0


if __name__ == "__main__":  # as a script too: a mistake is one line and exit 2, as under `mot bench`
    sys.exit(run_command("bench train", main, sys.argv[1:]))
