"""The GEMM roofline MFU figures are relative to: the best matmul rate any engine the benchmark times reaches.

A peak measured with one library flatters every other one that multiplies faster. On the development machine
(2-core AMD EPYC), torch's CPU matmul tops out near 200 GFLOP/s while onnxruntime's MLAS kernels reach about
420 GFLOP/s on the same cores: an MFU against torch's figure read 103 % for the onnxruntime observation graph.
So the peak is the best of every engine: torch.matmul on the benchmark's device and, on the CPU, onnxruntime's
MatMul with the thread count its sessions use.

Best of several short bursts per size: load from other processes only lowers a burst's rate, so the best burst
is the closest to what the cores can do (and MFU is not flattered by a low peak).
"""

from __future__ import annotations

import time

import numpy as np
import torch

try:
    import onnxruntime as ort
    from onnx import TensorProto, helper
except ImportError:  # without the [export] extra there is no onnxruntime to measure: torch's peak alone
    ort = None

SIZES = (256, 512, 1024, 2048)


def _best_rate(fn, n: int, bursts: int, burst_s: float, sync=lambda: None) -> float:
    """Best GFLOP/s of `fn` (one n x n x n matmul per call) over `bursts` bursts of at least `burst_s` seconds."""
    fn()
    sync()
    best = 0.0
    for _ in range(bursts):
        reps, t0 = 0, time.perf_counter()
        while time.perf_counter() - t0 < burst_s or reps < 2:
            fn()
            reps += 1
        sync()
        best = max(best, 2 * n**3 * reps / (time.perf_counter() - t0) / 1e9)
    return best


def _report(per_size: dict[str, float], dtype: str, device: str, method: str) -> dict:
    return {"gflops": max(per_size.values()), "per_size_gflops": per_size, "dtype": dtype, "device": device,
            "method": method}


def torch_gemm_peak(device: str, dtype: torch.dtype, sizes=SIZES, bursts: int = 5, burst_s: float = 0.05) -> dict:
    """Best GFLOP/s of square torch.matmul calls on `device`."""
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    per_size = {}
    for n in sizes:
        a = torch.randn(n, n, device=device, dtype=dtype)
        b = torch.randn(n, n, device=device, dtype=dtype)
        per_size[str(n)] = round(_best_rate(lambda: a @ b, n, bursts, burst_s, sync), 3)
    return _report(per_size, str(dtype).removeprefix("torch."), device,
                   f"torch.matmul, best of {bursts} bursts of {burst_s * 1e3:.0f} ms per size")


def ort_gemm_peak(threads: int, sizes=SIZES, bursts: int = 5, burst_s: float = 0.05) -> dict:
    """Best GFLOP/s of square float32 MatMul graphs in onnxruntime on the CPU, `threads` intra-op threads."""
    per_size = {}
    for n in sizes:
        io = [helper.make_tensor_value_info(name, TensorProto.FLOAT, [n, n]) for name in ("a", "b", "c")]
        graph = helper.make_graph([helper.make_node("MatMul", ["a", "b"], ["c"])], "gemm", io[:2], io[2:])
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
        feeds = {"a": np.random.randn(n, n).astype(np.float32), "b": np.random.randn(n, n).astype(np.float32)}
        per_size[str(n)] = round(_best_rate(lambda: session.run(None, feeds), n, bursts, burst_s), 3)
    return _report(per_size, "float32", "cpu",
                   f"onnxruntime MatMul ({threads} threads), best of {bursts} bursts of {burst_s * 1e3:.0f} ms per size")


def gemm_peak(device: str, dtype: torch.dtype, ort_threads: int | None = None, **kwargs) -> dict:
    """The best of every engine's peak (module docstring), each engine's GFLOP/s under "engines_gflops".

    ort_threads: also measure onnxruntime's MatMul on the CPU with that many threads, where onnxruntime is installed
    (None: torch only, e.g. on a GPU, where the MFU figures are the GPU's)."""
    peaks = {"torch": torch_gemm_peak(device, dtype, **kwargs)}
    if ort_threads is not None and device == "cpu" and dtype == torch.float32 and ort is not None:
        peaks["onnxruntime"] = ort_gemm_peak(ort_threads, **kwargs)
    return best_peak(peaks)


def best_peak(peaks: dict[str, dict]) -> dict:
    """{engine: peak report} -> the highest report, naming its engine, with every engine's GFLOP/s beside it."""
    engine = max(peaks, key=lambda e: peaks[e]["gflops"])
    return {**peaks[engine], "engine": engine, "engines_gflops": {e: p["gflops"] for e, p in peaks.items()}}
