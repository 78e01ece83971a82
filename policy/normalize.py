"""Normalisation of state and actions: z-scores with statistics stored next to the checkpoint.

The model sees normalised vectors; users see robot units. `NormStats.identity` is the default until
training computes statistics from the dataset (`NormStats.from_arrays`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from policy.errors import InputError

EPS = 1e-6


@dataclass
class NormStats:
    state_mean: np.ndarray  # (S,)
    state_std: np.ndarray  # (S,)
    action_mean: np.ndarray  # (A,)
    action_std: np.ndarray  # (A,)

    def __post_init__(self) -> None:
        for name in ("state_mean", "state_std", "action_mean", "action_std"):
            value = np.asarray(getattr(self, name), dtype=np.float32)
            if value.ndim != 1 or not np.all(np.isfinite(value)):
                raise InputError(f"norm_stats.{name}: expected a finite 1-D vector, received shape {value.shape}")
            setattr(self, name, value)
        for kind in ("state", "action"):
            mean, std = getattr(self, f"{kind}_mean"), getattr(self, f"{kind}_std")
            if mean.shape != std.shape:
                raise InputError(f"norm_stats.{kind}_std: expected shape {mean.shape}, received {std.shape}")
            if np.any(std <= 0):
                raise InputError(f"norm_stats.{kind}_std: expected > 0 everywhere, received {std.tolist()}")

    @classmethod
    def identity(cls, state_dim: int, action_dim: int) -> "NormStats":
        return cls(np.zeros(state_dim), np.ones(state_dim), np.zeros(action_dim), np.ones(action_dim))

    @classmethod
    def from_arrays(cls, states: np.ndarray, actions: np.ndarray,
                    delta_action_mask: tuple[bool, ...] | None = None) -> "NormStats":
        """states (N, S), action chunks (N, horizon, A) in robot units -> per-dimension mean and std
        (floored) of what the model sees: with a delta mask, the action stats are of chunk - state."""
        if delta_action_mask is not None:
            actions = to_relative(np.asarray(actions, np.float64), np.asarray(states, np.float64),
                                  np.asarray(delta_action_mask, np.float64))
        states = np.asarray(states, dtype=np.float64).reshape(-1, np.shape(states)[-1])
        actions = np.asarray(actions, dtype=np.float64).reshape(-1, np.shape(actions)[-1])
        # A constant dimension (e.g. an unused joint) gets std 1 rather than a division by ~0.
        floor = lambda s: np.where(s < 1e-3, 1.0, s)  # noqa: E731
        return cls(states.mean(0), floor(states.std(0)), actions.mean(0), floor(actions.std(0)))

    def to_dict(self) -> dict:
        return {k: getattr(self, k).tolist() for k in ("state_mean", "state_std", "action_mean", "action_std")}

    @classmethod
    def from_dict(cls, d: dict) -> "NormStats":
        return cls(**{k: np.asarray(d[k], dtype=np.float32) for k in ("state_mean", "state_std", "action_mean", "action_std")})

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2))

    @classmethod
    def load(cls, path: str | Path) -> "NormStats":
        return cls.from_dict(json.loads(Path(path).read_text()))


# -- delta actions (numpy arrays or torch tensors alike) ----------------------------------------------
def to_relative(actions, state, mask):
    """Absolute chunk (B, horizon, A), state (B, S), mask (A,) of 0/1 -> chunk with the masked
    dimensions made relative to the state at the chunk's start (every step of the chunk, as openpi)."""
    a = actions.shape[-1]
    return actions - mask * state[..., None, :a]


def to_absolute(actions, state, mask):
    """The inverse of `to_relative`."""
    a = actions.shape[-1]
    return actions + mask * state[..., None, :a]
