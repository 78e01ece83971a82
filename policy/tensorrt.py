"""TensorRT backend: the exported ONNX graphs built into engines (policy/backends.py has what it shares with
onnxruntime: where graphs live, their metadata check).

Engines are cached under `engine_dir` (default `<onnx_dir>/trt/`) as `<graph>-<key[:16]>.engine`, a small
JSON header + the serialized engine. The key hashes the checkpoint sha256, GPU name and compute capability,
TensorRT version, precision and the optimisation profile; a header whose fields differ from what this
process would build is refused.
"""

from __future__ import annotations

import hashlib
import json
import struct
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from policy import export as ex
from policy.artifacts import atomic_write_bytes
from policy.backends import check_graph_metadata, ensure_graphs
from policy.errors import ArtifactMismatchError, InputError
from policy.model import MoTPolicy


@dataclass(frozen=True)
class EngineKey:
    """Everything a serialized engine depends on. Engines are not portable across any of these."""

    checkpoint_sha256: str
    graph: str
    gpu: str  # device name + compute capability, e.g. "NVIDIA GeForce RTX 4090 (sm_89)"
    tensorrt: str  # tensorrt.__version__
    precision: str  # "fp16" | "fp32"
    profile: str  # JSON of the optimisation profile (min/opt/max per input)

    @property
    def digest(self) -> str:
        return hashlib.sha256(json.dumps(asdict(self), sort_keys=True).encode()).hexdigest()

    def filename(self) -> str:
        return f"{self.graph}-{self.digest[:16]}.engine"


ENGINE_MAGIC = b"MOTTRT01"


def write_engine(path: Path, key: EngineKey, engine_bytes: bytes) -> None:
    """Header (magic, length, JSON key) + serialized engine, written to a temp name and renamed."""
    header = json.dumps({**asdict(key), "digest": key.digest}, sort_keys=True).encode()
    blob = ENGINE_MAGIC + struct.pack("<Q", len(header)) + header + bytes(engine_bytes)
    atomic_write_bytes(path, blob)


def read_engine(path: Path, expected: EngineKey) -> bytes:
    """The serialized engine at `path`, refusing it unless its header matches `expected` field by field."""
    data = Path(path).read_bytes()
    if not data.startswith(ENGINE_MAGIC) or len(data) < len(ENGINE_MAGIC) + 8:
        raise ArtifactMismatchError(f"{path}: expected a mot-policy engine file (magic {ENGINE_MAGIC!r}); "
                                    "delete it to rebuild")
    (length,) = struct.unpack("<Q", data[len(ENGINE_MAGIC):len(ENGINE_MAGIC) + 8])
    start = len(ENGINE_MAGIC) + 8
    try:
        header = json.loads(data[start:start + length])
    except json.JSONDecodeError as e:
        raise ArtifactMismatchError(f"{path}: engine header is not valid JSON ({e}); delete it to rebuild") from e
    want = asdict(expected)
    diffs = [f"{k}: expected {v!r}, engine has {header.get(k)!r}" for k, v in want.items() if header.get(k) != v]
    if diffs or header.get("digest") != expected.digest:
        raise ArtifactMismatchError(f"{path}: engine does not match this checkpoint/GPU/TensorRT ("
                                    + "; ".join(diffs or ["digest differs"]) + "); delete it to rebuild")
    return data[start + length:]


def profile_shapes(policy: MoTPolicy, graph: str, *, max_batch: int = 1, opt_batch: int = 1,
                   opt_text_len: int = 16, image_hw: tuple[int, int] | None = None) -> dict[str, tuple[tuple[int, ...], ...]]:
    """Optimisation profile {input: (min, opt, max)} of one graph for batch 1..max_batch.

    Text length spans 1..max_text_tokens (optimised for `opt_text_len`); the prefix length follows
    (text + image tokens + the state token). Frames are fixed at image_hw (default image_size square): the
    engine is built for the cameras' resolution.
    """
    cfg, dims = policy.cfg, policy.dims
    if not 1 <= opt_batch <= max_batch:
        raise InputError(f"opt_batch: expected 1 <= opt_batch <= max_batch={max_batch}, received {opt_batch}")
    t_max = cfg.max_text_tokens
    t_opt = max(1, min(opt_text_len, t_max))
    h, w = image_hw or (cfg.image_size, cfg.image_size)
    extra = cfg.image_tokens + 1  # + the state token
    batches = (1, opt_batch, max_batch)
    kv = lambda n: tuple((dims.layers, 2, b, dims.heads, m, dims.head_dim) for b, m in zip(batches, n))  # noqa: E731
    texts, prefixes = (1, t_opt, t_max), (1 + extra, t_opt + extra, t_max + extra)
    two = lambda n: tuple((b, m) for b, m in zip(batches, n))  # noqa: E731
    shapes = {
        "text_encoder": {"token_ids": two(texts), "text_valid": two(texts)},
        "obs_encoder": {"images": tuple((b, len(cfg.cameras), h, w, 3) for b in batches),
                        "state_norm": tuple((b, cfg.state_dim) for b in batches), "text_kv": kv(texts),
                        "text_valid": two(texts)},
        "denoiser": {"x_t": tuple((b, cfg.horizon, cfg.action_dim) for b in batches), "t": tuple((b,) for b in batches),
                     "prefix_kv": kv(prefixes), "prefix_valid": two(prefixes)},
    }
    if graph not in shapes:
        raise InputError(f"graph: expected one of {ex.GRAPHS}, received {graph!r}")
    return shapes[graph]


