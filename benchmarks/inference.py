"""Inference benchmark: per-graph and per-chunk latency, FLOPs, MFU, cached vs naive, per backend.

    python benchmarks/inference.py --json                       # torch, small preset, batch 1
    mot bench inference --backend onnxruntime --json
    mot bench inference --backend tensorrt --json               # needs tensorrt + CUDA
    mot bench inference --compare checkpoints/default runs/bridged_mpnet/checkpoint --json   # onnxruntime

One JSON object: parameters per expert; FLOPs per graph and chunk (FlopCounterMode on the exported torch modules:
matmul/linear/conv/attention, not element-wise ops, norms, softmax: MFU is a slight underestimate); median / p90 ms
of text encode (once per instruction), observation encode (once per observation, with the grounding head: the
target points come from the observation graph, "points" says where) and a denoise step (per Euler step); the chunk
= observation + `num_steps` steps on the cached text K/V (a control step); the naive chunk (`velocity_uncached` at
every step, torch); a GEMM peak measured in the same run (on the CPU the best of torch's and onnxruntime's
matmul: benchmarks/peak.py) and MFU = FLOPs / time / peak; cached / naive and
backend / torch-eager chunk ratios; PolicyRunner.infer (torch-free for onnxruntime/tensorrt), median / p90.

It times the shipped checkpoint (checkpoints/default) unless --checkpoint names another; an untrained preset only
with --random-weights (adaLN gates randomised so the body does real work; "weights" says so). --compare CKPT ...
times several checkpoints side by side instead (e.g. MiniLM lined up vs mpnet bridged; see `compare`). Timings on a
shared machine are noisy: every figure is timed round-robin with the others (load hits all alike); median/p90/min.
"""

from __future__ import annotations

import json
import os
import platform
import sys
import time
from itertools import cycle
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from dataclasses import dataclass  # noqa: E402
from typing import Literal  # noqa: E402

from benchmarks.peak import gemm_peak  # noqa: E402
from policy import MoTPolicy, PolicyConfig  # noqa: E402
from policy.attention import euler_sample  # noqa: E402
from policy.backends import physical_cores  # noqa: E402
from policy.checkpoint import load_checkpoint  # noqa: E402
from policy.errors import InputError  # noqa: E402
from policy.options import parse  # noqa: E402
from policy.runtime import PolicyRunner  # noqa: E402
from training.cli import run_command  # noqa: E402

DEFAULT_CHECKPOINT = ROOT / "checkpoints" / "default"
INSTRUCTION = "pick up the red cube and put it on the green pad"


def summarize(times: list[float]) -> dict[str, float]:
    return {"median_ms": round(float(np.median(times)), 3), "p90_ms": round(float(np.percentile(times, 90)), 3),
            "min_ms": round(float(np.min(times)), 3), "iters": len(times)}


def timed(fn, iters: int, warmup: int = 3) -> dict[str, float]:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(iters):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1e3)
    return summarize(times)


