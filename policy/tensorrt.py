"""TensorRT backend: the exported ONNX graphs built into engines (policy/backends.py has what it shares with
onnxruntime: where graphs live, the export-manifest hash check, their metadata check). No torch: device buffers
and the stream are cuda-python's (policy/cuda.py), so a Jetson needs TensorRT, cuda-python, numpy and tokenizers.

Supported TensorRT: 10.x from 10.3 (JetPack 6) on; the `tensorrt` extra pins `tensorrt-cu12>=10.3,<11`, the
range this code is written against. TensorRT 11 is handled (strongly typed, no precision flags) but was never
run, and NVIDIA ships no TensorRT 11 for JetPack; lift the pin once benchmarks/tensorrt_check.sh passes on it.

Precision (`network_mode`), per TensorRT version:

    10.0 - 10.11 (JetPack 6: 10.3)   weakly typed network from the float32 graphs; fp16 = BuilderFlag.FP16, so
                                     TensorRT picks fp16 kernels and keeps precision-sensitive layers in fp32
    >= 10.12, 11.x (or no FP16 flag) strongly typed network (NetworkDefinitionCreationFlag.STRONGLY_TYPED; weak
                                     typing is deprecated in 10.12 and gone in 11): the types are the graph's, so
                                     fp16 builds from float16-converted graphs (`export_policy(fp16=True)`, in
                                     `<onnx_dir>/fp16/`, LayerNormalization kept in float32) and fp32 from the
                                     float32 ones; no precision flag is set
    strongly_typed=True/False forces one mode (False refuses a TensorRT without BuilderFlag.FP16 for fp16).

Every TensorRT call that reports failure through its return value is checked and raises `TensorRTError` naming
the graph and the call: the parser's errors (each listed), `build_serialized_network` / `deserialize_cuda_engine`
/ `create_execution_context` returning None, `add_optimization_profile` returning -1, `set_input_shape` /
`set_tensor_address` / `execute_async_v3` returning False.

Engines are cached under `engine_dir` (default `<graphs' dir>/trt/`) as `<graph>-<key[:16]>.engine`: a JSON
header + the serialized engine. The key hashes the checkpoint sha256, the ONNX graph's sha256 (the bytes the
engine was built from, as verified against the export manifest), GPU name and compute capability, TensorRT
version, precision, network mode and the optimisation profile; a header whose fields differ from what this
process would build, or whose engine bytes do not match the sha256 it records, is refused.
"""

from __future__ import annotations

import hashlib
import json
import struct
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from policy import graphs as gr
from policy.artifacts import atomic_write_bytes, sha256_bytes
from policy.backends import VerifiedGraphs, default_onnx_dir, load_graphs, refuse_points
from policy.cuda import Cuda, DeviceArray, import_cudart
from policy.errors import ArtifactMismatchError, InputError
from policy.signing import TrustedKey
from policy.spec import as_spec

MIN_VERSION = (10, 0)
STRONG_TYPING_FROM = (10, 12)  # weak typing (BuilderFlag.FP16 & co.) deprecated here, removed in 11
TESTED_RANGE = "tensorrt-cu12>=10.3,<11"


class TensorRTError(RuntimeError):
    """TensorRT refused to parse, build, deserialize or run something (the message names the graph and the call)."""


def version_of(trt) -> tuple[int, int]:
    """tensorrt.__version__ "10.3.0.30" -> (10, 3)."""
    try:
        major, minor = (int(p) for p in str(trt.__version__).split(".")[:2])
    except (AttributeError, ValueError):
        raise TensorRTError(f"tensorrt: expected a version like '10.3.0', received {getattr(trt, '__version__', None)!r}")
    return major, minor