def check_in_profile(graph: str, shapes: dict[str, tuple[int, ...]], profile: dict) -> None:
    """Raises a clear ValueError when an input shape falls outside the engine's optimisation profile."""
    for name, shape in shapes.items():
        lo, _, hi = profile[name]
        if len(shape) != len(lo) or any(not a <= s <= b for a, s, b in zip(lo, shape, hi)):
            raise InputError(f"{graph}.{name}: expected a shape between {lo} and {hi} (the TensorRT engine's "
                             f"profile), received {tuple(shape)}; rebuild with a larger max_batch/image_hw")


class TensorRTBackend:
    """TensorRT engines built from the three ONNX graphs (tensorrt 10.x Python API), torch CUDA buffers.

    fp16 (default) enables BuilderFlag.FP16; every input gets an optimisation profile for batch
    1..max_batch and text length 1..max_text_tokens. Buffers for every input and output are
    allocated once at the profile's maximum; a call writes into views of them.
    """

    name = "tensorrt"

    def __init__(self, policy: MoTPolicy, checkpoint_dir: Path | None = None, *, onnx_dir: str | Path | None = None,
                 engine_dir: str | Path | None = None, fp16: bool = True, max_batch: int = 1, opt_batch: int = 1,
                 image_hw: tuple[int, int] | None = None, workspace_gb: float = 2.0, export_if_missing: bool = True):
        try:
            import tensorrt as trt
        except ImportError as e:
            raise RuntimeError("backend 'tensorrt': the `tensorrt` Python package is not installed (JetPack ships it; "
                               "on x86 `pip install tensorrt-cu12`); see docs/deploy.md") from e
        import torch

        if not torch.cuda.is_available():
            raise RuntimeError("backend 'tensorrt': expected a CUDA device, torch.cuda.is_available() is False")
        self.trt, self.torch = trt, torch
        self.cfg = policy.cfg
        self.paths, self.checkpoint_sha256 = ensure_graphs(policy, checkpoint_dir, onnx_dir, export_if_missing)
        self.engine_dir = Path(engine_dir) if engine_dir else self.paths["denoiser"].parent / "trt"
        self.precision = "fp16" if fp16 else "fp32"
        self.workspace = int(workspace_gb * (1 << 30))
        self.logger = trt.Logger(trt.Logger.WARNING)
        self.runtime = trt.Runtime(self.logger)
        self.stream = torch.cuda.Stream()
        cap = torch.cuda.get_device_capability()
        self.gpu = f"{torch.cuda.get_device_name()} (sm_{cap[0]}{cap[1]})"
        self.profiles, self.engines, self.contexts, self.buffers = {}, {}, {}, {}
        for graph in ex.GRAPHS:
            profile = profile_shapes(policy, graph, max_batch=max_batch, opt_batch=opt_batch, image_hw=image_hw)
            self.profiles[graph] = profile
            key = self.engine_key(graph, profile)
            path = self.engine_dir / key.filename()
            if not path.is_file():
                write_engine(path, key, self._build(graph, profile))
            engine = self.runtime.deserialize_cuda_engine(read_engine(path, key))
            if engine is None:
                raise ArtifactMismatchError(f"{path}: TensorRT could not deserialize the engine; delete it to rebuild")
            self.engines[graph] = engine
            self.contexts[graph] = engine.create_execution_context()
            self.buffers[graph] = self._allocate(graph, engine, profile)

    def engine_key(self, graph: str, profile: dict) -> EngineKey:
        return EngineKey(self.checkpoint_sha256, graph, self.gpu, self.trt.__version__, self.precision,
                         json.dumps(profile, sort_keys=True))

    def _build(self, graph: str, profile: dict) -> bytes:
        trt = self.trt
        builder = trt.Builder(self.logger)
        network = builder.create_network(0)  # TensorRT 10: explicit batch is the only mode
        parser = trt.OnnxParser(network, self.logger)
        if not parser.parse_from_file(str(self.paths[graph])):
            errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
            raise RuntimeError(f"tensorrt: cannot parse {self.paths[graph]}: {errors}")
        config = builder.create_builder_config()
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, self.workspace)
        if self.precision == "fp16":
            config.set_flag(trt.BuilderFlag.FP16)
        opt = builder.create_optimization_profile()
        for name, (lo, mid, hi) in profile.items():
            opt.set_shape(name, lo, mid, hi)
        config.add_optimization_profile(opt)
        serialized = builder.build_serialized_network(network, config)
        if serialized is None:
            raise RuntimeError(f"tensorrt: building the {graph} engine failed (see the TensorRT log above)")
        return bytes(serialized)

    def _allocate(self, graph: str, engine, profile: dict) -> dict:
        """One device buffer per I/O tensor, sized for the profile's maximum shapes."""
        torch, trt = self.torch, self.trt
        context = self.contexts[graph]
        for name, (_, _, hi) in profile.items():
            context.set_input_shape(name, hi)
        buffers = {}
        for i in range(engine.num_io_tensors):
            name = engine.get_tensor_name(i)
            shape = tuple(context.get_tensor_shape(name))
            dtype = torch.from_numpy(np.empty(0, trt.nptype(engine.get_tensor_dtype(name)))).dtype
            buffers[name] = torch.empty(int(np.prod(shape)), dtype=dtype, device="cuda")
        return buffers

    def _run(self, graph: str, feeds: dict[str, Any]) -> list:
        """feeds: numpy arrays or CUDA tensors; returns output tensor views (valid until the next call)."""
        torch = self.torch
        context, buffers = self.contexts[graph], self.buffers[graph]
        check_in_profile(graph, {k: tuple(v.shape) for k, v in feeds.items()}, self.profiles[graph])
        with torch.cuda.stream(self.stream):
            for name, value in feeds.items():
                buffer = buffers[name]
                if isinstance(value, torch.Tensor) and value.is_cuda and value.dtype == buffer.dtype \
                        and value.is_contiguous():
                    address = value.data_ptr()  # cached K/V already on the device: read in place
                else:
                    view = buffer[: int(np.prod(value.shape))].view(tuple(value.shape))
                    src = torch.from_numpy(np.ascontiguousarray(value)) if isinstance(value, np.ndarray) else value
                    view.copy_(src.to(view.dtype), non_blocking=True)
                    address = view.data_ptr()
                context.set_input_shape(name, tuple(value.shape))
                context.set_tensor_address(name, address)
            outputs = []
            for name in ex.OUTPUTS[graph]:
                shape = tuple(context.get_tensor_shape(name))
                view = buffers[name][: int(np.prod(shape))].view(shape)
                context.set_tensor_address(name, view.data_ptr())
                outputs.append(view)
            if not context.execute_async_v3(self.stream.cuda_stream):
                raise RuntimeError(f"tensorrt: {graph} execution failed")
        self.stream.synchronize()
        return outputs

    def encode_text(self, token_ids: np.ndarray, text_valid: np.ndarray):
        (kv,) = self._run("text_encoder", {"token_ids": token_ids.astype(np.int64), "text_valid": text_valid})
        # The text K/V buffer is reused by the next call: the runner's cache needs its own copy.
        return kv.clone(), self.torch.from_numpy(text_valid.astype(bool)).cuda()

    def encode_observation(self, images: np.ndarray, state_norm: np.ndarray, text):
        kv, valid = text
        prefix_kv, prefix_valid = self._run("obs_encoder", {"images": images, "state_norm": state_norm,
                                                            "text_kv": kv, "text_valid": valid})
        return prefix_kv.clone(), prefix_valid.clone()

    def denoise(self, x_t: np.ndarray, t: float, prefix) -> np.ndarray:
        kv, valid = prefix
        b = x_t.shape[0]
        (velocity,) = self._run("denoiser", {"x_t": x_t.astype(np.float32, copy=False),
                                             "t": np.full((b,), t, np.float32), "prefix_kv": kv, "prefix_valid": valid})
        return velocity.float().cpu().numpy()


__all__ = ["TensorRTBackend", "EngineKey", "profile_shapes", "check_in_profile", "read_engine", "write_engine"]
