"""Grounding: which image tokens show the instruction's object and pad, and where in the image they are.

Part of MoTPolicy (`policy.grounding`): the align stage trains `GroundingHead` on the vision expert's final
image-token states (training/losses.py); in the same observation pass, `pointed_uv` turns its token scores
and in-cell offsets into image points, the (u, v) layout of the body's target points
(PolicyConfig.target_points, training/data.py `target_point_vector`): object per camera, then pad per
camera. Pointing is the intermediate step the policy generates on its way to actions.
"""

from __future__ import annotations

import torch
from torch import nn

from policy.errors import InputError


class GroundingHead(nn.Module):
    """Which image tokens show the instruction's object / pad, and where on the table they are.

    A score per image token and target (object, pad) pools the final image-token states (softmax over
    tokens); an MLP per target reads (x, y) in decimetres from its pool. Image tokens attend to the
    instruction (block-wise mask), so a token can only score high for the object the words name.
    Where the data says which cells show the object (SceneTrack pixels), the scores are supervised
    directly: one label per token instead of one number per image, and the token that shows the
    object must also say where in its cell it is (`offset`): a cell of the front camera spans several
    centimetres of table, so without it the image tokens need not carry the object's position any finer.
    The (x, y) MLPs are a training signal of the align stage; the policy's points come from scores + offsets.
    """

    def __init__(self, width: int):
        super().__init__()
        self.score = nn.Linear(width, 2)
        self.offset = nn.Linear(width, 4)  # (object, pad) x (du, dv), in cells from the cell's centre
        self.xy = nn.ModuleList([nn.Sequential(nn.Linear(width, 256), nn.GELU(), nn.Linear(256, 2)) for _ in range(2)])

    def forward(self, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """h (B, N, W) -> token scores (B, N, 2), token offsets (B, N, 2, 2), (object xy, pad xy) (B, 4)."""
        scores = self.score(h)
        pooled = torch.einsum("bnk,bnw->bkw", torch.softmax(scores, dim=1), h)
        offsets = self.offset(h).unflatten(-1, (2, 2))
        return scores, offsets, torch.cat([mlp(pooled[:, k]) for k, mlp in enumerate(self.xy)], dim=1)


def pointed_uv(scores: torch.Tensor, offsets: torch.Tensor | None, cameras: int, grid: int) -> torch.Tensor:
    """Token scores (B, cams * grid^2, 2) and in-cell offsets (B, N, 2, 2) in cells (None: cell centres) ->
    target points (B, 4 * cams): (u, v) in [0, 1] of the object per camera, then of the pad per camera.

    Per camera and target, the top-scored token of that camera (token order: camera, row, column) and
    its offset: a hard choice, not a softmax average, which would put a point between two candidate
    objects. Tokens are scored jointly over cameras in training, so a camera that does not show the
    target still names its best guess; clipping keeps offsets inside the image.
    """
    b, n, _ = scores.shape
    if n != cameras * grid * grid:
        raise InputError(f"scores: expected {cameras} x {grid}x{grid} = {cameras * grid * grid} image tokens, "
                         f"received {n}")
    points = []
    for k in range(2):  # object, pad
        best = scores[..., k].reshape(b, cameras, grid * grid).argmax(dim=-1)  # (B, cams): token within its camera
        uv = torch.stack([best % grid, best // grid], dim=-1).float() + 0.5  # (B, cams, 2): (column, row) in cells
        if offsets is not None:
            token = best + torch.arange(cameras) * grid * grid  # (B, cams): index among all N image tokens
            uv = uv + torch.gather(offsets[:, :, k], 1, token[..., None].expand(-1, -1, 2))
        points.append((uv / grid).clamp(0.0, 1.0).reshape(b, 2 * cameras))
    return torch.cat(points, dim=1)


def point_confidence(scores: torch.Tensor, cameras: int) -> torch.Tensor:
    """Token scores (B, cams * grid^2, 2) -> (B, 2 * cams): per target (object, then pad) and camera, the
    softmax probability of the token `pointed_uv` picks among that camera's tokens. Low where the camera
    does not show the target or the words fit several objects; the ROS node reports it."""
    b, n, _ = scores.shape
    probs = torch.softmax(scores.reshape(b, cameras, n // cameras, 2), dim=2)  # per camera, per target
    return probs.amax(dim=2).transpose(1, 2).reshape(b, 2 * cameras)
