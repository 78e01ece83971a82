"""PolicyRunner: one inference loop shared by every backend (torch, onnxruntime, tensorrt).

The runner owns what does not depend on how the graphs run:

    validate (same errors as MoTPolicy) -> tokenize -> text K/V (cached per instruction)
    -> observation pass (once per call: image K/V, the target points, state K/V)
    -> Euler sampler over backend.denoise -> de-normalise

A backend implements the three graphs of DESIGN.md on numpy arrays:

    encode_text(token_ids (B, L) int64, text_valid (B, L) bool)              -> text cache (opaque)
    encode_observation(images uint8 (B, cams, H, W, 3), robot_state_norm (B, S_robot), text cache)
        -> (prefix (opaque), points (B, 4 * cams) float32 or None, confidence (B, 2 * cams) float32 or None)
    denoise(x_t (B, horizon, A) float32, t float, prefix)                     -> velocity (B, horizon, A)

Callers pass the robot's state only: a policy with target points computes them itself (policy/model.py
`observe`); `last_points` / `last_confidence` say what it pointed at on the latest call.

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
import torch

from policy.backends import OnnxRuntimeBackend
from policy.checkpoint import load_checkpoint
from policy.config import PolicyConfig
from policy.errors import InputError
from policy.inputs import validate_batch
from policy.model import MoTPolicy, Prefix, euler_sample
from policy.signing import TrustedKey, resolve_trusted_key
from policy.tensorrt import TensorRTBackend


class Backend(Protocol):
    name: str

    def encode_text(self, token_ids: np.ndarray, text_valid: np.ndarray) -> Any: ...

    def encode_observation(self, images: np.ndarray, robot_state_norm: np.ndarray, text: Any,
                           points: np.ndarray | None = None) -> tuple[Any, np.ndarray | None, np.ndarray | None]: ...

    def denoise(self, x_t: np.ndarray, t: float, prefix: Any) -> np.ndarray: ...


class TorchBackend:
    """Eager torch: the reference every other backend is compared against."""

    name = "torch"

    def __init__(self, policy: MoTPolicy):
        self.policy = policy.eval()

    @torch.inference_mode()
    def encode_text(self, token_ids: np.ndarray, text_valid: np.ndarray) -> Prefix:
        return self.policy.encode_text(torch.from_numpy(token_ids), torch.from_numpy(text_valid))

    @torch.inference_mode()
    def encode_observation(self, images: np.ndarray, robot_state_norm: np.ndarray, text: Prefix,
                           points: np.ndarray | None = None):
        prefix, points, confidence = self.policy.observe(
            torch.from_numpy(images), torch.from_numpy(robot_state_norm), text,
            None if points is None else torch.from_numpy(np.ascontiguousarray(points, dtype=np.float32)))
        as_np = lambda x: None if x is None else x.numpy().astype(np.float32)  # noqa: E731
        return prefix, as_np(points), as_np(confidence)

    @torch.inference_mode()
    def denoise(self, x_t: np.ndarray, t: float, prefix: Prefix) -> np.ndarray:
        x = torch.from_numpy(np.ascontiguousarray(x_t, dtype=np.float32))
        return self.policy.denoise(x, torch.full((x.shape[0],), t), prefix).numpy()


def make_backend(name: str, policy: MoTPolicy, checkpoint_dir: Path | None, **options) -> Backend:
    """Backend by name. onnxruntime/tensorrt need exported graphs (policy.export), built lazily."""
    if name == "torch":
        return TorchBackend(policy)
    if name == "onnxruntime":  # onnxruntime and tensorrt are imported by their backends when one is built
        return OnnxRuntimeBackend(policy, checkpoint_dir, **options)
    if name == "tensorrt":
        return TensorRTBackend(policy, checkpoint_dir, **options)
    raise InputError(f"backend: expected one of ['torch', 'onnxruntime', 'tensorrt'], received {name!r}")


class PolicyRunner:
    def __init__(self, policy: MoTPolicy, backend: str = "torch", checkpoint_dir: str | Path | None = None,
                 text_cache_size: int = 32, **backend_options):
        self.last_points: np.ndarray | None = None  # (4 * cams,) where the policy pointed on the latest call
        self.last_confidence: np.ndarray | None = None  # (2 * cams,) the grounding head's confidence in those points
        self.policy = policy.eval()
        self.cfg: PolicyConfig = policy.cfg
        self.backend = make_backend(backend, policy, Path(checkpoint_dir) if checkpoint_dir else None,
                                    **backend_options)
        self._text_cache: OrderedDict[str, Any] = OrderedDict()  # instruction -> text K/V (LRU)
        self._text_cache_size = text_cache_size
        self._lock = threading.Lock()
        self.last_timing: dict[str, float] = {}

    @classmethod
    def from_checkpoint(cls, path: str | Path, backend: str = "torch", trusted_key: TrustedKey = None,
                        **options) -> "PolicyRunner":
        """The one checkpoint directory is all a runner needs (the policy points itself).

        trusted_key: an ed25519 public key (PEM path, PEM text or key; default `$MOT_TRUSTED_KEY`; None or "" with the
        variable unset: nothing is checked, as before signing). When one is configured the checkpoint's manifest.sig
        must be that key's signature of its manifest (which hashes every file),
        else CheckpointError; and for onnxruntime/tensorrt the graphs' export_manifest.sig too (`mot export --sign`),
        else ArtifactMismatchError."""
        trusted = resolve_trusted_key(trusted_key)
        policy = load_checkpoint(path, trusted_key=trusted)
        if backend != "torch":
            options["trusted_key"] = trusted
        return cls(policy, backend=backend, checkpoint_dir=path, **options)

    @property
    def config(self) -> PolicyConfig:
        return self.cfg

    def text_kv(self, instruction: str) -> Any:
        """Text K/V for one instruction, computed once and reused until evicted (LRU)."""
        if instruction in self._text_cache:
            self._text_cache.move_to_end(instruction)
            return self._text_cache[instruction]
        ids, valid = self.policy.tokenizer([instruction])
        kv = self.backend.encode_text(ids.numpy(), valid.numpy())
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
        truth in `mot eval --sim-points`; torch backend only).
        """
        if not isinstance(images, dict):
            raise TypeError(f"images: expected a dict {{camera: uint8 (H, W, 3)}}, received {type(images).__name__}")
        if not isinstance(state, np.ndarray):
            raise TypeError(f"state: expected a numpy float32 array ({self.cfg.state_dim},), received {type(state).__name__}")
        if not isinstance(instruction, str):
            raise TypeError(f"instruction: expected str, received {type(instruction).__name__}")
        if points is not None:
            if self.cfg.target_points is None:
                raise InputError("points: this policy has no target points to replace")
            if np.shape(points) != (self.cfg.target_point_dim,):
                raise InputError(f"points: expected shape ({self.cfg.target_point_dim},), received {np.shape(points)}")
            points = np.asarray(points, np.float32)[None]
        batch = {"images": {k: v[None] if isinstance(v, np.ndarray) else v for k, v in images.items()},
                 "state": state[None], "instruction": [instruction]}
        obs = validate_batch(batch, self.cfg)  # the same checks and messages as MoTPolicy
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
            state_norm = self.policy.normalize_robot_state(obs.state).numpy().astype(np.float32)
            prefix, pointed, confidence = self.backend.encode_observation(obs.images.numpy(), state_norm, text, points)
            self.last_points = None if pointed is None else pointed[0]
            self.last_confidence = None if confidence is None else confidence[0]
            t2 = time.perf_counter()
            x = euler_sample(lambda x, t: self.backend.denoise(x, t, prefix),
                             np.asarray(noise, dtype=np.float32)[None], steps)
            t3 = time.perf_counter()
        self.last_timing = {"text_ms": (t1 - t0) * 1e3,
                            "observation_ms": (t2 - t1) * 1e3, "denoise_ms": (t3 - t2) * 1e3}
        actions = self.policy.unnormalize_actions(torch.from_numpy(x), obs.state)[0]
        return actions.numpy().astype(np.float32)

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
