"""Backends that run the exported graphs: onnxruntime and TensorRT.

Both implement the `policy.runtime.Backend` protocol (encode_text / encode_observation / denoise on
numpy arrays); the sampler, text cache, validation and de-normalisation stay in PolicyRunner.

Identity and integrity, checked before a graph runs (`load_graphs`):

1. `export_manifest.json` (written by policy.export beside the graphs) names the checkpoint the graphs were
   exported from; it must be the loaded checkpoint (its id: `policy.spec.PolicySpec.checkpoint_id`).
2. Every graph file (and any external-data file) is read once and its sha256 compared with the manifest's: a
   graph whose bytes changed after export (weights edited, metadata kept) is refused. The session or engine is
   built from those same bytes.
3. Each graph's metadata (role, checkpoint sha256) is checked as well.
4. With a trusted key (`trusted_key=`, or `$MOT_TRUSTED_KEY`), `export_manifest.sig` must be that key's
   signature of the manifest (`mot export --sign KEY`); graphs are then never exported here (there is no private
   key on a robot): ship them signed with the checkpoint.

Any failure is an `ArtifactMismatchError` with one line naming the file, what was expected and what was found,
so a stale or tampered export can never silently drive a robot with other weights.

Where graphs live: `onnx_dir` if given, else `<checkpoint>/onnx/`, else (an in-memory policy) a
per-fingerprint folder under `$MOT_CACHE` (default `~/.cache/mot-policy`). Missing graphs are exported
there first, atomically, when this process can export (torch and policy.export import: EXPORT, a lazy reference,
policy/lazy.py); a torch-free process is told, in one line, which `mot export` command makes them.

No torch here (and nothing that imports it): a backend takes a `policy.spec.PolicySpec` (or an in-memory
MoTPolicy, whose spec it takes). onnxruntime is imported when a backend is built. TensorRT engines:
policy/tensorrt.py.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from policy import graphs as gr
from policy.artifacts import sha256_bytes, sha256_file
from policy.errors import ArtifactMismatchError, InputError
from policy.lazy import resolve
from policy.signing import TrustedKey, resolve_trusted_key, verify_signature
from policy.spec import PolicySpec, as_spec

EXPORT = "policy.export:export_missing_graphs"  # lazy (torch): only when graphs are missing and may be exported here


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


def expected_fingerprint(policy, checkpoint_dir: Path | None) -> str:
    """The checkpoint id graphs must name: a spec's, or an in-memory policy's (policy.spec.PolicySpec.of)."""
    return as_spec(policy, checkpoint_dir).checkpoint_id


@dataclass(frozen=True)
class VerifiedGraphs:
    """The three graphs as checked by `load_graphs`: build sessions/engines from `data`, the bytes that were hashed."""

    paths: dict[str, Path]
    checkpoint_sha256: str
    data: dict[str, bytes] = field(repr=False)
    sha256: dict[str, str]  # graph -> policy.export.graph_digest (its file's sha256)
    dtype: str
    signed_by: str | None  # the key id that signed the export manifest, None when no key was configured
    external: frozenset[str] = frozenset()  # graphs with external-data files (loaded from their path, not bytes)


def default_onnx_dir(checkpoint_dir: Path | None, sha: str) -> Path:
    return Path(checkpoint_dir) / "onnx" if checkpoint_dir is not None else cache_root() / "onnx" / sha[-24:]


def load_graphs(policy, checkpoint_dir: Path | None, onnx_dir: str | Path | None = None,
                export_if_missing: bool = True, *, trusted_key: TrustedKey = None, fp16: bool | None = None) -> VerifiedGraphs:
    """Finds (or exports) the three graphs for this policy (a PolicySpec or a MoTPolicy) and verifies them (module
    docstring, steps 1-4).

    fp16: None accepts either dtype (what `mot export` wrote); True/False also requires float16/float32 graphs and
    exports that dtype when missing. trusted_key: an ed25519 public key (default `$MOT_TRUSTED_KEY`)."""
    spec = as_spec(policy, checkpoint_dir)
    checkpoint_dir = checkpoint_dir if checkpoint_dir is not None else spec.checkpoint_dir
    sha = spec.checkpoint_id
    trusted = resolve_trusted_key(trusted_key)
    onnx_dir = Path(onnx_dir) if onnx_dir is not None else default_onnx_dir(checkpoint_dir, sha)
    paths = gr.graph_paths(onnx_dir)
    missing = tuple(g for g, p in paths.items() if not p.is_file())
    redo = f"`mot export --checkpoint {checkpoint_dir or 'DIR'} --out {onnx_dir}{' --fp16' if fp16 else ''}`"
    if missing:
        if trusted is not None:
            raise ArtifactMismatchError(f"onnx_dir: expected signed graphs {list(missing)} in {onnx_dir} (a trusted key "
                                        f"is configured, so graphs are not exported here); run {redo[:-1]} --sign KEY` "
                                        "where the private key is and ship them with the checkpoint")
        if not export_if_missing:
            raise FileNotFoundError(f"onnx_dir: expected {[str(paths[g]) for g in missing]}; run {redo}")
        export_graphs(spec, onnx_dir, missing, bool(fp16), redo)
    manifest_path = onnx_dir / gr.MANIFEST_FILE
    found = gr.read_export_manifest(onnx_dir)
    if found is None:
        raise ArtifactMismatchError(f"{manifest_path}: expected the export manifest (sha256 of every graph), it is "
                                    f"missing or not a {gr.MANIFEST_FORMAT} file; re-export with {redo}")
    manifest, manifest_bytes = found
    signed_by = None
    if trusted is not None:
        signed_by = verify_signature(manifest_path, manifest_bytes, trusted, what="onnx_dir",
                                     how=f"mot export --checkpoint {checkpoint_dir or 'DIR'} --sign KEY",
                                     error=ArtifactMismatchError)
    if manifest.get("checkpoint_sha256") != sha:
        raise ArtifactMismatchError(f"{manifest_path}: exported from checkpoint {manifest.get('checkpoint_sha256')}, but "
                                    f"the loaded checkpoint is {sha}; re-export ({redo}) or delete the stale graphs")
    want_dtype = None if fp16 is None else ("float16" if fp16 else "float32")
    if want_dtype is not None and manifest.get("dtype") != want_dtype:
        raise ArtifactMismatchError(f"{manifest_path}: expected {want_dtype} graphs, received {manifest.get('dtype')}; "
                                    f"re-export with {redo}")
    data, digests = {}, {}
    for graph, path in paths.items():
        record = manifest.get("graphs", {}).get(graph)
        data[graph] = verify_graph_file(path, record, manifest_path, redo)
        check_graph_bytes_metadata(path, data[graph], graph, sha)
        digests[graph] = gr.graph_digest(record)
    external = frozenset(g for g in paths if manifest["graphs"][g].get("external_data"))
    return VerifiedGraphs(paths, sha, data, digests, str(manifest.get("dtype")), signed_by, external)


def export_graphs(spec: PolicySpec, onnx_dir: Path, missing: tuple[str, ...], fp16: bool, redo: str) -> None:
    """Exports the missing graphs here (policy.export, lazily: it needs torch), or says in one line how to."""
    try:
        export = resolve(EXPORT)
    except ImportError as e:
        raise ArtifactMismatchError(f"onnx_dir: expected graphs {list(missing)} in {onnx_dir}, and this process cannot "
                                    f"export them ({type(e).__name__}: {e}); run {redo} where torch is installed "
                                    "and ship the graphs with the checkpoint") from None
    export(spec, onnx_dir, missing, fp16=fp16)


def verify_graph_file(path: Path, record: dict | None, manifest_path: Path, redo: str = "`mot export`") -> bytes:
    """path's bytes, once their sha256 (and every external-data file's) matches the export manifest's `record`."""
    if not isinstance(record, dict) or record.get("file") != path.name:
        raise ArtifactMismatchError(f"{path}: expected an entry for it in {manifest_path}, received "
                                    f"{record.get('file') if isinstance(record, dict) else None!r}; re-export with {redo}")
    data = path.read_bytes()
    actual = sha256_bytes(data)
    if actual != record.get("sha256"):
        raise ArtifactMismatchError(f"{path}: sha256 expected {record.get('sha256')} ({manifest_path.name}), received "
                                    f"{actual}: the graph changed after export; re-export with {redo}")
    for location, expected in (record.get("external_data") or {}).items():
        side = path.parent / location
        got = sha256_file(side) if side.is_file() else None
        if got != expected:
            raise ArtifactMismatchError(f"{side}: sha256 expected {expected} ({manifest_path.name}, external data of "
                                        f"{path.name}), received {got}; re-export with {redo}")
    return data


