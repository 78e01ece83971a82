"""Experts: a transformer layer minus its attention.

An expert owns its norms, Q/K/V projections, output projection and FFN. Every expert exposes

    qkv(h, cond)           -> q, k, v (B, heads, L, head_dim), ctx
    finish(h, attn, ctx)   -> h'      attn: (B, L, heads * head_dim)

and the MoT layer runs one joint attention over the concatenated q/k/v of all experts in between.
Experts may differ in width but share `heads` and `head_dim`, so their q/k/v concatenate.

- `BertExpert`: a post-LN BERT layer, exactly as `transformers.BertLayer` computes it (the language
  expert, and the vision expert initialised from it as LMFusion does).
- `BodyExpert`: a pre-LN block with adaLN-Zero conditioning on the flow time (the action expert).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


def split_heads(x: torch.Tensor, heads: int) -> torch.Tensor:
    """(B, L, heads * head_dim) -> (B, heads, L, head_dim)."""
    b, n, d = x.shape
    return x.view(b, n, heads, d // heads).transpose(1, 2)


def merge_heads(x: torch.Tensor) -> torch.Tensor:
    """(B, heads, L, head_dim) -> (B, L, heads * head_dim)."""
    b, h, n, d = x.shape
    return x.transpose(1, 2).reshape(b, n, h * d)


def gelu_erf(x: torch.Tensor) -> torch.Tensor:
    """BERT's exact (erf) GELU, x * 0.5 * (1 + erf(x / sqrt 2)), equal to F.gelu within 3e-7.

    Written out in the order onnxruntime's GeluFusion matches: F.gelu exports as x * (0.5 * (1 + erf)), which
    it leaves as five element-wise passes over every vision layer's (B, L, intermediate) activations; this
    form runs as one fused Gelu kernel.
    """
    return x * 0.5 * (1.0 + torch.erf(x / math.sqrt(2.0)))


class TanhGelu(nn.Module):
    """GELU, tanh approximation (F.gelu(approximate="tanh")), the body expert's activation.

    torch runs F.gelu. While exporting, the same function is written as 0.5x * (1 + tanh(sqrt(2/pi) x (1 + 0.044715
    x^2))), the order onnxruntime's FastGeluFusion matches (one FastGelu kernel on the CPU): the exporter's own
    form, x * (0.5 * (1 + tanh(...))) with a Pow, stays nine element-wise passes per body layer and Euler step.
    TensorRT fuses either form itself."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.onnx.is_in_onnx_export():
            inner = (x * 0.7978845608028654) * (1.0 + (x * 0.044715) * x)
            return (x * 0.5) * (1.0 + torch.tanh(inner))
        return F.gelu(x, approximate="tanh")


class BertExpert(nn.Module):
    """Post-LN BERT layer split around attention. Parameter names mirror `transformers.BertLayer`."""

    def __init__(self, width: int, heads: int, intermediate: int, eps: float = 1e-12):
        super().__init__()
        self.heads = heads
        self.query = nn.Linear(width, width)
        self.key = nn.Linear(width, width)
        self.value = nn.Linear(width, width)
        self.attn_out = nn.Linear(width, width)
        self.attn_norm = nn.LayerNorm(width, eps=eps)
        self.ffn_in = nn.Linear(width, intermediate)
        self.ffn_out = nn.Linear(intermediate, width)
        self.ffn_norm = nn.LayerNorm(width, eps=eps)

    def qkv(self, h: torch.Tensor, cond: torch.Tensor | None = None):
        # Post-LN: the residual stream is already normalised, so q/k/v read h directly.
        q, k, v = (split_heads(proj(h), self.heads) for proj in (self.query, self.key, self.value))
        return q, k, v, None

    def finish(self, h: torch.Tensor, attn: torch.Tensor, ctx=None) -> torch.Tensor:
        h = self.attn_norm(h + self.attn_out(attn))
        return self.ffn_norm(h + self.ffn_out(gelu_erf(self.ffn_in(h))))


class BodyExpert(nn.Module):
    """Pre-LN block whose norms are modulated by a per-token condition (adaLN-Zero, as DiT).

    cond: (B, L, cond_dim). Action tokens carry the flow-time embedding; the state token carries a
    learned "no time" embedding, so its K/V do not depend on t and can be cached per observation.
    The gates start at zero, so at initialisation the block is the identity.
    """

    def __init__(self, width: int, heads: int, head_dim: int, mlp_ratio: float, cond_dim: int):
        super().__init__()
        attn_dim = heads * head_dim
        self.heads = heads
        self.norm1 = nn.LayerNorm(width, elementwise_affine=False, eps=1e-6)
        self.qkv_proj = nn.Linear(width, 3 * attn_dim)
        self.attn_out = nn.Linear(attn_dim, width)
        self.norm2 = nn.LayerNorm(width, elementwise_affine=False, eps=1e-6)
        hidden = int(width * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(width, hidden), TanhGelu(), nn.Linear(hidden, width))
        self.ada = nn.Sequential(nn.SiLU(), nn.Linear(cond_dim, 6 * width))
        nn.init.zeros_(self.ada[1].weight)
        nn.init.zeros_(self.ada[1].bias)

    def qkv(self, h: torch.Tensor, cond: torch.Tensor):
        shift1, scale1, gate1, shift2, scale2, gate2 = self.ada(cond).chunk(6, dim=-1)
        x = self.norm1(h) * (1 + scale1) + shift1
        q, k, v = (split_heads(t, self.heads) for t in self.qkv_proj(x).chunk(3, dim=-1))
        return q, k, v, (gate1, shift2, scale2, gate2)

    def finish(self, h: torch.Tensor, attn: torch.Tensor, ctx) -> torch.Tensor:
        gate1, shift2, scale2, gate2 = ctx
        h = h + gate1 * self.attn_out(attn)
        return h + gate2 * self.mlp(self.norm2(h) * (1 + scale2) + shift2)
