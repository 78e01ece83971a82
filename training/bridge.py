"""`mot bridge-language`: give a trained policy another language expert, by fitting its text bridge.

A lined-up policy (MiniLM as one expert of every MoT layer) learned to point and act on MiniLM's text K/V.
Swapping in a bigger pretrained encoder (all-mpnet-base-v2) keeps everything else, the vision expert, the
grounding head and the body, and fills the new text bridge from the old text K/V of *train* instructions.
The encoders tokenise alike (both WordPiece over BERT's uncased vocabulary; MPNet's ids are BERT's + 4), so
the token states pair up one to one.

- retrieval (default, RetrievalBridge): a memory of trained tokens, keyed by the new encoder's state of each
  token (last kept layer: 6 of 12), valued by the old text K/V of every MoT layer. A new word ("crimson")
  gets the K/V of the trained tokens the new encoder puts near it, so the new encoder's geometry decides.
- linear (TextBridge): bridge_j(mpnet_states[tap_j]) ~= minilm_kv_j by ridge regression per MoT layer j; the
  strength is chosen on train words (fit without half of the train colour synonyms, score on them). Measured
  worse on new words (docs/experiments.md): a linear map fitted on 16 colour words does not carry the 17th
  where the vision expert looks.

The report gives the K/V error on the left-out train synonyms' tokens (retrieval: memory filled without
their sentences). Nothing of the held-out split is read (tests/training/test_heldout_vocabulary.py).

    mot bridge-language --checkpoint checkpoints/default --language-model mpnet --out runs/bridged
    mot pack --checkpoint runs/bridged/checkpoint --dtype int8   (then mot eval / mot export as usual)
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F

from policy.artifacts import atomic_write_json
from policy.checkpoint import load_checkpoint, save_checkpoint
from policy.errors import InputError
from policy.language import RetrievalBridge
from policy.model import MoTPolicy
from policy.options import parse
from sim.language import COLOR_WORDS, COLORS, SHAPES, TASK_FAMILIES, TaskSpec, generate_instruction

RIDGES = (1e-3, 1e-2, 1e-1, 1.0, 10.0)  # x mean diagonal of the states' Gram matrix


def train_instructions(count: int, seed: int = 0) -> list[str]:
    """`count` distinct train-split instructions over every task, colour, shape and pad colour."""
    rng = np.random.default_rng(seed)
    specs = [TaskSpec(task, color, shape, pad if task in ("push", "place") else None)
             for task, color, shape, pad in itertools.product(TASK_FAMILIES, COLORS, SHAPES, COLORS) if pad != color]
    seen: dict[str, None] = {}
    for _ in range(count * 20):
        seen[generate_instruction(specs[rng.integers(len(specs))], "train", rng)] = None
        if len(seen) >= count:
            break
    return list(seen)


@torch.no_grad()
def paired_states(source: MoTPolicy, target: MoTPolicy, instructions: list[str], taps: list[int]):
    """-> (per tap: the target encoder's token states after that layer (N, W_lang); the source's text K/V of
    every MoT layer (N, layers, 2, heads * head_dim)), over the valid tokens of instructions both tokenise to
    the same length; their valid mask; those instructions."""
    src_ids, src_valid = source.tokenizer(instructions)
    dst_ids, dst_valid = target.tokenizer(instructions)
    same = (src_valid.sum(1) == dst_valid.sum(1))
    if int(same.sum()) < len(instructions) // 2:
        raise InputError(f"language_model: expected the new tokenizer to split most instructions like the old one, "
                         f"{int(same.sum())} of {len(instructions)} agree")
    kv = source.encode_text(src_ids[same], src_valid[same]).kv  # (layers, 2, B, heads, L, hd)
    layers, two, b, heads, length, hd = kv.shape
    kv = kv.permute(2, 4, 0, 1, 3, 5).reshape(b, length, layers, two, heads * hd)
    states = target.language(dst_ids[same], dst_valid[same])
    valid = src_valid[same]
    words = [instructions[i] for i in np.flatnonzero(same.numpy())]
    return [states[tap][:, :length][valid] for tap in taps], kv[valid], valid, words


def ridge(x: torch.Tensor, y: torch.Tensor, strength: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Least squares y ~= x @ w + b with an L2 penalty `strength` x mean diag(x'x) on w: (w (W, D), b (D,))."""
    mean_x, mean_y = x.mean(0), y.mean(0)
    xc, yc = (x - mean_x).double(), (y - mean_y).double()
    gram = xc.T @ xc
    penalty = strength * gram.diagonal().mean()
    w = torch.linalg.solve(gram + penalty * torch.eye(gram.shape[0], dtype=gram.dtype), xc.T @ yc).float()
    return w, mean_y - mean_x @ w