def import_tensorrt():
    """The `tensorrt` module, refusing one older than 10.0 (this backend uses the TensorRT 10 API)."""
    try:
        import tensorrt as trt
    except ImportError as e:
        raise RuntimeError("backend 'tensorrt': the `tensorrt` Python package is not installed (JetPack ships it; on "
                           f"x86 `pip install -e '.[tensorrt]'`, i.e. {TESTED_RANGE}); see docs/deploy.md") from e
    if version_of(trt) < MIN_VERSION:
        raise TensorRTError(f"tensorrt: expected version >= {'.'.join(map(str, MIN_VERSION))} (the TensorRT 10 API; "
                            f"tested range {TESTED_RANGE}), received {trt.__version__}")
    return trt


def network_mode(trt, precision: str, strongly_typed: bool | None = None) -> str:
    """"strongly_typed" or "weakly_typed" for this TensorRT and precision (module docstring's table)."""
    if precision not in ("fp16", "fp32"):
        raise InputError(f"precision: expected 'fp16' or 'fp32', received {precision!r}")
    has_flag = hasattr(getattr(trt, "BuilderFlag", None), "FP16")
    if strongly_typed is None:
        strongly_typed = version_of(trt) >= STRONG_TYPING_FROM or not has_flag
    if not strongly_typed and precision == "fp16" and not has_flag:
        raise TensorRTError(f"tensorrt {trt.__version__}: strongly_typed=False with fp16 needs BuilderFlag.FP16, which "
                            "this version does not have; use strongly_typed=None (strongly typed, fp16 graphs)")
    return "strongly_typed" if strongly_typed else "weakly_typed"


def graph_dtype(precision: str, mode: str) -> str:
    """The ONNX dtype an engine is built from: float16 graphs only for a strongly typed fp16 engine."""
    return "float16" if (precision == "fp16" and mode == "strongly_typed") else "float32"


@dataclass(frozen=True)
class EngineKey:
    """Everything a serialized engine depends on. Engines are not portable across any of these."""

    checkpoint_sha256: str
    graph: str
    onnx_sha256: str  # the graph file the engine was built from (policy.export.graph_digest)
    gpu: str  # device name + compute capability, e.g. "NVIDIA GeForce RTX 4090 (sm_89)"
    tensorrt: str  # tensorrt.__version__
    precision: str  # "fp16" | "fp32"
    network: str  # "strongly_typed" | "weakly_typed"
    profile: str  # JSON of the optimisation profile (min/opt/max per input)

    @property
    def digest(self) -> str:
        return hashlib.sha256(json.dumps(asdict(self), sort_keys=True).encode()).hexdigest()

    def filename(self) -> str:
        return f"{self.graph}-{self.digest[:16]}.engine"


def engine_key(graphs: VerifiedGraphs, graph: str, gpu: str, tensorrt_version: str, precision: str, network: str,
               profile: dict) -> EngineKey:
    return EngineKey(graphs.checkpoint_sha256, graph, graphs.sha256[graph], gpu, tensorrt_version, precision, network,
                     json.dumps(profile, sort_keys=True))


ENGINE_MAGIC = b"MOTTRT02"


def write_engine(path: Path, key: EngineKey, engine_bytes: bytes) -> None:
    """Header (magic, length, JSON key + the engine's sha256) + serialized engine, written atomically."""
    engine_bytes = bytes(engine_bytes)
    header = json.dumps({**asdict(key), "digest": key.digest, "engine_sha256": sha256_bytes(engine_bytes)},
                        sort_keys=True).encode()
    atomic_write_bytes(path, ENGINE_MAGIC + struct.pack("<Q", len(header)) + header + engine_bytes)


