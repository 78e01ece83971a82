"""The training losses of the two stages, one `StageLoss` module per stage (so DDP can wrap it).

align:  the policy's `GroundingHead` (policy/grounding.py) on the vision expert's final image tokens: where the
        instruction's object and pad are on the table (x, y in decimetres, smooth L1), which image tokens
        show them (cross-entropy against the cells the scene tracks say show them), and where in its cell
        (smooth L1 of the in-cell offset).
policy: the flow-matching loss of MoTPolicy (language and vision frozen; the prefix may come from the
        prefix cache).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from policy import MoTPolicy
from policy.inputs import validate_batch

PIXEL_KEYS = ("target_object_pixels", "target_pad_pixels")  # order of GroundingHead's scores


def grounding_targets(batch: dict) -> torch.Tensor:
    """(B, 4) object xy + pad xy in decimetres (NaN where the episode has no pad)."""
    g = batch["grounding"]
    return torch.from_numpy(np.concatenate([g["target_object_pos"][:, :2], g["target_pad_pos"][:, :2]], 1) * 10)


def pixel_cells(pixels: np.ndarray, grid: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Image positions (B, cams, 2) as (u, v) in [0, 1] -> where they fall among the image tokens:
    (sample, camera) indices of the points inside an image, their token index (camera, row, column
    order) and their (du, dv) offset from that cell's centre in cells, in [-0.5, 0.5)."""
    with np.errstate(invalid="ignore"):
        inside = ((pixels >= 0) & (pixels < 1)).all(-1)  # NaN (unknown) compares False: not inside
    bi, ci = np.nonzero(inside)
    scaled = pixels[bi, ci] * grid  # (n, 2) = (column, row) in cells
    cell = scaled.astype(np.int64)
    token = ci * grid * grid + cell[:, 1] * grid + cell[:, 0]
    return bi, ci, token, (scaled - cell - 0.5).astype(np.float32)


def cell_targets(pixels: np.ndarray, grid: int) -> torch.Tensor:
    """Image positions (B, cams, 2) in [0, 1] -> (B, cams * grid**2) target distribution over the image
    tokens (token order: camera, row, column), uniform over the cells that show the point in any
    camera; all zeros where none does (NaN, or outside the image)."""
    b, cams, _ = pixels.shape
    target = np.zeros((b, cams * grid * grid), np.float32)
    bi, _, token, _ = pixel_cells(pixels, grid)
    target[bi, token] = 1.0
    total = target.sum(1, keepdims=True)
    return torch.from_numpy(np.divide(target, total, out=np.zeros_like(target), where=total > 0))


def xy_loss(xy: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Smooth L1 between (B, 4) predictions and targets in decimetres, where the target is known."""
    known = torch.isfinite(target)
    if not known.any():  # e.g. a dataset without positions: no term (and no NaN)
        return xy.sum() * 0.0
    return F.smooth_l1_loss(xy[known], target[known])


class StageLoss(nn.Module):
    """forward(batch) -> the stage's scalar loss. The grounding head is the policy's (`policy.grounding`), so the
    align stage's checkpoint points as the policy will."""

    def __init__(self, policy: MoTPolicy, stage: str):
        super().__init__()
        self.policy, self.stage = policy, stage

    def grounding(self, batch: dict) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """-> token scores (B, N_image, 2), token offsets (B, N_image, 2, 2), (object xy, pad xy) in
        decimetres (B, 4)."""
        obs = validate_batch(batch, self.policy.cfg)
        # The language expert is frozen: lined up, its K/V need no graph. Bridged, the text bridge trains in align.
        bridge = self.policy.text_bridge if self.policy.cfg.bridged else None
        with torch.set_grad_enabled(bridge is not None and any(p.requires_grad for p in bridge.parameters())):
            text = self.policy.encode_text(*self.policy.tokenizer(obs.instruction))
        _, image_h = self.policy.encode_images(obs.images, text, return_hidden=True)
        return self.policy.grounding(image_h)

    def flow_loss(self, batch: dict, noise: torch.Tensor | None = None,
                  time: torch.Tensor | None = None) -> torch.Tensor:
        """The policy stage's flow-matching loss; the prefix from the PrefixCache when the batch has one."""
        if "prefix" in batch:
            return self.policy.flow_matching_loss(batch["prefix"], torch.from_numpy(batch["state"]),
                                                  torch.from_numpy(batch["actions"]), noise, time)
        return self.policy.compute_loss(batch, noise, time)

    def forward(self, batch: dict) -> torch.Tensor:
        if self.stage == "policy":
            return self.flow_loss(batch)
        scores, offsets, xy = self.grounding(batch)
        loss = xy_loss(xy, grounding_targets(batch))
        grid = self.policy.cfg.feature_grid
        for k, key in enumerate(PIXEL_KEYS):  # where the data says which cells show the object / pad:
            if key not in batch["grounding"]:
                continue
            # cross-entropy of the token scores against the cells that show it,
            dist = cell_targets(batch["grounding"][key], grid)
            seen = dist.sum(1) > 0
            if seen.any():
                loss = loss - (dist[seen] * torch.log_softmax(scores[seen, :, k], dim=1)).sum(1).mean()
            # and, for each of those tokens, where in its cell (smooth L1 in half-cells).
            bi, _, token, offset = pixel_cells(batch["grounding"][key], grid)
            if len(bi):
                predicted = offsets[torch.from_numpy(bi), torch.from_numpy(token), k]
                loss = loss + F.smooth_l1_loss(2 * predicted, 2 * torch.from_numpy(offset))
        return loss
