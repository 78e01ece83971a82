"""Grounding: which image tokens show the instruction's object and pad, and where in the image they are.

Part of MoTPolicy (`policy.grounding`): the align stage trains `GroundingHead` on the vision expert's final
image-token states (training/losses.py); in the same observation pass, `pointed_uv` turns its token scores
and in-cell offsets into image points, the (u, v) layout of the body's target points
(PolicyConfig.target_points, training/data.py `target_point_vector`): object per camera, then pad per
camera. Pointing is the intermediate step the policy generates on its way to actions.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from policy.attention import attention_bias
from policy.errors import InputError


class PixelMatch(nn.Module):
    """A second score per image token and target: do the cell's own pixels look like what the words name?

    The vision expert's tokens come from an ImageNet trunk whose features keep shape better than hue: the shipped
    head's misses on train words are nearly all the right shape in the wrong colour (docs/experiments.md, "Align on
    more scenes"). This path compares the words with the raw pixels of each token's cell instead:

        pixels (B * cams, 3, S, S) -> 1x1 conv (3 -> P) + GELU per pixel -> mean and max over each cell's T x T
        pixels -> Linear(2P -> P): a descriptor per image token (B, cams * grid^2, P); the max keeps a small
        object's colour, which the mean washes into the table's
        text values (B, L, W_text) -> per target, a learned query attends over the valid text tokens -> MLP ->
        (B, 2, P); score (B, N, 2) = descriptor . query / sqrt(P)

    The MLP's last layer starts at zero, so a head that gains this path scores exactly as before until it trains.
    """

    def __init__(self, width: int, text_width: int, cameras: int, cell: int):
        super().__init__()
        self.cameras, self.cell = cameras, cell
        self.pixel = nn.Conv2d(3, width, 1)
        self.describe_cells = nn.Linear(2 * width, width)
        self.query = nn.Parameter(torch.randn(2, text_width) * 0.02)  # (object, pad)
        self.text = nn.Sequential(nn.Linear(text_width, width), nn.GELU(), nn.Linear(width, width))
        nn.init.zeros_(self.text[-1].weight)
        nn.init.zeros_(self.text[-1].bias)

    def describe(self, pixels: torch.Tensor) -> torch.Tensor:
        """pixels (B * cams, 3, S, S) normalised -> cell descriptors (B, cams * (S / cell)^2, P), token order."""
        x = F.gelu(self.pixel(pixels))
        pooled = torch.cat([F.avg_pool2d(x, self.cell), F.max_pool2d(x, self.cell)], dim=1)  # (B * cams, 2P, g, g)
        n, c, g, _ = pooled.shape
        return self.describe_cells(pooled.flatten(2).transpose(1, 2).reshape(n // self.cameras, self.cameras * g * g, c))

    def forward(self, pixels: torch.Tensor, text: torch.Tensor, text_valid: torch.Tensor) -> torch.Tensor:
        """pixels (B * cams, 3, S, S), text values (B, L, W_text), text_valid (B, L) bool -> scores (B, N, 2)."""
        logits = (text @ self.query.T).transpose(1, 2) / math.sqrt(text.shape[-1])  # (B, 2, L)
        # Key padding: a padded text position never shapes the query ([CLS] is always valid, so no row is empty).
        logits = logits + attention_bias(text_valid[:, None, :], logits.dtype)
        query = self.text(torch.softmax(logits, dim=-1) @ text)  # (B, 2, P); matmuls, not Einsum: TensorRT-parsable
        cells = self.describe(pixels)
        return cells @ query.transpose(1, 2) / math.sqrt(cells.shape[-1])  # (B, N, 2)


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
    `pixels` (PixelMatch, config.grounding_pixels) adds a score from each cell's raw pixels and the words.
    """

    def __init__(self, width: int):
        super().__init__()
        self.score = nn.Linear(width, 2)
        self.offset = nn.Linear(width, 4)  # (object, pad) x (du, dv), in cells from the cell's centre
        self.xy = nn.ModuleList([nn.Sequential(nn.Linear(width, 256), nn.GELU(), nn.Linear(256, 2)) for _ in range(2)])
        self.pixels: PixelMatch | None = None  # MoTPolicy.set_grounding_pixels

    def forward(self, h: torch.Tensor, pixels: torch.Tensor | None = None, text: torch.Tensor | None = None,
                text_valid: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """h (B, N, W) [+ with a pixel path: pixels (B * cams, 3, S, S), text values (B, L, W_text), text_valid
        (B, L)] -> token scores (B, N, 2), token offsets (B, N, 2, 2), (object xy, pad xy) (B, 4)."""
        scores = self.score(h)
        if self.pixels is not None:
            if pixels is None or text is None or text_valid is None:
                raise InputError("grounding: this head has a pixel path and needs pixels, text and text_valid, "
                                 f"received pixels={pixels is not None} text={text is not None} "
                                 f"text_valid={text_valid is not None}")
            scores = scores + self.pixels(pixels, text, text_valid)
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
