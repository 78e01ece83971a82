"""`mot bridge-language`: give a trained policy another language expert, by fitting its text bridge.

A lined-up policy (MiniLM as one expert of every MoT layer) learned to point and act on MiniLM's text K/V.
Swapping in a bigger pretrained encoder (all-mpnet-base-v2) keeps everything else, the vision expert, the
grounding head and the body, and fits the new `TextBridge` so that it reproduces the old text K/V on the
*train* instructions:

    bridge_j(mpnet_states[tap_j]) ~= minilm_kv_j        (ridge regression per MoT layer j, keys and values)

The encoders tokenise alike (both WordPiece over BERT's uncased vocabulary; MPNet's ids are BERT's + 4), so
the token states pair up one to one. What the bridge cannot copy from MiniLM is MiniLM's geometry: a held-out
word ("crimson") lands where the *new* encoder puts it, near its train synonyms when that encoder knows it.
The ridge strength is chosen on train words too: fit without half of the train colour synonyms, score on
the instructions that use them. Nothing of the held-out split is read (tests/training/test_heldout_vocabulary.py).

    mot bridge-language --checkpoint checkpoints/default --language-model mpnet --out runs/bridged
    mot train --stage align --init runs/bridged/checkpoint ...   (optional: fine-tune bridge + vision)
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from policy.artifacts import atomic_write_json
from policy.checkpoint import load_checkpoint, save_checkpoint
from policy.errors import InputError
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
def paired_states(source: MoTPolicy, target: MoTPolicy, instructions: list[str]):
    """-> (per MoT layer j: the target encoder's tap_j token states (N, W_lang), the source's text K/V
    (N, 2, heads * head_dim)), over the valid tokens of instructions both tokenise to the same length."""
    src_ids, src_valid = source.tokenizer(instructions)
    dst_ids, dst_valid = target.tokenizer(instructions)
    same = (src_valid.sum(1) == dst_valid.sum(1))
    if int(same.sum()) < len(instructions) // 2:
        raise InputError(f"language_model: expected the new tokenizer to split most instructions like the old one, "
                         f"{int(same.sum())} of {len(instructions)} agree")
    kv = source.encode_text(src_ids[same], src_valid[same]).kv  # (layers, 2, B, heads, L, hd)
    layers, two, b, heads, length, hd = kv.shape
    kv = kv.permute(0, 2, 4, 1, 3, 5).reshape(layers, b, length, two, heads * hd)
    states = target.language(dst_ids[same], dst_valid[same])
    valid = src_valid[same]
    words = [instructions[i] for i in np.flatnonzero(same.numpy())]
    return [(states[tap][:, :length][valid], kv[j][valid]) for j, tap in enumerate(target.text_bridge.taps)], valid, words


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
    second = {synonyms[1] for synonyms in COLOR_WORDS["train"].values()}
    held_rows = torch.tensor([any(w in second for w in text.replace(",", " ").split()) for text in instructions])
    token_rows = held_rows[:, None].expand_as(valid)[valid]
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


def bridged_policy(source: MoTPolicy, language_model: str, instructions: list[str]) -> tuple[MoTPolicy, dict]:
    """`source` (lined up) with `language_model` as its language expert and a fitted bridge -> (policy, report)."""
    cfg = source.cfg
    if cfg.bridged or cfg.routing != "mot":
        raise InputError(f"checkpoint: expected a lined-up MoT policy (vision_model None, routing 'mot'), received "
                         f"vision_model={cfg.vision_model!r} routing={cfg.routing!r}")
    new_cfg = dataclasses.replace(cfg, language_model=language_model, language_layers=None,
                                  vision_model=cfg.language_model or "minilm", vision_layers=cfg.language_layers)
    target = MoTPolicy(new_cfg, source.norm_stats)
    keep = {k: v for k, v in source.state_dict().items()
            if not k.startswith("text_embed.") and not (k.startswith("layers.") and k.split(".")[2] == "language")}
    missing = set(target.state_dict()) - set(keep) - {k for k in target.state_dict()
                                                       if k.startswith(("language.", "text_bridge."))}
    if missing:
        raise InputError(f"checkpoint: the bridged model has tensors the source lacks: {sorted(missing)[:5]}")
    target.load_state_dict(keep, strict=False)
    pairs, valid, words = paired_states(source, target, instructions)
    strength, errors = choose_strength(pairs, valid, words)
    fitted = []
    with torch.no_grad():
        for j, (x, y) in enumerate(pairs):
            for part, proj in enumerate((target.text_bridge.key[j], target.text_bridge.value[j])):
                w, b = ridge(x, y[:, part], strength)
                proj.weight.copy_(w.T)
                proj.bias.copy_(b)
                fitted.append(float(((x @ w + b - y[:, part]) ** 2).sum() / ((y[:, part] - y[:, part].mean(0)) ** 2).sum()))
    report = {"instructions": len(words), "tokens": int(valid.sum()), "ridge": strength,
              "unseen_synonym_relative_error": errors, "fit_relative_error_per_layer_kv": fitted}
    return target.eval(), report


@dataclass
class BridgeConfig:
    """Swap a trained policy's language expert: fit the new text bridge to the old text K/V (train words)."""

    checkpoint: str = "checkpoints/default"  # a lined-up checkpoint (MiniLM as its language expert)
    out: str = "runs/bridged"  # writes OUT/checkpoint and OUT/bridge.json
    language_model: str = "mpnet"  # the new language expert: "mpnet", "minilm" or a BERT/MPNet folder
    instructions: int = 3000  # distinct train-split instructions to fit on
    seed: int = 0


def bridge_language(cfg: BridgeConfig) -> dict:
    """Writes OUT/checkpoint (the bridged policy) and OUT/bridge.json (the fit's report); returns the report."""
    source = load_checkpoint(cfg.checkpoint)
    policy, report = bridged_policy(source, cfg.language_model, train_instructions(cfg.instructions, cfg.seed))
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