def choose_strength(pairs, valid: torch.Tensor, instructions: list[str]) -> tuple[float, dict]:
    """The ridge strength whose fit, without the instructions naming a second train colour synonym ("ruby",
    "jade", ...), best predicts those instructions' K/V (relative error, all layers): a word the fit never saw."""
    token_rows = second_synonym_rows(instructions, valid)
    errors = {}
    for strength in RIDGES:
        num = den = 0.0
        for x, y in pairs:
            for part in range(2):
                w, b = ridge(x[~token_rows], y[~token_rows, part], strength)
                target = y[token_rows, part]
                num += float(((x[token_rows] @ w + b - target) ** 2).sum())
                den += float(((target - target.mean(0)) ** 2).sum())
        errors[strength] = num / den
    return min(errors, key=errors.get), errors


def second_synonym_rows(instructions: list[str], valid: torch.Tensor) -> torch.Tensor:
    """(T,) bool over the valid tokens: those of instructions naming a second train colour synonym ("ruby",
    "jade", ...), the train words a fit leaves out to see how it treats a word it never saw."""
    second = {synonyms[1] for synonyms in COLOR_WORDS["train"].values()}
    rows = torch.tensor([any(w in second for w in text.replace(",", " ").replace(".", " ").split()) for text in instructions])
    return rows[:, None].expand_as(valid)[valid]


def fit_linear(target: MoTPolicy, pairs, valid: torch.Tensor, words: list[str]) -> dict:
    """Ridge-fit each MoT layer's key and value projections of a linear TextBridge; -> the fit's report."""
    strength, errors = choose_strength(pairs, valid, words)
    fitted = []
    with torch.no_grad():
        for j, (x, y) in enumerate(pairs):
            for part, proj in enumerate((target.text_bridge.key[j], target.text_bridge.value[j])):
                w, b = ridge(x, y[:, part], strength)
                proj.weight.copy_(w.T)
                proj.bias.copy_(b)
                fitted.append(float(((x @ w + b - y[:, part]) ** 2).sum() / ((y[:, part] - y[:, part].mean(0)) ** 2).sum()))
    return {"ridge": strength, "unseen_synonym_relative_error": errors, "fit_relative_error_per_layer_kv": fitted}


def fill_memory(bridge: RetrievalBridge, states: torch.Tensor, values: torch.Tensor, seed: int) -> torch.Tensor:
    """Fill a RetrievalBridge with `memory` of the tokens (states (T, W_lang), values (T, layers * 2 * H * hd)),
    drawn at random (seeded): -> the chosen rows (memory,)."""
    memory = bridge.keys.shape[0]
    if len(states) < memory:
        raise InputError(f"instructions: expected at least bridge_memory={memory} tokens to fill the memory, "
                         f"received {len(states)}")
    rows = torch.randperm(len(states), generator=torch.Generator().manual_seed(seed))[:memory]
    with torch.no_grad():
        bridge.keys.copy_(F.normalize(states[rows], dim=-1))
        bridge.values.copy_(values[rows])
    return rows


def unseen_word_error(bridge: RetrievalBridge, states: torch.Tensor, values: torch.Tensor, unseen: torch.Tensor) -> float:
    """Relative error of the K/V that `bridge`, filled without the `unseen` tokens' sentences, gives those tokens."""
    with torch.no_grad():
        got = bridge([states[unseen][None]]).permute(2, 4, 0, 1, 3, 5).flatten(-4)[0]  # (T_unseen, layers * 2 * H * hd)
    target = values[unseen]
    return float(((got - target) ** 2).sum() / ((target - target.mean(0)) ** 2).sum())


def fit_retrieval(source: MoTPolicy, target: MoTPolicy, instructions: list[str], seed: int) -> dict:
    """Fill the RetrievalBridge: keys from the new language model's last kept layer, values the source's text K/V
    (every MoT layer) of the same tokens; -> the fit's report (its error on a left-out train synonym first)."""
    (states,), kv, valid, words = paired_states(source, target, instructions, taps=[-1])  # (T, W_lang), (T, layers, 2, H * hd)
    values = kv.flatten(1)
    unseen = second_synonym_rows(words, valid)
    fill_memory(target.text_bridge, states[~unseen], values[~unseen], seed)
    left_out = unseen_word_error(target.text_bridge, states, values, unseen)
    rows = fill_memory(target.text_bridge, states, values, seed)
    seen = unseen_word_error(target.text_bridge, states, values, torch.isin(torch.arange(len(states)), rows))
    return {"memory": len(rows), "temperature": target.cfg.bridge_temperature,
            "unseen_synonym_relative_error": left_out, "memory_token_relative_error": seen}


