"""The language modality in torch: the tokenizer's tensors, BERT/MPNet embeddings, pretrained weight loading,
and the text bridge.

Two ways the MoT's joint attention gets the instruction's keys and values (policy/model.py):

- Lined up (MiniLM, today's default): the language expert is one expert of every MoT layer, as wide and as deep
  as the vision and body experts' attention, and text K/V are its own q/k/v projections, layer by layer.
- Bridged (`vision_model` set, e.g. all-mpnet-base-v2 as the language expert with MiniLM-shaped vision/body
  layers): the pretrained encoder runs alone on the text (`LanguageEncoder`, exactly the reference model: text
  attends to text only, the blockwise mask), and `TextBridge` projects chosen layers' token states to the K/V
  that MoT layer j's joint attention reads, or `RetrievalBridge` (config.text_bridge "retrieval") looks each
  token up in a memory of trained tokens' K/V by the encoder's own similarity. The text runs once per
  instruction, so a bigger encoder costs nothing per observation or per denoising step: those passes see K/V
  of the MoT's own head shape.

Where the folders are, their dimensions and the tokenizer are torch-free (policy/text.py, re-exported here).
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from torch import nn

from policy.errors import InputError
from policy.experts import BertExpert, merge_heads, split_heads
from policy.mpnet import BIAS_KEYS, EMBED_KEYS as MPNET_EMBED_KEYS, LAYER_KEYS as MPNET_LAYER_KEYS
from policy.mpnet import MPNetEmbeddings, RelativePositionBias
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


KEY_TABLES = {"bert": (_EMBED_KEYS, _LAYER_KEYS), "mpnet": (MPNET_EMBED_KEYS, MPNET_LAYER_KEYS)}


def load_language_weights(folder: Path, dims: BertDims, embeddings: nn.Module | None, layers: list[BertExpert],
                          bias: nn.Module | None = None) -> None:
    """Copies a BERT or MPNet checkpoint into our modules, key by key, asserting every shape. embeddings None:
    the layers only (a vision expert initialised from a language model, as LMFusion does)."""
    sd = load_file(str(folder / "model.safetensors"))
    # HF BertForX / MPNetForX checkpoints prefix with "bert." / "mpnet."; the bare models do not.
    sd = {k.removeprefix("bert.").removeprefix("mpnet."): v for k, v in sd.items()}
    embed_keys, layer_keys = KEY_TABLES[dims.kind]

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

    for ours, theirs in (embed_keys.items() if embeddings is not None else ()):
        copy(embeddings, ours, theirs)
    for ours, theirs in (BIAS_KEYS.items() if bias is not None else ()):
        copy(bias, ours, theirs)
    for i, layer in enumerate(layers):
        for ours, theirs in layer_keys.items():
            copy(layer, ours, f"encoder.layer.{i}.{theirs}")


def load_bert_weights(folder: Path, embeddings: BertEmbeddings, layers: list[BertExpert]) -> None:
    """A BERT folder into the lined-up language expert (embeddings + the MoT layers' language experts)."""
    load_language_weights(folder, BertDims.from_folder(folder, len(layers)), embeddings, layers)


class LanguageEncoder(nn.Module):
    """A pretrained BERT or MPNet encoder run on the text alone (bridged mode): exactly the reference model.

    forward: token_ids (B, L), valid (B, L) -> the token states after each layer, a list of `layers` tensors
    (B, L, width). Only text attends to text here, so nothing else can change what the pretrained model computes.
    """

    def __init__(self, folder: Path, dims: BertDims, max_tokens: int):
        super().__init__()
        self.dims = dims
        self.embed = MPNetEmbeddings(dims) if dims.kind == "mpnet" else BertEmbeddings(dims)
        self.layers = nn.ModuleList(BertExpert(dims.width, dims.heads, dims.intermediate, dims.eps)
                                    for _ in range(dims.layers))
        self.bias = RelativePositionBias(dims, max_tokens) if dims.kind == "mpnet" else None
        load_language_weights(folder, dims, self.embed, list(self.layers), self.bias)
        self.requires_grad_(False)  # frozen: the pretrained model is the point

    def forward(self, token_ids: torch.Tensor, valid: torch.Tensor) -> list[torch.Tensor]:
        h = self.embed(token_ids)
        # Key padding as an additive mask (B, 1, 1, L); MPNet adds its relative position bias (1, heads, L, L).
        mask = torch.zeros(valid.shape, dtype=h.dtype, device=h.device).masked_fill(~valid, float("-inf"))[:, None, None]
        if self.bias is not None:
            mask = mask + self.bias(token_ids.shape[1])
        states = []
        for layer in self.layers:
            q, k, v, _ = layer.qkv(h)
            h = layer.finish(h, merge_heads(F.scaled_dot_product_attention(q, k, v, attn_mask=mask)))
            states.append(h)
        return states


def bridge_taps(language_layers: int, mot_layers: int) -> list[int]:
    """Which language layer's output each MoT layer reads: evenly spaced, ending at the last
    (12 -> 6: layers 2, 4, ..., 12, as 0-based indices 1, 3, ..., 11)."""
    return [round((j + 1) * language_layers / mot_layers) - 1 for j in range(mot_layers)]


class TextBridge(nn.Module):
    """Language token states -> the text K/V of every MoT layer: (layers, 2, B, heads, L, head_dim).

    MoT layer j reads language layer taps[j]'s output through its own key and value projections (trained in
    "align", then frozen with the vision expert). They are a learned stand-in for the K/V projections a
    lined-up language expert would apply at that layer.
    """

    def __init__(self, language_width: int, heads: int, head_dim: int, taps: list[int]):
        super().__init__()
        self.heads, self.taps = heads, list(taps)
        self.key = nn.ModuleList(nn.Linear(language_width, heads * head_dim) for _ in taps)
        self.value = nn.ModuleList(nn.Linear(language_width, heads * head_dim) for _ in taps)

    def forward(self, states: list[torch.Tensor]) -> torch.Tensor:
        kv = [torch.stack([split_heads(k(states[tap]), self.heads), split_heads(v(states[tap]), self.heads)])
              for tap, k, v in zip(self.taps, self.key, self.value)]
        return torch.stack(kv)


class RetrievalBridge(nn.Module):
    """Language token states -> the text K/V of every MoT layer by retrieval: (layers, 2, B, heads, L, head_dim).

    A memory of M tokens from training instructions: `keys` (M, W_lang), their states after the language model's
    last layer, unit length; `values` (M, layers * 2 * heads * head_dim), the text K/V that the policy was trained
    on for those tokens, in those sentences (training/bridge.py fills both). A token's K/V are the memory's values
    weighted by softmax(cosine(token, key) / temperature): a token the policy was trained on gets (almost) its own
    K/V back, a new word ("crimson") gets those of the trained tokens the pretrained model puts near it ("red").
    No linear map stands between the model's geometry and the MoT, so none can carry a new word somewhere the
    vision expert never looked. Dense over the memory (no top-k): two matmuls, exportable to ONNX and TensorRT.
    """

    def __init__(self, language_width: int, layers: int, heads: int, head_dim: int, memory: int, temperature: float):
        super().__init__()
        self.layers, self.heads, self.head_dim, self.temperature = layers, heads, head_dim, temperature
        self.register_buffer("keys", torch.zeros(memory, language_width))
        self.register_buffer("values", torch.zeros(memory, layers * 2 * heads * head_dim))

    def forward(self, states: list[torch.Tensor]) -> torch.Tensor:
        query = F.normalize(states[-1], dim=-1)  # (B, L, W_lang)
        weights = torch.softmax(query @ self.keys.T / self.temperature, dim=-1)  # (B, L, M)
        kv = (weights @ self.values).unflatten(-1, (self.layers, 2, self.heads, self.head_dim))  # (B, L, layers, 2, H, hd)
        return kv.permute(2, 3, 0, 4, 1, 5)


__all__ = ["BertDims", "BertEmbeddings", "LanguageEncoder", "RetrievalBridge", "TextBridge", "TextTokenizer", "bridge_taps",
           "default_language_model", "load_bert_weights", "load_language_weights", "resolve_language_model"]
