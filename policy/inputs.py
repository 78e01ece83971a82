"""Validation of observations and training batches as torch tensors: MoTPolicy's view of policy/validation.py.

The checks and their messages are policy/validation.py's (numpy, shared with the torch-free runtime); this
module only hands the validated arrays to torch without a copy (`torch.from_numpy`).

    batch = {
        "images": {camera: uint8 (B, H, W, 3)},   exactly the checkpoint's cameras
        "state": float32 (B, S),                   finite
        "instruction": list[str] (B),              non-empty, at most max_text_tokens tokens
        "actions": float32 (B, horizon, A),        training only; finite
    }
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from policy.config import PolicyConfig
from policy.validation import validate_arrays


@dataclass
class Observation:
    """A validated batch as (CPU) tensors. images: uint8 (B, cams, H, W, 3) in `cameras` order."""

    images: torch.Tensor
    state: torch.Tensor  # float32 (B, S), robot units
    instruction: list[str]
    actions: torch.Tensor | None = None  # float32 (B, horizon, A), robot units

    @property
    def batch_size(self) -> int:
        return self.state.shape[0]


def validate_batch(batch: dict, cfg: PolicyConfig, *, require_actions: bool = False,
                   state_dim: int | None = None) -> Observation:
    """policy.validation.validate_arrays (same arguments, same errors) -> tensors sharing the arrays' memory."""
    arrays = validate_arrays(batch, cfg, require_actions=require_actions, state_dim=state_dim)
    actions = None if arrays.actions is None else torch.from_numpy(arrays.actions)
    return Observation(torch.from_numpy(arrays.images), torch.from_numpy(arrays.state), arrays.instruction, actions)


__all__ = ["Observation", "validate_batch"]