def read_engine(path: Path, expected: EngineKey) -> bytes:
    """The serialized engine at `path`, refusing it unless its header matches `expected` field by field and the
    engine bytes match the sha256 in the header."""
    data = Path(path).read_bytes()
    if not data.startswith(ENGINE_MAGIC) or len(data) < len(ENGINE_MAGIC) + 8:
        raise ArtifactMismatchError(f"{path}: expected a mot-policy engine file (magic {ENGINE_MAGIC!r}); "
                                    "delete it to rebuild")
    (length,) = struct.unpack("<Q", data[len(ENGINE_MAGIC):len(ENGINE_MAGIC) + 8])
    start = len(ENGINE_MAGIC) + 8
    try:
        header = json.loads(data[start:start + length])
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ArtifactMismatchError(f"{path}: engine header is not valid JSON ({e}); delete it to rebuild") from e
    want = asdict(expected)
    diffs = [f"{k}: expected {v!r}, engine has {header.get(k)!r}" for k, v in want.items() if header.get(k) != v]
    if diffs or header.get("digest") != expected.digest:
        raise ArtifactMismatchError(f"{path}: engine does not match this checkpoint/graph/GPU/TensorRT ("
                                    + "; ".join(diffs or ["digest differs"]) + "); delete it to rebuild")
    engine = data[start + length:]
    if sha256_bytes(engine) != header.get("engine_sha256"):
        raise ArtifactMismatchError(f"{path}: engine bytes sha256 expected {header.get('engine_sha256')} (its header), "
                                    f"received {sha256_bytes(engine)}: truncated or modified; delete it to rebuild")
    return engine


def profile_shapes(policy, graph: str, *, max_batch: int = 1, opt_batch: int = 1,
                   opt_text_len: int = 16, image_hw: tuple[int, int] | None = None) -> dict[str, tuple[tuple[int, ...], ...]]:
    """Optimisation profile {input: (min, opt, max)} of one graph (of a PolicySpec or MoTPolicy) for batch 1..max_batch.

    Text length spans 1..max_text_tokens (optimised for `opt_text_len`); the prefix length follows (text + the
    pooled image tokens + the state token). Frames are fixed at image_hw (default image_size square)."""
    spec = as_spec(policy)
    cfg, dims = spec.cfg, spec.dims
    if not 1 <= opt_batch <= max_batch:
        raise InputError(f"opt_batch: expected 1 <= opt_batch <= max_batch={max_batch}, received {opt_batch}")
    t_max = cfg.max_text_tokens
    t_opt = max(1, min(opt_text_len, t_max))
    h, w = image_hw or (cfg.image_size, cfg.image_size)
    extra = cfg.body_image_tokens + 1  # + the state token
    batches = (1, opt_batch, max_batch)
    kv = lambda n: tuple((dims.layers, 2, b, dims.heads, m, dims.head_dim) for b, m in zip(batches, n))  # noqa: E731
    texts, prefixes = (1, t_opt, t_max), (1 + extra, t_opt + extra, t_max + extra)
    two = lambda n: tuple((b, m) for b, m in zip(batches, n))  # noqa: E731
    shapes = {
        "text_encoder": {"token_ids": two(texts), "text_valid": two(texts)},
        "obs_encoder": {"images": tuple((b, len(cfg.cameras), h, w, 3) for b in batches),
                        "robot_state_norm": tuple((b, cfg.robot_state_dim) for b in batches), "text_kv": kv(texts),
                        "text_valid": two(texts)},
        "denoiser": {"x_t": tuple((b, cfg.horizon, cfg.action_dim) for b in batches), "t": tuple((b,) for b in batches),
                     "prefix_kv": kv(prefixes), "prefix_valid": two(prefixes)},
    }
    if graph not in shapes:
        raise InputError(f"graph: expected one of {gr.GRAPHS}, received {graph!r}")
    return shapes[graph]


def check_in_profile(graph: str, shapes: dict[str, tuple[int, ...]], profile: dict) -> None:
    """Raises a clear ValueError when an input shape falls outside the engine's optimisation profile."""
    for name, shape in shapes.items():
        lo, _, hi = profile[name]
        if len(shape) != len(lo) or any(not a <= s <= b for a, s, b in zip(lo, shape, hi)):
            raise InputError(f"{graph}.{name}: expected a shape between {lo} and {hi} (the TensorRT engine's "
                             f"profile), received {tuple(shape)}; rebuild with a larger max_batch/image_hw")


