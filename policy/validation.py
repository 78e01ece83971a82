"""Validation of observations and training batches: one place, clear errors, numpy only (no torch).

Every error names the field, what was expected and what arrived. Arrays may be numpy arrays or torch tensors
(a tensor is read through its own `.numpy()`, so this module never imports torch): the torch-free runtime
(policy/runtime.py) validates with it as is, MoTPolicy through its torch view (policy/inputs.py).

    batch = {
        "images": {camera: uint8 (B, H, W, 3)},   exactly the checkpoint's cameras
        "state": float32 (B, S),                   finite; S = robot_state_dim (inference) or state_dim (training)
        "instruction": list[str] (B),              non-empty (token counts: policy/text.py)
        "actions": float32 (B, horizon, A),        training only; finite
    }
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from policy.config import PolicyConfig
from policy.errors import InputError


@dataclass
class ObservationArrays:
    """A validated batch as numpy arrays. images: uint8 (B, cams, H, W, 3) in `cameras` order."""

    images: np.ndarray
    state: np.ndarray  # float32 (B, S), robot units
    instruction: list[str]
    actions: np.ndarray | None = None  # float32 (B, horizon, A), robot units

    @property
    def batch_size(self) -> int:
        return self.state.shape[0]


def as_array(value, field: str, dtype: str) -> np.ndarray:
    """A numpy array (or a torch tensor, read as numpy without a copy on the CPU) of exactly `dtype`."""
    if isinstance(value, np.ndarray):
        found = str(value.dtype)
    elif hasattr(value, "detach") and hasattr(value, "numpy") and hasattr(value, "dtype"):  # a torch tensor
        found = str(value.dtype).removeprefix("torch.")
    else:
        raise TypeError(f"{field}: expected a numpy array or torch tensor of {dtype}, received {type(value).__name__}")
    if found != dtype:
        raise TypeError(f"{field}: expected dtype {dtype}, received {found}")
    return value if isinstance(value, np.ndarray) else value.detach().cpu().numpy()


def check_finite(array: np.ndarray, field: str) -> None:
    finite = np.isfinite(array)
    if not finite.all():
        raise InputError(f"{field}: expected finite values, received NaN/inf at index {np.argwhere(~finite)[0].tolist()}")


def validate_arrays(batch: dict, cfg: PolicyConfig, *, require_actions: bool = False,
                    state_dim: int | None = None) -> ObservationArrays:
    """Checks a batch/observation dict against the config and returns numpy arrays (no copies but the cameras' stack).

    state: the robot's state (cfg.robot_state_dim) for inference; a training batch (require_actions) carries the
    body's whole state, target points included (cfg.state_dim). `state_dim` overrides either."""
    if state_dim is None:
        state_dim = cfg.state_dim if require_actions else cfg.robot_state_dim
    if not isinstance(batch, dict):
        raise TypeError(f"batch: expected a dict with images/state/instruction, received {type(batch).__name__}")
    required = ["images", "state", "instruction"] + (["actions"] if require_actions else [])
    missing = [k for k in required if k not in batch]
    if missing:
        raise InputError(f"batch: missing field(s) {missing}; expected {required}, received {sorted(batch)}")

    images = batch["images"]
    if not isinstance(images, dict):
        raise TypeError(f"images: expected a dict {{camera: uint8 (B, H, W, 3)}}, received {type(images).__name__}")
    expected, received = list(cfg.cameras), sorted(images)
    if set(images) != set(cfg.cameras):
        lacking = sorted(set(cfg.cameras) - set(images))
        extra = sorted(set(images) - set(cfg.cameras))
        raise InputError(f"images: expected cameras {expected}, received {received}"
                         + (f"; missing {lacking}" if lacking else "") + (f"; unknown {extra}" if extra else ""))
    frames = []
    for cam in cfg.cameras:
        frame = as_array(images[cam], f"images[{cam!r}]", "uint8")
        if frame.ndim != 4 or frame.shape[-1] != 3 or frame.shape[1] < 8 or frame.shape[2] < 8:
            raise InputError(f"images[{cam!r}]: expected shape (B, H, W, 3) with H, W >= 8, "
                             f"received {tuple(frame.shape)}")
        if frames and frame.shape != frames[0].shape:
            raise InputError(f"images[{cam!r}]: expected the same shape as images[{cfg.cameras[0]!r}] "
                             f"{tuple(frames[0].shape)}, received {tuple(frame.shape)}")
        frames.append(frame)
    batch_size = frames[0].shape[0]

    state = as_array(batch["state"], "state", "float32")
    if state.ndim != 2 or state.shape[1] != state_dim:
        raise InputError(f"state: expected shape (B, {state_dim}), received {tuple(state.shape)}")
    check_finite(state, "state")

    instruction = batch["instruction"]
    if isinstance(instruction, str) or not isinstance(instruction, (list, tuple)):
        raise TypeError(f"instruction: expected list[str] of length B, received {type(instruction).__name__}")
    for i, text in enumerate(instruction):
        if not isinstance(text, str):
            raise TypeError(f"instruction[{i}]: expected str, received {type(text).__name__}")
        if not text.strip():
            raise InputError(f"instruction[{i}]: expected a non-empty instruction, received {text!r}")

    actions = None
    if require_actions:
        actions = as_array(batch["actions"], "actions", "float32")
        if actions.ndim != 3 or tuple(actions.shape[1:]) != (cfg.horizon, cfg.action_dim):
            raise InputError(f"actions: expected shape (B, {cfg.horizon}, {cfg.action_dim}), "
                             f"received {tuple(actions.shape)}")
        check_finite(actions, "actions")

    sizes = {"images": batch_size, "state": state.shape[0], "instruction": len(instruction)}
    if actions is not None:
        sizes["actions"] = actions.shape[0]
    if len(set(sizes.values())) != 1 or batch_size == 0:
        raise InputError(f"batch: expected one non-zero batch size across fields, received {sizes}")

    # numpy stacks uint8 frames along a non-leading axis in microseconds (torch 2.x took ~16 ms for two 128 px frames).
    return ObservationArrays(np.stack(frames, axis=1), state, list(instruction), actions)


__all__ = ["ObservationArrays", "validate_arrays", "as_array", "check_finite"]