def ensure_graphs(policy, checkpoint_dir: Path | None, onnx_dir: str | Path | None = None,
                  export_if_missing: bool = True, *, trusted_key: TrustedKey = None) -> tuple[dict[str, Path], str]:
    """Finds (or exports) the three graphs for this policy and verifies them (`load_graphs`). Returns (paths, sha256)."""
    graphs = load_graphs(policy, checkpoint_dir, onnx_dir, export_if_missing, trusted_key=trusted_key)
    return graphs.paths, graphs.checkpoint_sha256


def _check_metadata(path: Path, meta: dict[str, str], graph: str, sha: str) -> dict[str, str]:
    if meta.get("mot.format") != gr.FORMAT:
        raise ArtifactMismatchError(f"{path}: expected an ONNX graph exported by mot-policy ({gr.FORMAT}), "
                                    f"received mot.format={meta.get('mot.format')!r}")
    if meta.get("mot.graph") != graph:
        raise ArtifactMismatchError(f"{path}: expected graph {graph!r}, received {meta.get('mot.graph')!r}")
    if meta.get("mot.checkpoint_sha256") != sha:
        raise ArtifactMismatchError(f"{path}: exported from checkpoint {meta.get('mot.checkpoint_sha256')}, but the "
                                    f"loaded checkpoint is {sha}; re-export (`mot export`) or delete the stale graphs")
    return meta