def bridged_policy(source: MoTPolicy, language_model: str, instructions: list[str], bridge: str = "retrieval",
                   language_layers: int | None = 6, memory: int = 8192, temperature: float = 0.01,
                   seed: int = 0) -> tuple[MoTPolicy, dict]:
    """`source` (lined up) with `language_model` as its language expert and a fitted bridge -> (policy, report).
    retrieval: the language model's first `language_layers` layers, the last one looked up in a memory of
    `memory` trained tokens; linear: every layer, ridge-fitted projections."""
    cfg = source.cfg
    if cfg.bridged or cfg.routing != "mot":
        raise InputError(f"checkpoint: expected a lined-up MoT policy (vision_model None, routing 'mot'), received "
                         f"vision_model={cfg.vision_model!r} routing={cfg.routing!r}")
    retrieval = bridge == "retrieval"
    new_cfg = dataclasses.replace(cfg, language_model=language_model, vision_model=cfg.language_model or "minilm",
                                  language_layers=language_layers if retrieval else None,
                                  vision_layers=cfg.language_layers, text_bridge=bridge,
                                  bridge_memory=memory if retrieval else 0, bridge_temperature=temperature)
    target = MoTPolicy(new_cfg, source.norm_stats)
    keep = {k: v for k, v in source.state_dict().items()
            if not k.startswith("text_embed.") and not (k.startswith("layers.") and k.split(".")[2] == "language")}
    missing = set(target.state_dict()) - set(keep) - {k for k in target.state_dict()
                                                       if k.startswith(("language.", "text_bridge."))}
    if missing:
        raise InputError(f"checkpoint: the bridged model has tensors the source lacks: {sorted(missing)[:5]}")
    target.load_state_dict(keep, strict=False)
    if retrieval:
        report = fit_retrieval(source, target, instructions, seed)
    else:
        states, kv, valid, words = paired_states(source, target, instructions, target.text_bridge.taps)
        report = {"tokens": int(valid.sum()),
                  **fit_linear(target, [(x, kv[:, j]) for j, x in enumerate(states)], valid, words)}
    return target.eval(), {"bridge": bridge, "instructions": len(instructions), **report}


@dataclass
class BridgeConfig:
    """Swap a trained policy's language expert: fit the new text bridge to the old text K/V (train words)."""

    checkpoint: str = "checkpoints/default"  # a lined-up checkpoint (MiniLM as its language expert)
    out: str = "runs/bridged"  # writes OUT/checkpoint and OUT/bridge.json
    language_model: str = "mpnet"  # the new language expert: "mpnet", "minilm" or a BERT/MPNet folder
    instructions: int = 3000  # distinct train-split instructions to fit on
    bridge: Literal["retrieval", "linear"] = "retrieval"  # token lookup in a memory, or ridge-fitted projections
    language_layers: int = 6  # retrieval: the language model layers kept; the last one is looked up
    memory: int = 8192  # retrieval: trained tokens in the memory
    temperature: float = 0.01  # retrieval: softmax over cosine / this (0.01: less K/V error on a left-out synonym than 0.05)
    seed: int = 0


def bridge_language(cfg: BridgeConfig) -> dict:
    """Writes OUT/checkpoint (the bridged policy) and OUT/bridge.json (the fit's report); returns the report."""
    source = load_checkpoint(cfg.checkpoint)
    policy, report = bridged_policy(source, cfg.language_model, train_instructions(cfg.instructions, cfg.seed),
                                    cfg.bridge, cfg.language_layers, cfg.memory, cfg.temperature, cfg.seed)
    out = Path(cfg.out)
    save_checkpoint(policy, out / "checkpoint")
    atomic_write_json(out / "bridge.json", {"source": str(cfg.checkpoint), **report})
    return report


def main(argv: list[str] | None = None) -> int:
    cfg = parse(BridgeConfig, argv, prog="mot bridge-language", description=BridgeConfig.__doc__)
    print(json.dumps(bridge_language(cfg)), file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
