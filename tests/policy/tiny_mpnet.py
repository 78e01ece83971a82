"""A tiny random MPNet folder (config.json, model.safetensors, tokenizer.json) written by transformers itself: the
bridged language expert of the tests. Never downloaded; the tokenizer is MiniLM's (same WordPiece vocabulary as
all-mpnet-base-v2's, shifted ids aside), so tiny lined-up and bridged policies tokenise alike."""

import shutil
from pathlib import Path

import torch
import transformers

from policy.text import default_language_model


def write_tiny_mpnet(folder: Path, layers: int = 4, seed: int = 0) -> Path:
    """96 wide (12 heads x 8), `layers` deep, 32 relative buckets: a different width and depth from MiniLM's."""
    torch.manual_seed(seed)
    cfg = transformers.MPNetConfig(vocab_size=30527, hidden_size=96, num_hidden_layers=layers, num_attention_heads=12,
                                   intermediate_size=192, max_position_embeddings=130, relative_attention_num_buckets=32)
    transformers.MPNetModel(cfg, add_pooling_layer=False).save_pretrained(folder, safe_serialization=True)
    shutil.copy(default_language_model() / "tokenizer.json", folder / "tokenizer.json")
    return folder
