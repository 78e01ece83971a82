"""The MFU roofline is the best matmul rate of every engine the benchmark times (benchmarks/peak.py)."""

import pytest
import torch

from benchmarks.peak import best_peak, gemm_peak, ort_gemm_peak, torch_gemm_peak


def test_best_peak_names_the_fastest_engine_and_keeps_the_others():
    slow = {"gflops": 180.0, "per_size_gflops": {"512": 180.0}, "method": "torch"}
    fast = {"gflops": 420.0, "per_size_gflops": {"512": 420.0}, "method": "ort"}
    peak = best_peak({"torch": slow, "onnxruntime": fast})
    assert peak["engine"] == "onnxruntime" and peak["gflops"] == 420.0 and peak["method"] == "ort"
    assert peak["engines_gflops"] == {"torch": 180.0, "onnxruntime": 420.0}
    assert best_peak({"torch": slow})["engine"] == "torch"


def test_each_engine_measures_a_rate_per_size():
    kwargs = {"sizes": (128, 256), "bursts": 1, "burst_s": 0.005}
    ort_peak = ort_gemm_peak(1, **kwargs)
    for peak in (torch_gemm_peak("cpu", torch.float32, **kwargs), ort_peak):
        assert set(peak["per_size_gflops"]) == {"128", "256"}
        assert all(rate > 0 for rate in peak["per_size_gflops"].values())
        assert peak["gflops"] == max(peak["per_size_gflops"].values())
    assert "onnxruntime MatMul (1 threads)" in ort_peak["method"]


@pytest.mark.parametrize("ort_threads, engines", [(None, {"torch"}), (1, {"torch", "onnxruntime"})])
def test_the_cpu_peak_includes_onnxruntime_only_when_asked(ort_threads, engines):
    peak = gemm_peak("cpu", torch.float32, ort_threads, sizes=(128,), bursts=1, burst_s=0.005)
    assert set(peak["engines_gflops"]) == engines
    assert peak["gflops"] == max(peak["engines_gflops"].values())
