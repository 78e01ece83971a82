"""Backends that run the exported graphs: onnxruntime and TensorRT.

Both implement the `policy.runtime.Backend` protocol (encode_text / encode_observation / denoise on
numpy arrays); the sampler, text cache, validation and de-normalisation stay in PolicyRunner.

Identity: every graph and engine carries the sha256 of the checkpoint it was made from
(`policy.export.policy_fingerprint`). A backend refuses a graph or an engine made from anything else
(`ArtifactMismatchError`), so a stale export can never silently drive a robot with other weights.

Where graphs live: `onnx_dir` if given, else `<checkpoint>/onnx/`, else (an in-memory policy) a
per-fingerprint folder under `$MOT_CACHE` (default `~/.cache/mot-policy`). Missing graphs are exported
there first, atomically (policy.export).

TensorRT engines: policy/tensorrt.py.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from policy import export as ex
from policy.checkpoint import checkpoint_id
from policy.errors import ArtifactMismatchError, InputError
from policy.model import MoTPolicy


def physical_cores() -> int:
    """Physical cores available to this process (hyper-threads share a core's FMA units)."""
    try:
        allowed = os.sched_getaffinity(0)
        cores, proc, phys = set(), None, None
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            key, value = key.strip(), value.strip()
            if key == "processor":
                proc = int(value)
                phys = None
            elif key == "physical id":
                phys = value
            elif key == "core id" and proc in allowed:
                cores.add((phys, value))
        return max(1, len(cores)) if cores else max(1, len(allowed))
    except (OSError, ValueError, AttributeError):
        return max(1, os.cpu_count() or 1)


def cache_root() -> Path:
    return Path(os.environ.get("MOT_CACHE", Path.home() / ".cache" / "mot-policy"))


def expected_fingerprint(policy: MoTPolicy, checkpoint_dir: Path | None) -> str:
    if getattr(policy, "checkpoint_id", None):
        return policy.checkpoint_id
    if checkpoint_dir is not None and (Path(checkpoint_dir) / "manifest.json").is_file():
        return checkpoint_id(checkpoint_dir)
    return ex.policy_fingerprint(policy)


def ensure_graphs(policy: MoTPolicy, checkpoint_dir: Path | None, onnx_dir: str | Path | None = None,
                  export_if_missing: bool = True) -> tuple[dict[str, Path], str]:
    """Finds (or exports) the three graphs for this policy; checks their metadata. Returns (paths, sha256)."""
    sha = expected_fingerprint(policy, checkpoint_dir)
    if onnx_dir is None:
        onnx_dir = Path(checkpoint_dir) / "onnx" if checkpoint_dir is not None else cache_root() / "onnx" / sha[-24:]
    paths = ex.graph_paths(onnx_dir)
    missing = tuple(g for g, p in paths.items() if not p.is_file())
    if missing:
        if not export_if_missing:
            raise FileNotFoundError(f"onnx_dir: expected {[str(paths[g]) for g in missing]}; run "
                                    f"`mot export --checkpoint {checkpoint_dir or 'DIR'} --out {onnx_dir}`")
        ex.export_policy(policy, onnx_dir, checkpoint_sha256=sha, graphs=missing)
    for graph, path in paths.items():
        check_graph_metadata(path, graph, sha)
    return paths, sha


def check_graph_metadata(path: Path, graph: str, sha: str) -> dict[str, str]:
    meta = ex.read_metadata(path)
    if meta.get("mot.format") != ex.FORMAT:
        raise ArtifactMismatchError(f"{path}: expected an ONNX graph exported by mot-policy ({ex.FORMAT}), "
                                    f"received mot.format={meta.get('mot.format')!r}")
    if meta.get("mot.graph") != graph:
        raise ArtifactMismatchError(f"{path}: expected graph {graph!r}, received {meta.get('mot.graph')!r}")
    if meta.get("mot.checkpoint_sha256") != sha:
        raise ArtifactMismatchError(f"{path}: exported from checkpoint {meta.get('mot.checkpoint_sha256')}, but the "
                                    f"loaded checkpoint is {sha}; re-export (`mot export`) or delete the stale graphs")
    return meta


# -- onnxruntime -------------------------------------------------------------------------------------
class _OrtPrefix:
    """The observation's prefix K/V kept as OrtValues, with the denoiser's IOBinding already bound to it."""

    def __init__(self, session, kv, valid, device: str, out_shape: tuple[int, ...]):
        self.kv, self.valid = kv, valid
        self.binding = session.io_binding()
        self.binding.bind_ortvalue_input("prefix_kv", kv)
        self.binding.bind_ortvalue_input("prefix_valid", valid)
        # CPU: ORT writes the velocity straight into this array (no per-step allocation).
        self.velocity = np.empty(out_shape, np.float32)
        if device == "cpu":
            self.binding.bind_output("velocity", "cpu", 0, np.float32, list(out_shape), self.velocity.ctypes.data)
        else:
            self.binding.bind_output("velocity", "cpu")
        self.device = device


class OnnxRuntimeBackend:
    """The three graphs in onnxruntime sessions (CPU, or CUDA when its provider is installed).

    Graph optimisation level ALL, intra-op threads = physical cores, sequential execution. The text
    K/V and the prefix K/V stay OrtValues (on the provider's device) between calls; each Euler step
    binds only x_t and t.
    """

    name = "onnxruntime"

    def __init__(self, policy: MoTPolicy, checkpoint_dir: Path | None = None, *, onnx_dir: str | Path | None = None,
                 providers: list[str] | None = None, intra_op_threads: int | None = None,
                 export_if_missing: bool = True):
        import onnxruntime as ort

        self.ort = ort
        self.cfg = policy.cfg
        self.paths, self.checkpoint_sha256 = ensure_graphs(policy, checkpoint_dir, onnx_dir, export_if_missing)
        available = ort.get_available_providers()
        if providers is None:
            providers = [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in available]
        unknown = [p for p in providers if p not in available]
        if unknown:
            raise InputError(f"providers: expected a subset of the installed {available}, received unknown {unknown}")
        self.providers = providers
        self.device = "cuda" if providers[0] == "CUDAExecutionProvider" else "cpu"
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.intra_op_num_threads = intra_op_threads or physical_cores()
        options.inter_op_num_threads = 1
        # Each session owns an intra-op pool whose workers spin after a Run to catch the next one fast.
        # With three sessions called back to back (observation, then 10 denoise steps), a pool still
        # spinning steals the cores the next session's pool needs: on 2 cores the chunk median was
        # 51-60 ms, 24-27 ms with spinning stopped (benchmarks/inference.py). Stop it when each Run returns.
        options.add_session_config_entry("session.force_spinning_stop", "1")
        self.threads = options.intra_op_num_threads
        self.sessions = {g: ort.InferenceSession(str(p), options, providers=providers) for g, p in self.paths.items()}

    def _bind_inputs(self, binding, feeds: dict[str, Any]) -> None:
        for name, value in feeds.items():
            if isinstance(value, np.ndarray):
                binding.bind_cpu_input(name, np.ascontiguousarray(value))
            else:
                binding.bind_ortvalue_input(name, value)

    def _run(self, graph: str, feeds: dict[str, Any]) -> list:
        """Runs a graph with inputs bound as given; outputs stay OrtValues on the provider's device."""
        session = self.sessions[graph]
        binding = session.io_binding()
        self._bind_inputs(binding, feeds)
        for name in ex.OUTPUTS[graph]:
            binding.bind_output(name, self.device)
        session.run_with_iobinding(binding)
        return binding.get_outputs()

    def encode_text(self, token_ids: np.ndarray, text_valid: np.ndarray):
        (kv,) = self._run("text_encoder", {"token_ids": token_ids.astype(np.int64, copy=False),
                                           "text_valid": text_valid.astype(bool, copy=False)})
        return kv, text_valid.astype(bool, copy=True)

    def encode_observation(self, images: np.ndarray, state_norm: np.ndarray, text) -> _OrtPrefix:
        text_kv, text_valid = text
        kv, valid = self._run("obs_encoder", {"images": images, "state_norm": state_norm.astype(np.float32, copy=False),
                                              "text_kv": text_kv, "text_valid": text_valid})
        b = images.shape[0]
        return _OrtPrefix(self.sessions["denoiser"], kv, valid, self.device, (b, self.cfg.horizon, self.cfg.action_dim))

    def denoise(self, x_t: np.ndarray, t: float, prefix: _OrtPrefix) -> np.ndarray:
        x = np.ascontiguousarray(x_t, dtype=np.float32)
        binding = prefix.binding
        binding.bind_cpu_input("x_t", x)
        binding.bind_cpu_input("t", np.full((x.shape[0],), t, np.float32))
        self.sessions["denoiser"].run_with_iobinding(binding)
        if prefix.device == "cpu":
            return prefix.velocity.copy()
        return binding.copy_outputs_to_cpu()[0]

    # Plain-numpy access for the benchmark and tests (prefix as arrays).
    @staticmethod
    def to_numpy(value) -> np.ndarray:
        return value if isinstance(value, np.ndarray) else value.numpy()


__all__ = ["OnnxRuntimeBackend", "ArtifactMismatchError", "ensure_graphs", "check_graph_metadata", "physical_cores",
           "cache_root", "expected_fingerprint"]
