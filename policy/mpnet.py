"""MPNet's differences from BERT, in torch: its embeddings and its relative position bias.

An MPNet layer computes what a post-LN BERT layer computes (policy/experts.py `BertExpert`), except that its
attention scores get a learned bias per head and relative-position bucket, the same in every layer
(`transformers.MPNetEncoder.compute_position_bias`). Its embeddings have no token types, and positions count
from padding_idx + 1 (= 2). all-mpnet-base-v2 (`mot models install mpnet`) is the supported checkpoint.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from policy.text import BertDims

PADDING_IDX = 1  # MPNet's <pad>; positions of real tokens start at PADDING_IDX + 1
MAX_DISTANCE = 128  # relative distances beyond this share the last (log-spaced) bucket


class MPNetEmbeddings(nn.Module):
    """word + position (from PADDING_IDX + 1), then LayerNorm; no token types."""

    def __init__(self, dims: BertDims):
        super().__init__()
        self.word = nn.Embedding(dims.vocab, dims.width)
        self.position = nn.Embedding(dims.max_positions, dims.width)
        self.norm = nn.LayerNorm(dims.width, eps=dims.eps)

    def forward(self, token_ids: torch.Tensor) -> torch.Tensor:
        """token_ids (B, L) -> (B, L, width). Padding (always at the end) gets positions too; it is never attended
        to, so the real tokens' states are the reference's (which gives padding position PADDING_IDX)."""
        positions = torch.arange(token_ids.shape[1], device=token_ids.device) + PADDING_IDX + 1
        return self.norm(self.word(token_ids) + self.position(positions)[None])


def relative_buckets(length: int, num_buckets: int) -> torch.Tensor:
    """(length, length) int64 bucket of key position minus query position: exact for |d| < num_buckets / 4,
    log-spaced up to MAX_DISTANCE, one half of the buckets per direction (T5 / MPNet bidirectional buckets)."""
    positions = torch.arange(length)
    n = -(positions[None, :] - positions[:, None])  # query - key
    half = num_buckets // 2
    bucket = (n < 0).long() * half
    n = n.abs()
    exact = half // 2
    large = exact + (torch.log(n.float().clamp(min=1) / exact) / math.log(MAX_DISTANCE / exact)
                     * (half - exact)).long()
    return bucket + torch.where(n < exact, n, large.clamp(max=half - 1))


class RelativePositionBias(nn.Module):
    """A learned (buckets, heads) table -> the additive attention bias (1, heads, L, L) of every layer."""

    def __init__(self, dims: BertDims, max_tokens: int):
        super().__init__()
        self.table = nn.Embedding(dims.relative_buckets, dims.heads)
        # Buckets for every length up to max_tokens, sliced per batch: no log in the exported text graph.
        self.register_buffer("buckets", relative_buckets(max_tokens, dims.relative_buckets), persistent=False)

    def forward(self, length: int) -> torch.Tensor:
        return self.table(self.buckets[:length, :length]).permute(2, 0, 1)[None]


# Our parameter name -> all-mpnet-base-v2's (without the "encoder.layer.{i}." prefix).
LAYER_KEYS = {
    "query": "attention.attn.q",
    "key": "attention.attn.k",
    "value": "attention.attn.v",
    "attn_out": "attention.attn.o",
    "attn_norm": "attention.LayerNorm",
    "ffn_in": "intermediate.dense",
    "ffn_out": "output.dense",
    "ffn_norm": "output.LayerNorm",
}
EMBED_KEYS = {
    "word": "embeddings.word_embeddings",
    "position": "embeddings.position_embeddings",
    "norm": "embeddings.LayerNorm",
}
BIAS_KEYS = {"table": "encoder.relative_attention_bias"}

__all__ = ["BIAS_KEYS", "EMBED_KEYS", "LAYER_KEYS", "MPNetEmbeddings", "RelativePositionBias", "relative_buckets"]
