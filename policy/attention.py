"""The pieces of joint attention and flow sampling that MoTPolicy (policy/model.py) is built from.

Prefix (the cached K/V of earlier modality blocks), make_attn_mask (the block-causal mask, with a worked
example) and attention_bias (the additive form every layer shares), pool_matrix (the body's pooled image grid),
the flow-time embedding, and the Euler sampler shared by every backend (policy/sampling.py, torch-free:
re-exported here for the model).
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F

from policy.sampling import euler_sample

# Modality blocks, in token order. Block ids feed `make_attn_mask`.
TEXT, IMAGE, STATE, ACTION = 0, 1, 2, 3


class Prefix(NamedTuple):
    """Cached keys/values of every token before the ones being computed.

    kv:    (layers, 2, B, heads, L, head_dim)   2 = (key, value)
    valid: (B, L) bool                           False for text padding; such keys are never attended
    token_ids, text_valid: (B, L_text) kept only for the bidirectional-prefix ablation, whose image
                  pass must recompute the text (its text K/V depend on the images)
    """

    kv: torch.Tensor
    valid: torch.Tensor
    token_ids: torch.Tensor | None = None
    text_valid: torch.Tensor | None = None

    def extend(self, kv: torch.Tensor, valid: torch.Tensor) -> "Prefix":
        return self._replace(kv=torch.cat([self.kv, kv], dim=4), valid=torch.cat([self.valid, valid], dim=1))


def make_attn_mask(blocks: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Block-causal attention mask over modality blocks, with key padding.

    blocks: (L,) int   block id of each token, non-decreasing (TEXT=0, IMAGE=1, STATE=2, ACTION=3)
    valid:  (B, L) bool  False marks padding
    returns (B, 1, L, L) bool, True = query may attend to key:
        mask[b, 0, q, k] = blocks[k] <= blocks[q] and valid[b, k]

    Worked example, blocks = [0 0 | 1 | 2 | 3 3] (two text, one image, state, two actions):

        query\\key  t t i s a a
        t           1 1 0 0 0 0     text sees only text: the frozen language expert computes exactly
        t           1 1 0 0 0 0     what the pretrained model does, and its K/V cache per instruction
        i           1 1 1 0 0 0     images see text + images (not state: body weights never reach them)
        s           1 1 1 1 0 0     state sees the whole observation
        a           1 1 1 1 1 1     actions see everything, including each other (bidirectional chunk)
        a           1 1 1 1 1 1

    With the bidirectional-prefix ablation, text and image share block 0 and see each other.
    """
    causal = blocks[None, :] <= blocks[:, None]  # (L_query, L_key)
    return causal[None, None] & valid[:, None, None, :]


def attention_bias(mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """A bool mask (True = query may attend to key), broadcastable to (B, heads, L_q, L_k) -> the additive bias
    of the same shape: 0 where allowed, the dtype's lowest finite value where not (a row with no key allowed
    would average its values instead of turning NaN).

    Built once per forward and shared by every layer. Given a bool mask, scaled_dot_product_attention
    converts it in each layer and its ONNX export guards each layer's attention weights against NaN
    (IsNaN + Where over B x heads x L_q x L_k): 12 of the observation graph's most expensive element-wise ops.
    """
    return torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill(~mask, torch.finfo(dtype).min)


def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """softmax(q k^T / sqrt(head_dim) + bias) v: q (B, heads, L_q, d), k and v (B, heads, L_k, d), bias broadcastable
    to (B, heads, L_q, L_k) -> (B, heads, L_q, d).

    torch runs F.scaled_dot_product_attention (its fused CPU/GPU kernels). While exporting, the same product is
    written out: the exporter's SDPA transposes K through Shape/Slice/Concat/Reshape/Transpose (9 nodes per layer),
    where q @ k^T is one MatMul that onnxruntime fuses with the transpose and the scale (FusedMatMul) and TensorRT
    reads as one matrix multiply."""
    if torch.onnx.is_in_onnx_export():
        scores = torch.matmul(q, k.transpose(-2, -1)) * (q.shape[-1] ** -0.5) + bias
        return torch.matmul(torch.softmax(scores, dim=-1), v)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=bias)


def pool_matrix(cams: int, grid: int, p: int) -> torch.Tensor | None:
    """(cams * (grid/p)^2, cams * grid^2) matrix whose row j averages the p x p image cells of pooled cell j, cells in
    (camera, row, column) order; None for p = 1. As a matmul the pooling is one small GEMM per K and V, where a
    mean over a p x p reshape exports to a strided ReduceMean (on the 8x8 grid, 2 % of the observation graph).
    Built with numpy from the config's ints, so an exported graph holds it as a constant."""
    if p == 1:
        return None
    g = grid // p
    cam, row, col = np.meshgrid(np.arange(cams), np.arange(grid), np.arange(grid), indexing="ij")
    pooled_cell = (cam * g * g + (row // p) * g + col // p).reshape(-1)  # (cams * grid^2,) each cell's pooled cell
    matrix = np.zeros((cams * g * g, cams * grid * grid), np.float32)
    matrix[pooled_cell, np.arange(cams * grid * grid)] = 1.0 / (p * p)
    return torch.from_numpy(matrix)


def posemb_sincos(t: torch.Tensor, dim: int, min_period: float = 4e-3, max_period: float = 4.0) -> torch.Tensor:
    """Sine-cosine embedding of scalar flow times t (B,) in [0, 1] -> (B, dim), as pi0 embeds time."""
    fraction = torch.linspace(0.0, 1.0, dim // 2, device=t.device, dtype=torch.float32)
    period = min_period * (max_period / min_period) ** fraction
    angle = t.float()[:, None] * (2 * math.pi / period)[None]
    return torch.cat([torch.sin(angle), torch.cos(angle)], dim=-1)


def cat_tokens(parts: list[torch.Tensor]) -> torch.Tensor:
    """Concatenate per-segment (B, heads, L_i, head_dim) along tokens; a single segment (every cached
    pass) is returned as is, so exported graphs carry no one-input Concat per layer."""
    return parts[0] if len(parts) == 1 else torch.cat(parts, dim=2)


__all__ = ["ACTION", "IMAGE", "STATE", "TEXT", "Prefix", "attend", "attention_bias", "cat_tokens", "euler_sample",
           "make_attn_mask", "pool_matrix", "posemb_sincos"]
