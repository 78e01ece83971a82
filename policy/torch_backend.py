"""The torch backend: MoTPolicy's own passes, eager, on numpy inputs. The reference every other backend is
compared against, and the only one that accepts `points=` (e.g. the simulator's truth in `mot eval --sim-points`).

policy/runtime.py builds it by name through a lazy reference (policy/lazy.py), so importing the runtime never
imports torch.
"""

from __future__ import annotations

import numpy as np
import torch

from policy.attention import Prefix
from policy.model import MoTPolicy


class TorchBackend:
    """Eager torch on the in-memory MoTPolicy (the policy.runtime.Backend protocol)."""

    name = "torch"

    def __init__(self, policy: MoTPolicy):
        self.policy = policy.eval()

    @torch.inference_mode()
    def encode_text(self, token_ids: np.ndarray, text_valid: np.ndarray) -> Prefix:
        return self.policy.encode_text(torch.from_numpy(token_ids), torch.from_numpy(text_valid))

    @torch.inference_mode()
    def encode_observation(self, images: np.ndarray, robot_state_norm: np.ndarray, text: Prefix,
                           points: np.ndarray | None = None):
        """-> (prefix, points (B, 4 * cams) float32 or None, confidence (B, 2 * cams) float32 or None)."""
        given = None if points is None else torch.from_numpy(np.ascontiguousarray(points, dtype=np.float32))
        prefix, pointed, confidence = self.policy.observe(torch.from_numpy(images), torch.from_numpy(robot_state_norm),
                                                          text, given)
        as_np = lambda x: None if x is None else x.numpy().astype(np.float32)  # noqa: E731
        return prefix, as_np(pointed), as_np(confidence)

    @torch.inference_mode()
    def denoise(self, x_t: np.ndarray, t: float, prefix: Prefix) -> np.ndarray:
        x = torch.from_numpy(np.ascontiguousarray(x_t, dtype=np.float32))
        return self.policy.denoise(x, torch.full((x.shape[0],), t), prefix).numpy()


__all__ = ["TorchBackend"]