# -- the TensorRT calls, each result checked (module-level so CPU tests can drive them with a fake tensorrt) ------
def _parser_errors(parser) -> str:
    errors = []
    for i in range(parser.num_errors):
        e = parser.get_error(i)
        try:
            errors.append(f"node {e.node_name()!r} ({e.node_operator()}): {e.desc()}")
        except AttributeError:
            errors.append(str(e))
    return "; ".join(errors) or "no error reported"


def build_engine(trt, logger, graph: str, onnx: bytes | Path, profile: dict, precision: str, network: str,
                 workspace_bytes: int) -> bytes:
    """ONNX (its verified bytes, or its path when it has external data) -> serialized engine bytes."""
    builder = trt.Builder(logger)
    if not builder:
        raise TensorRTError(f"tensorrt {graph}: Builder() failed (no usable CUDA device?)")
    flags = 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED) if network == "strongly_typed" else 0
    net = builder.create_network(flags)  # TensorRT 10: explicit batch is the only mode
    if net is None:
        raise TensorRTError(f"tensorrt {graph}: create_network({network}) returned None")
    parser = trt.OnnxParser(net, logger)
    ok = parser.parse_from_file(str(onnx)) if isinstance(onnx, Path) else parser.parse(onnx)
    if not ok:
        raise TensorRTError(f"tensorrt {graph}: the ONNX parser refused the graph: {_parser_errors(parser)}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace_bytes)
    if precision == "fp16" and network == "weakly_typed":
        config.set_flag(trt.BuilderFlag.FP16)  # 10.0-10.11 only (network_mode): deprecated in 10.12, gone in 11
    opt = builder.create_optimization_profile()
    for name, (lo, mid, hi) in profile.items():
        opt.set_shape(name, lo, mid, hi)
    if config.add_optimization_profile(opt) < 0:
        raise TensorRTError(f"tensorrt {graph}: add_optimization_profile refused the profile {profile}")
    serialized = builder.build_serialized_network(net, config)
    if serialized is None:
        raise TensorRTError(f"tensorrt {graph}: build_serialized_network returned None (see the TensorRT log above)")
    return bytes(serialized)


def create_context(engine, graph: str):
    context = engine.create_execution_context()
    if context is None:
        raise TensorRTError(f"tensorrt {graph}: create_execution_context returned None (out of GPU memory?)")
    return context


def set_input_shape(context, graph: str, name: str, shape: tuple[int, ...]) -> None:
    if not context.set_input_shape(name, tuple(shape)):
        raise TensorRTError(f"tensorrt {graph}.{name}: set_input_shape refused shape {tuple(shape)} (outside the "
                            "engine's optimisation profile, or a wrong rank)")


def set_tensor_address(context, graph: str, name: str, address: int) -> None:
    if not context.set_tensor_address(name, address):
        raise TensorRTError(f"tensorrt {graph}.{name}: set_tensor_address refused the buffer")


def prepare_engine(trt, logger, runtime, graphs: VerifiedGraphs, graph: str, key: EngineKey, profile: dict,
                   engine_dir: Path, workspace_bytes: int):
    """Loads the cached engine for `key` (building and caching it first when missing) -> (engine, context)."""
    path = engine_dir / key.filename()
    if not path.is_file():
        onnx = graphs.paths[graph] if graph in graphs.external else graphs.data[graph]
        write_engine(path, key, build_engine(trt, logger, graph, onnx, profile, key.precision, key.network,
                                             workspace_bytes))
    engine = runtime.deserialize_cuda_engine(read_engine(path, key))
    if engine is None:
        raise ArtifactMismatchError(f"{path}: TensorRT could not deserialize the engine; delete it to rebuild")
    return engine, create_context(engine, graph)


class TensorRTBackend:
    """TensorRT engines built from the three ONNX graphs (TensorRT 10.x Python API), cuda-python device buffers.

    fp16 (default) as the module docstring's table says; one optimisation profile (batch 1..max_batch, text length
    1..max_text_tokens). Buffers for every input and output are allocated once at the profile's maximum; a call
    writes into views of them. Cached K/V (text per instruction, prefix per observation) are device copies the next
    graph reads in place; points, confidence and velocity come back as numpy."""

    name = "tensorrt"

    def __init__(self, policy, checkpoint_dir: Path | None = None, *, onnx_dir: str | Path | None = None,
                 engine_dir: str | Path | None = None, fp16: bool = True, max_batch: int = 1, opt_batch: int = 1,
                 image_hw: tuple[int, int] | None = None, workspace_gb: float = 2.0, export_if_missing: bool = True,
                 strongly_typed: bool | None = None, fp16_onnx_dir: str | Path | None = None,
                 trusted_key: TrustedKey = None):
        """policy: a PolicySpec or MoTPolicy. fp16_onnx_dir: the float16 graphs of strongly typed fp16 engines."""
        trt = import_tensorrt()
        self.trt, self.cuda = trt, Cuda(import_cudart())
        self.spec = as_spec(policy, checkpoint_dir)
        self.cfg = self.spec.cfg
        self.outputs = {g: gr.graph_outputs(self.cfg, g) for g in gr.GRAPHS}
        self.precision = "fp16" if fp16 else "fp32"
        self.network = network_mode(trt, self.precision, strongly_typed)
        dtype = graph_dtype(self.precision, self.network)
        if dtype == "float16":
            base = Path(onnx_dir) if onnx_dir else default_onnx_dir(checkpoint_dir, self.spec.checkpoint_id)
            onnx_dir = Path(fp16_onnx_dir) if fp16_onnx_dir else base / "fp16"
        self.graphs = load_graphs(self.spec, checkpoint_dir, onnx_dir, export_if_missing, trusted_key=trusted_key,
                                  fp16=dtype == "float16")
        self.paths, self.checkpoint_sha256 = self.graphs.paths, self.graphs.checkpoint_sha256
        self.engine_dir = Path(engine_dir) if engine_dir else self.paths["denoiser"].parent / "trt"
        self.workspace = int(workspace_gb * (1 << 30))
        self.logger = trt.Logger(trt.Logger.WARNING)
        self.runtime = trt.Runtime(self.logger)
        if self.runtime is None:
            raise TensorRTError("tensorrt: Runtime() returned None")
        self.gpu = self.cuda.device_name()
        self.profiles, self.engines, self.contexts, self.buffers, self.keys = {}, {}, {}, {}, {}
        for graph in gr.GRAPHS:
            profile = profile_shapes(self.spec, graph, max_batch=max_batch, opt_batch=opt_batch, image_hw=image_hw)
            self.profiles[graph] = profile
            self.keys[graph] = self.engine_key(graph, profile)
            self.engines[graph], self.contexts[graph] = prepare_engine(
                trt, self.logger, self.runtime, self.graphs, graph, self.keys[graph], profile, self.engine_dir,
                self.workspace)
            self.buffers[graph] = self._allocate(graph, self.engines[graph], profile)
        self.graphs = VerifiedGraphs(self.graphs.paths, self.checkpoint_sha256, {}, self.graphs.sha256,
                                     self.graphs.dtype, self.graphs.signed_by, self.graphs.external)  # drop the bytes

    def engine_key(self, graph: str, profile: dict) -> EngineKey:
        return engine_key(self.graphs, graph, self.gpu, self.trt.__version__, self.precision, self.network, profile)

    def _allocate(self, graph: str, engine, profile: dict) -> dict[str, DeviceArray]:
        """One device buffer per I/O tensor, sized for the profile's maximum shapes."""
        context = self.contexts[graph]
        for name, (_, _, hi) in profile.items():
            set_input_shape(context, graph, name, hi)
        buffers = {}
        for i in range(engine.num_io_tensors):
            name = engine.get_tensor_name(i)
            shape = tuple(context.get_tensor_shape(name))
            if any(d < 0 for d in shape):
                raise TensorRTError(f"tensorrt {graph}.{name}: shape {shape} still dynamic after setting every input")
            buffers[name] = self.cuda.empty(shape, self.trt.nptype(engine.get_tensor_dtype(name)))
        missing = sorted(set(self.outputs[graph]) - set(buffers))
        if missing:
            raise TensorRTError(f"tensorrt {graph}: expected outputs {self.outputs[graph]}, the engine lacks {missing}")
        return buffers

    def _run(self, graph: str, feeds: dict[str, Any]) -> list[DeviceArray]:
        """feeds: numpy arrays or DeviceArrays; returns output views (valid until the next call of this graph)."""
        context, buffers = self.contexts[graph], self.buffers[graph]
        check_in_profile(graph, {k: tuple(v.shape) for k, v in feeds.items()}, self.profiles[graph])
        staged = []  # host arrays being copied: alive until the stream is synchronised
        for name, value in feeds.items():
            buffer = buffers[name]
            if isinstance(value, DeviceArray) and value.dtype == buffer.dtype:
                address = value.ptr  # cached K/V already on the device: read in place
            else:
                host = self.cuda.to_host(value) if isinstance(value, DeviceArray) else value
                host = np.ascontiguousarray(host, dtype=buffer.dtype)
                self.cuda.upload(buffer.view(host.shape), host)
                staged.append(host)
                address = buffer.ptr
            set_input_shape(context, graph, name, tuple(value.shape))
            set_tensor_address(context, graph, name, address)
        outputs = []
        for name in self.outputs[graph]:
            view = buffers[name].view(tuple(context.get_tensor_shape(name)))
            set_tensor_address(context, graph, name, view.ptr)
            outputs.append(view)
        if not context.execute_async_v3(self.cuda.stream_handle):
            raise TensorRTError(f"tensorrt {graph}: execute_async_v3 returned False")
        self.cuda.synchronize()
        return outputs

    def encode_text(self, token_ids: np.ndarray, text_valid: np.ndarray):
        (kv,) = self._run("text_encoder", {"token_ids": token_ids.astype(np.int64), "text_valid": text_valid})
        # The text K/V buffer is reused by the next call: the runner's cache needs its own copy.
        return self.cuda.clone(kv), self.cuda.to_device(text_valid.astype(bool))

    def encode_observation(self, images: np.ndarray, robot_state_norm: np.ndarray, text, points=None):
        """-> (prefix (device copies), points (B, 4 * cams) float32 or None, confidence (B, 2 * cams) or None)."""
        refuse_points(points, self.name)
        kv, valid = text
        out = self._run("obs_encoder", {"images": images, "robot_state_norm": robot_state_norm, "text_kv": kv,
                                        "text_valid": valid})
        prefix = (self.cuda.clone(out[0]), self.cuda.clone(out[1]))
        if len(out) == 2:
            return prefix, None, None
        return prefix, self.cuda.to_host(out[2]).astype(np.float32), self.cuda.to_host(out[3]).astype(np.float32)

    def denoise(self, x_t: np.ndarray, t: float, prefix) -> np.ndarray:
        kv, valid = prefix
        b = x_t.shape[0]
        (velocity,) = self._run("denoiser", {"x_t": x_t.astype(np.float32, copy=False),
                                             "t": np.full((b,), t, np.float32), "prefix_kv": kv, "prefix_valid": valid})
        return self.cuda.to_host(velocity).astype(np.float32)


__all__ = ["TensorRTBackend", "TensorRTError", "EngineKey", "engine_key", "network_mode", "graph_dtype", "import_tensorrt",
           "build_engine", "create_context", "set_input_shape", "set_tensor_address", "prepare_engine", "profile_shapes",
           "check_in_profile", "read_engine", "write_engine", "TESTED_RANGE"]
