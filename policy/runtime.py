"""PolicyRunner: one inference loop shared by every backend (torch, onnxruntime, tensorrt).

The runner owns what does not depend on how the graphs run, all of it numpy:

    validate (same errors as MoTPolicy) -> tokenize -> text K/V (cached per instruction)
    -> observation pass (once per call: image K/V, the target points, state K/V)
    -> Euler sampler over backend.denoise -> de-normalise

A backend implements the three graphs of DESIGN.md on numpy arrays:

    encode_text(token_ids (B, L) int64, text_valid (B, L) bool)              -> text cache (opaque)
    encode_observation(images uint8 (B, cams, H, W, 3), robot_state_norm (B, S_robot) float32, text cache,
                       points=None)
        -> (prefix (opaque), points (B, 4 * cams) float32 or None, confidence (B, 2 * cams) float32 or None)
    denoise(x_t (B, horizon, A) float32, t float, prefix)                     -> velocity (B, horizon, A)

Callers pass the robot's state only: a policy with target points computes them itself (policy/model.py
`observe`, inside the exported observation graph); `last_points` / `last_confidence` say what it pointed at on
the latest call. Passing `points=` instead is the torch backend's alone.

No torch: this module, the onnxruntime and TensorRT backends and everything they import (config, normalize,
validation, text, manifest, spec, graphs, signing, sampling) run without torch or the training code.
`PolicyRunner.from_checkpoint(path, backend="onnxruntime"|"tensorrt")` reads the checkpoint's config, norm stats
and manifest (+ signature) itself (policy/spec.py). The torch backend is named by a lazy reference (policy/lazy.py)
and built only when asked for: TORCH_BACKEND, and LOAD_CHECKPOINT for `from_checkpoint(..., backend="torch")`.

`infer` is safe to call from a worker thread (one lock around the whole call: backends keep
pre-allocated buffers and caches that must not interleave).
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from policy.backends import OnnxRuntimeBackend, refuse_points
from policy.config import PolicyConfig
from policy.errors import InputError
from policy.lazy import resolve
from policy.sampling import euler_sample
from policy.signing import TrustedKey, resolve_trusted_key
from policy.spec import PolicySpec, as_spec
from policy.tensorrt import TensorRTBackend
from policy.text import WordPieceTokenizer, resolve_language_model
from policy.validation import validate_arrays

BACKENDS = ("torch", "onnxruntime", "tensorrt")
TORCH_BACKEND = "policy.torch_backend:TorchBackend"  # lazy (torch): built only for backend="torch"
LOAD_CHECKPOINT = "policy.checkpoint:load_checkpoint"  # lazy (torch): the MoTPolicy for backend="torch"


class Backend(Protocol):
    name: str

    def encode_text(self, token_ids: np.ndarray, text_valid: np.ndarray) -> Any: ...

    def encode_observation(self, images: np.ndarray, robot_state_norm: np.ndarray, text: Any,
                           points: np.ndarray | None = None) -> tuple[Any, np.ndarray | None, np.ndarray | None]: ...

    def denoise(self, x_t: np.ndarray, t: float, prefix: Any) -> np.ndarray: ...


def make_backend(name: str, policy, checkpoint_dir: Path | None, **options) -> Backend:
    """Backend by name for a policy (a PolicySpec, or a MoTPolicy). onnxruntime/tensorrt need exported graphs
    (policy.export), exported lazily where this process can."""
    if name not in BACKENDS:
        raise InputError(f"backend: expected one of {list(BACKENDS)}, received {name!r}")
    spec = as_spec(policy, checkpoint_dir)
    if name == "torch":
        if spec.policy is None:
            raise InputError("backend: 'torch' needs the MoTPolicy (PolicyRunner.from_checkpoint(path, backend='torch') "
                             "loads it), received a PolicySpec without one")
        return resolve(TORCH_BACKEND)(spec.policy)
    if name == "onnxruntime":  # onnxruntime and tensorrt are imported by their backends when one is built
        return OnnxRuntimeBackend(spec, checkpoint_dir, **options)
    return TensorRTBackend(spec, checkpoint_dir, **options)


class PolicyRunner:
    def __init__(self, policy, backend: str = "torch", checkpoint_dir: str | Path | None = None,
                 text_cache_size: int = 32, **backend_options):
        """policy: an in-memory MoTPolicy (any backend), or a PolicySpec (onnxruntime/tensorrt without torch:
        what `from_checkpoint` passes)."""
        checkpoint_dir = Path(checkpoint_dir) if checkpoint_dir else None
        self.spec: PolicySpec = as_spec(policy, checkpoint_dir)
        self.policy = self.spec.policy  # the MoTPolicy, or None in a torch-free runner
        self.cfg: PolicyConfig = self.spec.cfg
        self.backend = make_backend(backend, self.spec, checkpoint_dir, **backend_options)
        # The policy's own tokenizer when there is one (same tokenizer.json), else one of the language folder.
        self.tokenizer = getattr(self.policy, "tokenizer", None) or WordPieceTokenizer(
            resolve_language_model(self.cfg.language_model), self.cfg.max_text_tokens)
        self.last_points: np.ndarray | None = None  # (4 * cams,) where the policy pointed on the latest call
        self.last_confidence: np.ndarray | None = None  # (2 * cams,) the grounding head's confidence in those points
        self.last_timing: dict[str, float] = {}
        self._text_cache: OrderedDict[str, Any] = OrderedDict()  # instruction -> text K/V (LRU)
        self._text_cache_size = text_cache_size
        self._lock = threading.Lock()

    @classmethod
    def from_checkpoint(cls, path: str | Path, backend: str = "torch", trusted_key: TrustedKey = None,
                        **options) -> "PolicyRunner":
        """The one checkpoint directory is all a runner needs (the policy points itself).

        torch: loads the MoTPolicy (policy.checkpoint.load_checkpoint). onnxruntime/tensorrt: reads config, norm stats
        and the verified manifest without torch (policy.spec.PolicySpec.from_checkpoint) and runs the graphs in
        <path>/onnx (or `onnx_dir=`), exporting missing ones only where torch is installed.

        trusted_key: an ed25519 public key (PEM path, PEM text or key; default `$MOT_TRUSTED_KEY`; None or "" with the
        variable unset: nothing is checked, as before signing). When one is configured the checkpoint's manifest.sig
        must be that key's signature of its manifest (which hashes every file), else CheckpointError; and for
        onnxruntime/tensorrt the graphs' export_manifest.sig too (`mot export --sign`), else ArtifactMismatchError."""
        if backend not in BACKENDS:
            raise InputError(f"backend: expected one of {list(BACKENDS)}, received {backend!r}")
        trusted = resolve_trusted_key(trusted_key)
        if backend != "torch":
            spec = PolicySpec.from_checkpoint(path, trusted)
            return cls(spec, backend=backend, checkpoint_dir=path, trusted_key=trusted, **options)
        try:
            load_checkpoint = resolve(LOAD_CHECKPOINT)
        except ImportError as e:
            raise InputError(f"backend: 'torch' needs torch, which this process cannot import ({e}); use backend "
                             "'onnxruntime' or 'tensorrt' with exported graphs (docs/deploy.md)") from None
        return cls(load_checkpoint(path, trusted_key=trusted), backend="torch", checkpoint_dir=path, **options)

    @property
    def config(self) -> PolicyConfig:
        return self.cfg

    @property
    def checkpoint_id(self) -> str:
        """The checkpoint's id (sha256 of its manifest), or an unsaved policy's fingerprint."""
        return self.spec.checkpoint_id

    def text_kv(self, instruction: str) -> Any:
        """Text K/V for one instruction, computed once and reused until evicted (LRU)."""
        if instruction in self._text_cache:
            self._text_cache.move_to_end(instruction)
            return self._text_cache[instruction]
        ids, valid = self.tokenizer.encode([instruction])
        kv = self.backend.encode_text(ids, valid)
        self._text_cache[instruction] = kv
        if len(self._text_cache) > self._text_cache_size:
            self._text_cache.popitem(last=False)
        return kv

    def infer(self, images: dict[str, np.ndarray], state: np.ndarray, instruction: str,
              noise: np.ndarray | None = None, num_steps: int | None = None,
              points: np.ndarray | None = None) -> np.ndarray:
        """One observation -> action chunk (horizon, action_dim) float32 in robot units.

        images: {camera: uint8 (H, W, 3)}, state: the robot's float32 (robot_state_dim,), instruction: str,
        noise: optional float32 (horizon, action_dim) for reproducible samples,
        points: optional float32 (4 * cams,) target points to use instead of the policy's own (the simulator's
        truth in `mot eval --sim-points`; torch backend only: the exported graphs compute their own).
        """
        if not isinstance(images, dict):
            raise TypeError(f"images: expected a dict {{camera: uint8 (H, W, 3)}}, received {type(images).__name__}")
        if not isinstance(state, np.ndarray):
            raise TypeError(f"state: expected a numpy float32 array ({self.robot_state_dim},), received "
                            f"{type(state).__name__}")
        if not isinstance(instruction, str):
            raise TypeError(f"instruction: expected str, received {type(instruction).__name__}")
        if points is not None:
            if self.cfg.target_points is None:
                raise InputError("points: this policy has no target points to replace")
            if self.backend.name != "torch":
                refuse_points(points, self.backend.name)
            if np.shape(points) != (self.cfg.target_point_dim,):
                raise InputError(f"points: expected shape ({self.cfg.target_point_dim},), received {np.shape(points)}")
            points = np.asarray(points, np.float32)[None]
        batch = {"images": {k: v[None] if isinstance(v, np.ndarray) else v for k, v in images.items()},
                 "state": state[None], "instruction": [instruction]}
        obs = validate_arrays(batch, self.cfg)  # the same checks and messages as MoTPolicy
        shape = (self.cfg.horizon, self.cfg.action_dim)
        if noise is None:
            noise = np.random.standard_normal(shape).astype(np.float32)
        elif np.shape(noise) != shape:
            raise InputError(f"noise: expected shape {shape}, received {np.shape(noise)}")
        steps = self.cfg.num_inference_steps if num_steps is None else num_steps
        with self._lock:
            t0 = time.perf_counter()
            text = self.text_kv(instruction)
            t1 = time.perf_counter()
            state_norm = self.spec.normalize_robot_state(obs.state)
            prefix, pointed, confidence = self.backend.encode_observation(obs.images, state_norm, text, points)
            self.last_points = None if pointed is None else pointed[0]
            self.last_confidence = None if confidence is None else confidence[0]
            t2 = time.perf_counter()
            x = euler_sample(lambda x, t: self.backend.denoise(x, t, prefix),
                             np.asarray(noise, dtype=np.float32)[None], steps)
            t3 = time.perf_counter()
        self.last_timing = {"text_ms": (t1 - t0) * 1e3,
                            "observation_ms": (t2 - t1) * 1e3, "denoise_ms": (t3 - t2) * 1e3}
        return self.spec.unnormalize_actions(x, obs.state)[0]

    def warmup(self, instruction: str = "pick up the red cube", iterations: int = 2) -> None:
        """Runs a few inferences on blank frames so first real calls are not slowed by lazy init."""
        size = self.cfg.image_size
        images = {cam: np.zeros((size, size, 3), np.uint8) for cam in self.cfg.cameras}
        for _ in range(iterations):
            self.infer(images, np.zeros(self.robot_state_dim, np.float32), instruction)

    @property
    def robot_state_dim(self) -> int:
        """What `infer` takes as `state`: the config's, less the target points the policy appends itself."""
        return self.cfg.robot_state_dim


__all__ = ["PolicyRunner", "Backend", "make_backend", "BACKENDS", "TORCH_BACKEND", "LOAD_CHECKPOINT"]
