"""TensorRT check on a real GPU: export, engine build, parity with onnxruntime, latency. Prints one JSON object.

    benchmarks/tensorrt_check.sh                      # makes a venv, installs, then runs this (see docs/deploy.md)
    python benchmarks/tensorrt_check.py --precisions fp16 fp32 --iters 50

For the shipped checkpoint (checkpoints/default, or --checkpoint): exports the float32 graphs (and the float16
ones when this TensorRT builds strongly typed fp16 engines) into a scratch folder, builds the three engines per
precision from scratch (timed), then on the same observations and flow noise compares whole chunks from
PolicyRunner(backend="tensorrt") with PolicyRunner(backend="onnxruntime") (both the torch-free runtime, from the
checkpoint directory: max abs action difference in robot units, and target-point difference in (u, v) units), and
times each graph and the chunk (observation encode with its points + num_inference_steps denoise steps, text
cached): median / p90 / min ms. Sized for < 5 minutes on a desktop GPU (builds dominate; --precisions fp16 halves
them). torch is needed for the export only (any build: the engines run through cuda-python, policy/cuda.py).

Exit 3 with one line on stderr where there is no tensorrt or cuda-python module, or no CUDA device.
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from policy.checkpoint import checkpoint_id, load_checkpoint  # noqa: E402
from policy.cuda import Cuda, import_cudart  # noqa: E402
from policy.export import export_policy  # noqa: E402
from policy.options import parse  # noqa: E402
from policy.runtime import PolicyRunner  # noqa: E402
from policy.sampling import euler_sample  # noqa: E402
from policy.tensorrt import graph_dtype, import_tensorrt, network_mode  # noqa: E402


@dataclass
class TensorRTCheckConfig:
    checkpoint: Path = REPO / "checkpoints" / "default"
    """the checkpoint to check (its graphs go to --work, never into the checkpoint)"""
    work: Path | None = None
    """scratch folder for graphs and engines (default: a new temporary folder)"""
    precisions: list[Literal["fp16", "fp32"]] = field(default_factory=lambda: ["fp16", "fp32"])
    """engine precisions to build and check"""
    observations: int = 5
    """random observations (each with its own flow noise) for the parity figure"""
    iters: int = 50
    """timed calls per latency figure (after warm-up)"""
    strongly_typed: bool | None = None
    """force the TensorRT network mode (default: by version, policy/tensorrt.py network_mode)"""


def fail(message: str) -> int:
    print(f"tensorrt_check: {message}", file=sys.stderr)
    return 3


def summarize(times_ms: list[float]) -> dict:
    t = np.asarray(times_ms)
    return {"median_ms": round(float(np.median(t)), 3), "p90_ms": round(float(np.percentile(t, 90)), 3),
            "min_ms": round(float(t.min()), 3), "iters": len(t)}


def timed(fn, iters: int, warmup: int = 5) -> dict:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(iters):
        t0 = time.perf_counter()
        fn()  # TensorRT calls synchronise their stream before returning (policy/tensorrt.py _run)
        times.append((time.perf_counter() - t0) * 1e3)
    return summarize(times)


def observations(cfg, robot_state_dim: int, n: int, seed: int = 0) -> list[tuple]:
    rng = np.random.default_rng(seed)
    words = ("put the red cube on the blue pad", "pick up the green cylinder", "touch the yellow block")
    out = []
    for i in range(n):
        images = {c: rng.integers(0, 256, (cfg.image_size, cfg.image_size, 3), dtype=np.uint8) for c in cfg.cameras}
        state = (rng.standard_normal(robot_state_dim) * 0.1).astype(np.float32)
        noise = rng.standard_normal((cfg.horizon, cfg.action_dim)).astype(np.float32)
        out.append((images, state, words[i % len(words)], noise))
    return out


def latency(runner: PolicyRunner, obs: tuple, iters: int) -> dict:
    """Per graph (text encode, observation encode with the target points, one denoise step), the chunk (observation
    + every denoise step, text cached: what a control step costs the backend), and PolicyRunner.infer (+ validation,
    tokenisation, sampler, de-normalisation)."""
    backend, cfg = runner.backend, runner.cfg
    images, state, instruction, noise = obs
    ids, valid = runner.tokenizer.encode([instruction])
    frames = np.stack([images[c] for c in cfg.cameras])[None]
    state_norm = runner.spec.normalize_robot_state(state[None])  # the graph's input: the robot's state, normalised
    text = backend.encode_text(ids, valid)
    prefix, _, _ = backend.encode_observation(frames, state_norm, text)
    x = noise[None]

    def chunk():
        p, _, _ = backend.encode_observation(frames, state_norm, text)
        return euler_sample(lambda xt, t: backend.denoise(xt, t, p), x, cfg.num_inference_steps)

    return {"text_encode": timed(lambda: backend.encode_text(ids, valid), iters),
            "observation_encode": timed(lambda: backend.encode_observation(frames, state_norm, text), iters),
            "denoise_step": timed(lambda: backend.denoise(x, 0.5, prefix), iters),
            "chunk": timed(chunk, iters),
            "runner_infer": timed(lambda: runner.infer(images, state, instruction, noise=noise), iters)}


def main(argv: list[str] | None = None) -> int:
    args = parse(TensorRTCheckConfig, argv, "tensorrt_check", __doc__.split("\n\n")[0])
    try:
        import tensorrt  # noqa: F401
        import torch  # the export's
    except ImportError as e:
        return fail(f"expected the tensorrt and torch packages, {e}; run benchmarks/tensorrt_check.sh")
    try:
        gpu = Cuda(import_cudart()).device_name()
    except RuntimeError as e:  # no cuda-python, or no CUDA device
        return fail(f"expected cuda-python and a CUDA device: {e}")
    import onnxruntime

    trt = import_tensorrt()
    work = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix="mot-tensorrt-check-"))
    t_all = time.perf_counter()
    policy = load_checkpoint(args.checkpoint)
    sha = checkpoint_id(args.checkpoint)
    onnx_dir = work / "onnx"
    report: dict = {"gpu": gpu, "tensorrt": trt.__version__, "torch": torch.__version__,
                    "onnxruntime": onnxruntime.__version__, "python": sys.version.split()[0],
                    "checkpoint": str(args.checkpoint), "checkpoint_id": sha, "work": str(work), "export_s": {}}
    modes = {p: network_mode(trt, p, args.strongly_typed) for p in args.precisions}
    for dtype in sorted({graph_dtype(p, m) for p, m in modes.items()} | {"float32"}):
        t0 = time.perf_counter()
        out = onnx_dir if dtype == "float32" else onnx_dir / "fp16"
        export_policy(policy, out, checkpoint_sha256=sha, fp16=dtype == "float16")
        report["export_s"][dtype] = round(time.perf_counter() - t0, 2)

    reference = PolicyRunner.from_checkpoint(args.checkpoint, backend="onnxruntime", onnx_dir=onnx_dir)
    report["onnxruntime_providers"] = reference.backend.providers
    obs = observations(reference.cfg, reference.robot_state_dim, args.observations)
    want = [(reference.infer(images, state, words, noise=noise), reference.last_points)
            for images, state, words, noise in obs]
    report["engines"] = {}
    for precision in args.precisions:
        t0 = time.perf_counter()
        runner = PolicyRunner.from_checkpoint(args.checkpoint, backend="tensorrt", onnx_dir=onnx_dir,
                                              engine_dir=work / f"trt-{precision}", fp16=precision == "fp16",
                                              strongly_typed=args.strongly_typed)
        build_s = time.perf_counter() - t0  # three engines built from scratch (empty engine_dir) + loaded
        t0 = time.perf_counter()
        PolicyRunner.from_checkpoint(args.checkpoint, backend="tensorrt", onnx_dir=onnx_dir,
                                     engine_dir=work / f"trt-{precision}", fp16=precision == "fp16",
                                     strongly_typed=args.strongly_typed)
        load_s = time.perf_counter() - t0  # the same engines from the cache
        got = [(runner.infer(images, state, words, noise=noise), runner.last_points)
               for images, state, words, noise in obs]
        diffs = [float(np.abs(a - b).max()) for (a, _), (b, _) in zip(got, want)]
        point_diffs = [float(np.abs(a - b).max()) for (_, a), (_, b) in zip(got, want) if a is not None]
        report["engines"][precision] = {
            "network": runner.backend.network, "graph_dtype": runner.backend.graphs.dtype,
            "build_s": round(build_s, 2), "cached_load_s": round(load_s, 2),
            "parity_vs_onnxruntime": {"max_abs_action_diff": round(max(diffs), 6),
                                      "per_observation": [round(d, 6) for d in diffs],
                                      "max_abs_point_diff": round(max(point_diffs), 6) if point_diffs else None,
                                      "observations": len(obs), "same_noise": True},
            "latency": latency(runner, obs[0], args.iters),
        }
        del runner  # frees its engines' device buffers
    report["onnxruntime_latency"] = {k: v for k, v in latency(reference, obs[0], max(5, args.iters // 5)).items()
                                     if k in ("chunk", "runner_infer")}
    report["total_s"] = round(time.perf_counter() - t_all, 1)
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