def check_graph_metadata(path: Path, graph: str, sha: str) -> dict[str, str]:
    """The graph file's metadata, refused unless it is graph `graph` of checkpoint `sha`."""
    return _check_metadata(path, gr.read_metadata(path), graph, sha)


def check_graph_bytes_metadata(path: Path, data: bytes, graph: str, sha: str) -> dict[str, str]:
    """As check_graph_metadata, on the graph's (already verified) bytes."""
    try:
        meta = gr.read_metadata(data)
    except Exception as e:  # onnx's DecodeError: not a protobuf at all
        raise ArtifactMismatchError(f"{path}: expected an ONNX model, cannot parse it ({type(e).__name__})") from None
    return _check_metadata(path, meta, graph, sha)


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


def refuse_points(points, backend: str) -> None:
    """The graphs compute the target points themselves: replacing them is the torch backend's (MoTPolicy.observe)."""
    if points is not None:
        raise InputError(f"points: replacing the policy's own target points needs the torch backend (the {backend} "
                         "observation graph computes them), received points with backend " + repr(backend))


class OnnxRuntimeBackend:
    """The three graphs in onnxruntime sessions (CPU, or CUDA when its provider is installed).

    Graph optimisation level ALL, intra-op threads = physical cores, sequential execution. The text
    K/V and the prefix K/V stay OrtValues (on the provider's device) between calls; each Euler step
    binds only x_t and t. The target points and their confidence come back as numpy arrays.
    """

    name = "onnxruntime"

    def __init__(self, policy, checkpoint_dir: Path | None = None, *, onnx_dir: str | Path | None = None,
                 providers: list[str] | None = None, intra_op_threads: int | None = None,
                 export_if_missing: bool = True, trusted_key: TrustedKey = None):
        import onnxruntime as ort

        self.ort = ort
        self.spec = as_spec(policy, checkpoint_dir)
        self.cfg = self.spec.cfg
        self.outputs = {g: gr.graph_outputs(self.cfg, g) for g in gr.GRAPHS}
        graphs = load_graphs(self.spec, checkpoint_dir, onnx_dir, export_if_missing, trusted_key=trusted_key)
        self.paths, self.checkpoint_sha256, self.graph_sha256 = graphs.paths, graphs.checkpoint_sha256, graphs.sha256
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
        # Sessions from the bytes just hashed, never re-read from disk; a graph with external data loads from its
        # path (its side files were hashed too) since ORT resolves them relative to the file.
        # onnxruntime's CPU SkipLayerNormalization (the fused residual Add + LayerNorm) ran 10x slower than the two
        # nodes it replaces on this project's 2-core machine (120 us per 128 x 384 vision-layer output): unfused, the
        # observation graph took 14.4 ms instead of 15.3 (docs/experiments.md). Other providers keep the fusion.
        disabled = ["SkipLayerNormFusion"] if self.device == "cpu" else []
        self.sessions = {g: ort.InferenceSession(str(self.paths[g]) if g in graphs.external else graphs.data[g], options,
                                                 providers=providers, disabled_optimizers=disabled) for g in gr.GRAPHS}
        for graph, session in self.sessions.items():
            found = tuple(o.name for o in session.get_outputs())
            if found != self.outputs[graph]:
                raise ArtifactMismatchError(f"{self.paths[graph]}: expected outputs {self.outputs[graph]} for this "
                                            f"policy, the graph has {found}; re-export it (`mot export`)")

    def _run(self, graph: str, feeds: dict[str, Any], host: tuple[str, ...] = ()) -> list:
        """Runs a graph with inputs bound as given; outputs stay OrtValues on the provider's device, but those named
        in `host`, which come back on the CPU."""
        session = self.sessions[graph]
        binding = session.io_binding()
        for name, value in feeds.items():
            if isinstance(value, np.ndarray):
                binding.bind_cpu_input(name, np.ascontiguousarray(value))
            else:
                binding.bind_ortvalue_input(name, value)
        for name in self.outputs[graph]:
            binding.bind_output(name, "cpu" if name in host else self.device)
        session.run_with_iobinding(binding)
        return binding.get_outputs()

    def encode_text(self, token_ids: np.ndarray, text_valid: np.ndarray):
        (kv,) = self._run("text_encoder", {"token_ids": token_ids.astype(np.int64, copy=False),
                                           "text_valid": text_valid.astype(bool, copy=False)})
        return kv, text_valid.astype(bool, copy=True)

    def encode_observation(self, images: np.ndarray, robot_state_norm: np.ndarray, text, points=None):
        """-> (prefix, points (B, 4 * cams) float32 or None, confidence (B, 2 * cams) float32 or None)."""
        refuse_points(points, self.name)
        text_kv, text_valid = text
        out = self._run("obs_encoder", {"images": images, "robot_state_norm": robot_state_norm.astype(np.float32, copy=False),
                                        "text_kv": text_kv, "text_valid": text_valid}, host=gr.POINT_OUTPUTS)
        b = images.shape[0]
        prefix = _OrtPrefix(self.sessions["denoiser"], out[0], out[1], self.device, (b, self.cfg.horizon, self.cfg.action_dim))
        pointed, confidence = (out[2].numpy(), out[3].numpy()) if len(out) == 4 else (None, None)
        return prefix, pointed, confidence

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


__all__ = ["OnnxRuntimeBackend", "ArtifactMismatchError", "ensure_graphs", "load_graphs", "export_graphs", "VerifiedGraphs",
           "verify_graph_file", "check_graph_metadata", "refuse_points", "physical_cores", "cache_root",
           "expected_fingerprint", "EXPORT"]