def timed_interleaved(fns: dict[str, callable], iters: int, block: int = 5, warmup: int = 2) -> dict[str, dict]:
    """Times several functions in rounds: each round runs every function `block` times in a row.

    Rounds spread the load from other processes on a shared machine over every figure alike, so ratios between
    them stay meaningful; blocks keep one backend's thread pool from spinning while the next one runs (onnxruntime
    and OpenMP workers busy-wait briefly after each call, which would slow the other backend if calls alternated
    one by one). The first call of each block is not recorded."""
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    rounds = max(1, -(-iters // block))
    for r in range(rounds):
        order = list(fns.items()) if r % 2 == 0 else list(reversed(fns.items()))
        for name, fn in order:
            fn()  # settles this backend's threads after the previous one
            for _ in range(block):
                t0 = time.perf_counter()
                fn()
                times[name].append((time.perf_counter() - t0) * 1e3)
    return {name: summarize(ts) for name, ts in times.items()}


def count_flops(policy: MoTPolicy, fn) -> int:
    """FLOPs of fn() (FlopCounterMode's module hooks need every parameter frozen and grad mode on)."""
    from torch.utils.flop_counter import FlopCounterMode

    flags = {name: p.requires_grad for name, p in policy.named_parameters()}
    policy.requires_grad_(False)
    try:
        with FlopCounterMode(display=False) as counter:
            fn()
    finally:
        for name, p in policy.named_parameters():
            p.requires_grad_(flags[name])
    return int(counter.get_total_flops())


def build_policy(args) -> tuple[MoTPolicy, Path | None]:
    if not args.random_weights:
        return load_checkpoint(args.checkpoint), Path(args.checkpoint)
    torch.manual_seed(0)
    policy = MoTPolicy(PolicyConfig.preset(args.preset))
    policy.set_target_points("model")  # the shipped checkpoint's layout: it points, then acts (in the observation graph)
    with torch.no_grad():  # trained-like adaLN gates (zero at init): the action tokens then read the prefix
        for name, p in policy.named_parameters():
            if ".ada." in name or name == "state_cond":
                p.normal_(0.0, 0.05)
    return policy.eval(), None


def observation(cfg: PolicyConfig, batch: int, seed: int = 0):
    """Random frames, the robot's state (what callers pass: the policy appends its target points) and flow noise."""
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, (batch, len(cfg.cameras), cfg.image_size, cfg.image_size, 3), dtype=np.uint8)
    state = rng.standard_normal((batch, cfg.robot_state_dim)).astype(np.float32)
    noise = rng.standard_normal((batch, cfg.horizon, cfg.action_dim)).astype(np.float32)
    return images, state, noise


def backend_ops(runner: PolicyRunner, images, state, noise, instruction: str, steps: int) -> dict:
    """The backend's three graphs, the cached chunk, and PolicyRunner.infer, as zero-argument calls."""
    backend, b = runner.backend, images.shape[0]
    ids, valid = runner.tokenizer.encode([instruction] * b)
    state_norm = runner.spec.normalize_robot_state(state)
    text = backend.encode_text(ids, valid)
    prefix, _, _ = backend.encode_observation(images, state_norm, text)  # + the target points, inside the graph

    def chunk():  # what a control step costs: observation encode + Euler steps on the cached text K/V
        p, _, _ = backend.encode_observation(images, state_norm, text)
        return euler_sample(lambda x, t: backend.denoise(x, t, p), noise, steps)

    single = {k: v[0] for k, v in zip(runner.cfg.cameras, np.moveaxis(images[:1], 1, 0))}
    runner.warmup(instruction)
    return {
        "text_encode": lambda: backend.encode_text(ids, valid),
        "observation_encode": lambda: backend.encode_observation(images, state_norm, text),
        "denoise_step": lambda: backend.denoise(noise, 0.5, prefix),
        "chunk": chunk,
        # End to end (validation, text cache hit, observation with its points, sampler, de-normalisation), batch 1.
        "runner_infer": lambda: runner.infer(single, state[0], instruction, noise=noise[0]),
    }


def points_report(runner: PolicyRunner, cfg: PolicyConfig) -> dict:
    """Where the target points come from and what the latest PolicyRunner.infer pointed at ((u, v) in [0, 1])."""
    if cfg.target_points is None:
        return {"source": None}
    return {"source": "the observation graph (grounding head on the vision expert's final image tokens)",
            "dim": cfg.target_point_dim, "last_points": np.round(runner.last_points, 4).tolist(),
            "last_confidence": np.round(runner.last_confidence, 4).tolist()}


def count_text_encodes(runner: PolicyRunner, fn, calls: int = 3) -> int:
    """Text encodes while calling fn (PolicyRunner.infer, same instruction): 0 = off the per-step path."""
    count, encode = [], runner.backend.encode_text
    runner.backend.encode_text = lambda *a: count.append(1) or encode(*a)
    try:
        for _ in range(calls):
            fn()
    finally:
        runner.backend.encode_text = encode
    return len(count)


@dataclass
class InferenceBenchConfig:
    checkpoint: Path = DEFAULT_CHECKPOINT
    """the checkpoint to time (default: the shipped one, what users run)"""
    random_weights: bool = False
    """time an untrained --preset policy instead of a checkpoint (its figures are labelled random weights)"""
    preset: Literal["tiny", "small"] = "small"
    """with --random-weights: the preset to build"""
    backend: Literal["torch", "onnxruntime", "tensorrt"] | None = None
    """which runtime runs the graphs (default: torch; onnxruntime with --compare)"""
    compare: list[Path] | None = None
    """checkpoints to compare in one run, round-robin on the same inputs: text / observation / step / infer ms"""
    batch: int = 1
    """observations per call"""
    iters: int = 20
    """timed iterations per figure (denoise step: 3x)"""
    naive_iters: int | None = None
    """iterations of the naive chunk (default iters/4)"""
    threads: int | None = None
    """CPU threads (default: physical cores)"""
    onnx_dir: Path | None = None
    """exported graphs (default: <checkpoint>/onnx or the mot cache)"""
    json: bool = False
    """print only the JSON object"""

    def __post_init__(self) -> None:
        for name in ("batch", "iters"):
            if getattr(self, name) <= 0:
                raise InputError(f"{name}: expected an int > 0, received {getattr(self, name)}")
        if self.compare is not None and (not self.compare or self.random_weights or self.onnx_dir is not None):
            raise InputError("compare: expected one or more checkpoint directories (graphs in each <checkpoint>/onnx; "
                             f"not with --random-weights or --onnx-dir), received {[str(c) for c in self.compare]}")
        if missing := [str(c) for c in self.compare or () if not Path(c).is_dir()]:
            raise InputError(f"compare: expected a checkpoint directory, {missing[0]} does not exist")
        self.backend = self.backend or ("onnxruntime" if self.compare else "torch")


def compare(args: InferenceBenchConfig, threads: int, options: dict) -> dict:
    """--compare, per checkpoint, round-robin (timed_interleaved) on the same observations: text encode (tokenizer +
    text graph, a distinct sim train-split instruction each call), observation graph, denoise step (num_steps calls on
    a cached prefix / num_steps), PolicyRunner.infer (cached instruction); ratios: medians over the first's."""
    from training.bridge import train_instructions

    b, texts, entries, flat = args.batch, train_instructions(2 * args.iters + 16), [], {}
    for i, ckpt in enumerate(args.compare):
        t0, r = time.perf_counter(), PolicyRunner.from_checkpoint(ckpt, backend=args.backend, **options)
        ops = backend_ops(r, *observation(r.cfg, b), INSTRUCTION, n := r.cfg.num_inference_steps)  # one seed: alike
        flat[i, "text_ms"] = lambda r=r, it=cycle(texts): r.backend.encode_text(*r.tokenizer.encode([next(it)] * b))
        flat[i, "observation_ms"] = ops["observation_encode"]
        flat[i, "step_ms"] = lambda f=ops["denoise_step"], n=n: [f() for _ in range(n)]  # num_steps steps
        flat[i, "infer_ms"] = ops["runner_infer"]
        entries.append({"checkpoint": str(ckpt), "checkpoint_id": r.checkpoint_id, "language_model":
                        r.cfg.language_model or "minilm", "language_bridged": bool(r.cfg.bridged), "num_steps": n,
                        "backend_setup_s": round(time.perf_counter() - t0, 2),  # graphs exported first if missing
                        "text_encodes_during_infer": count_text_encodes(r, ops["runner_infer"])})  # 0: cached
    for (i, key), t in timed_interleaved(flat, args.iters).items():
        n = entries[i]["num_steps"] if key == "step_ms" else 1  # a timed step_ms call: num_steps steps
        entries[i][key] = {k: (round(v / n, 3) if k.endswith("_ms") else v * n) for k, v in t.items()}
    med, keys = (lambda e, k: e[f"{k}_ms"]["median_ms"]), ("observation", "step", "text", "infer")
    ratios = [{k: round(med(e, k) / med(entries[0], k), 4) for k in keys} for e in entries[1:]]  # lists if > 2
    return {"benchmark": "inference", "compare": entries,
            "ratios_vs_first": ratios[0] if len(ratios) == 1 else {k: [r[k] for r in ratios] for k in keys},
            "backend": args.backend, "threads": threads, "batch": b, "weights": "shipped/trained checkpoints",
            "text_instructions": len(texts)}  # distinct sim train-split instructions, cycled


def main(argv: list[str] | None = None) -> int:
    args = parse(InferenceBenchConfig, argv, "mot bench inference", __doc__.split("\n\n")[0])
    threads = args.threads or physical_cores()
    torch.set_num_threads(threads)
    options = ({"onnx_dir": args.onnx_dir, "intra_op_threads": threads} if args.backend == "onnxruntime" else
               {"onnx_dir": args.onnx_dir, "max_batch": max(1, args.batch), "opt_batch": args.batch}
               if args.backend == "tensorrt" else {})
    if args.compare:
        print(json.dumps({**compare(args, threads, options), "command": "mot bench inference " + " ".join(
            argv if argv is not None else sys.argv[1:])}, indent=None if args.json else 2))
        return 0
    policy, ckpt = build_policy(args)
    cfg, steps, b = policy.cfg, policy.cfg.num_inference_steps, args.batch
    device = "cuda" if args.backend == "tensorrt" else "cpu"
    peak_dtype = torch.float16 if device == "cuda" else torch.float32  # TensorRT engines run fp16 by default
    images, state, noise = observation(cfg, b)

    # The torch-free runtime for onnxruntime/tensorrt when there is a checkpoint (what a robot runs: graphs from
    # <checkpoint>/onnx or --onnx-dir, exported first when missing); an in-memory policy otherwise.
    t0 = time.perf_counter()
    if ckpt is not None and args.backend != "torch":
        runner = PolicyRunner.from_checkpoint(ckpt, backend=args.backend, **options)
    else:
        runner = PolicyRunner(policy, backend=args.backend, checkpoint_dir=ckpt, **options)
    setup_s = time.perf_counter() - t0
    torch_runner = runner if args.backend == "torch" else PolicyRunner(policy, backend="torch")

    # FLOPs of the exported computations, counted on the torch modules (the observation: MoTPolicy.observe, the
    # graph's own computation, grounding head and target points included).
    ids_t, valid_t = policy.tokenizer([INSTRUCTION] * b)
    images_t, noise_t = torch.from_numpy(images), torch.from_numpy(noise)
    robot_t = policy.normalize_robot_state(torch.from_numpy(state))
    with torch.no_grad():
        text_p = policy.encode_text(ids_t, valid_t)
        prefix_p, points_p, _ = policy.observe(images_t, robot_t, text_p)
    state_t = robot_t if points_p is None else torch.cat(  # the body's whole state, for the naive pass
        [robot_t, (points_p - policy.state_mean[cfg.robot_state_dim:]) / policy.state_std[cfg.robot_state_dim:]], 1)
    flops = {
        "text_encode": count_flops(policy, lambda: policy.encode_text(ids_t, valid_t)),
        "observation_encode": count_flops(policy, lambda: policy.observe(images_t, robot_t, text_p)),
        "denoise_step": count_flops(policy, lambda: policy.denoise(noise_t, torch.full((b,), 0.5), prefix_p)),
        "naive_step": count_flops(policy, lambda: policy.velocity_uncached(ids_t, valid_t, images_t, state_t, noise_t,
                                                                   torch.full((b,), 0.5))),
    }
    flops["chunk"] = flops["observation_encode"] + steps * flops["denoise_step"]
    flops["naive_chunk"] = steps * flops["naive_step"]

    # On the CPU the roofline is the faster of torch's and onnxruntime's matmul, whichever backend is timed.
    peaks = [gemm_peak(device, peak_dtype, ort_threads=threads)]
    runners = {"torch": torch_runner, args.backend: runner}
    ops = {name: backend_ops(r, images, state, noise, INSTRUCTION, steps) for name, r in runners.items()}
    text_encodes = count_text_encodes(runner, ops[args.backend]["runner_infer"])
    # Every figure of every backend round-robin; a denoise step is short, so it gets 3 calls per round.
    flat = {}
    for name, fns in ops.items():
        for key, fn in fns.items():
            flat[(name, key)] = (lambda f=fn: (f(), f(), f())) if key == "denoise_step" else fn
    timings = timed_interleaved(flat, args.iters)
    results = {name: {} for name in ops}
    for (name, key), t in timings.items():
        if key == "denoise_step":  # three steps per timed call
            t = {k: (round(v / 3, 3) if k.endswith("_ms") else v * 3) for k, v in t.items()}
        results[name][key] = t
    results[args.backend]["runner_infer"]["text_encodes"] = text_encodes

    # Naive: the whole sequence through the model at every Euler step (no K/V cache), torch eager.
    def naive_chunk():
        with torch.inference_mode():
            return euler_sample(lambda x, t: policy.velocity_uncached(ids_t, valid_t, images_t, state_t, x,
                                                                      torch.full((b,), t)), noise_t, steps)

    naive = timed(naive_chunk, args.naive_iters or max(3, args.iters // 4), warmup=1)

    peaks.append(gemm_peak(device, peak_dtype, ort_threads=threads))
    peak = max(peaks, key=lambda p: p["gflops"])  # measured before and after the latencies: the best
    peak["runs_gflops"] = [p["gflops"] for p in peaks]

    def mfu(key: str, ms: float) -> float:
        return round(flops[key] / (ms * 1e-3) / (peak["gflops"] * 1e9), 4)

    figures = {}
    for name, res in results.items():
        figures[name] = {k: {**v, **({"gflops": round(flops[k] / v["median_ms"] / 1e6, 1), "mfu": mfu(k, v["median_ms"])}
                                     if k in flops else {})} for k, v in res.items()}
    main_res = results[args.backend]
    text_ms, chunk_ms = main_res["text_encode"]["median_ms"], main_res["chunk"]["median_ms"]
    report = {
        "benchmark": "inference",
        "command": "mot bench inference " + " ".join(argv if argv is not None else sys.argv[1:]),
        "weights": "random (untrained preset): not the product's figures" if args.random_weights else "checkpoint",
        "preset": args.preset if args.random_weights else None,
        "checkpoint": None if args.random_weights else str(args.checkpoint),
        "checkpoint_id": runner.checkpoint_id,
        "backend": args.backend,
        "runtime": "torch-free (PolicyRunner.from_checkpoint)" if runner.policy is None else "in-memory MoTPolicy",
        "batch": b,
        "num_steps": steps,
        "threads": threads,
        "machine": {"cpu": platform.processor() or platform.machine(), "logical_cpus": os.cpu_count(),
                    "torch": torch.__version__, "note": "shared machine: timings are noisy"},
        "backend_setup_s": round(setup_s, 2),
        "parameters": policy.num_parameters(),
        "tokens": {"text": int(ids_t.shape[1]), "image": cfg.image_tokens, "image_attended_by_body": cfg.body_image_tokens,
                   "state": 1, "action": cfg.horizon},
        "points": points_report(runner, cfg),
        "flops": {**flops, "method": "torch.utils.flop_counter.FlopCounterMode (matmul/linear/conv/attention; "
                                     "element-wise not counted)"},
        "gemm_peak": peak,
        "latency": figures,
        "naive_chunk": {**naive, "gflops": round(flops["naive_chunk"] / naive["median_ms"] / 1e6, 1),
                        "mfu": mfu("naive_chunk", naive["median_ms"])},
        "runner_infer": {k: main_res["runner_infer"][k] for k in ("median_ms", "p90_ms", "min_ms", "iters")},
        "split": {
            "per_instruction_ms": text_ms,  # text K/V: computed once per instruction, then cached
            "per_observation_ms": main_res["observation_encode"]["median_ms"],
            "per_step_ms": main_res["denoise_step"]["median_ms"],
            # Text encodes observed during the timed PolicyRunner.infer calls (same instruction): 0 = cached.
            "text_encodes_during_infer": text_encodes,
            "text_on_per_step_path": text_encodes > 0,
        },
        "ratios": {
            "cached_over_naive_chunk": round(results["torch"]["chunk"]["median_ms"] / naive["median_ms"], 4),
            "backend_over_torch_chunk": round(chunk_ms / results["torch"]["chunk"]["median_ms"], 4),
            "backend_over_torch_chunk_min": round(main_res["chunk"]["min_ms"] / results["torch"]["chunk"]["min_ms"], 4),
            "chunk_mfu": mfu("chunk", chunk_ms),
        },
    }
    print(json.dumps(report, indent=None if args.json else 2))
    return 0


if __name__ == "__main__":  # as a script too: a mistake is one line and exit 2, as under `mot bench`
    sys.exit(run_command("bench inference", main, sys.argv[1:]))
