"""`mot convert-pointer`: a mot-policy/1 checkpoint's pointer as a mot-policy/2 align checkpoint.

Before the policy pointed itself (2026-12), a target-points body got its points from a second model bundled
under `pointer/` (format mot-pointer/1): an image embedding, a vision expert on 8x8 image tokens and a
grounding head, trained by an 8x8 align run. Those are exactly the align stage's weights of today's one
model, so they convert; the old body does not (it attended to another vision expert's image tokens, so
checkpoint loading refuses mot-policy/1). The result is an align checkpoint: a body trains from it with

    mot convert-pointer --pointer OLD_CHECKPOINT/pointer --out runs/align_converted
    mot train --stage policy --init runs/align_converted ...

Everything the pointer's manifest says is checked first (format, file hashes, the pretrained sources the
vision expert was trained against); the vision tensors it never stored are the language copies the new model
starts with, as in any checkpoint.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch

from policy.checkpoint import (check_pretrained, expected_keys, load_manifest, load_weights, save_checkpoint,
                               STORAGE_DTYPES)
from policy.config import PolicyConfig
from policy.errors import CheckpointError
from policy.model import MoTPolicy
from policy.options import parse

POINTER_FORMAT = "mot-pointer/1"
POINTER_FILES = ("model.safetensors", "config.json")


def _pointer_key(key: str) -> bool:
    """What a pointer stored: image embedding, vision expert, grounding head (as `head.`)."""
    return key.startswith(("image_embed.", "grounding.")) or (key.startswith("layers.") and key.split(".")[2] == "vision")


def policy_from_pointer(directory: str | Path) -> MoTPolicy:
    """A mot-pointer/1 directory -> MoTPolicy (mot-policy/2 architecture) with its vision expert and grounding head;
    the body is freshly initialised (an align checkpoint's)."""
    directory = Path(directory)
    manifest = load_manifest(directory, POINTER_FORMAT, POINTER_FILES)[0]
    if not manifest.get("offsets", False):
        raise CheckpointError(f"pointer: {directory} predates the grounding head's in-cell offsets; expected a pointer "
                              "with offsets (every pointer packed since 2026-11)")
    policy = MoTPolicy(PolicyConfig.from_json(directory / "config.json"))
    check_pretrained(policy, manifest)
    # The pointer stored its head as `head.`; the policy's is `grounding.`. load_weights refuses missing or stray keys.
    own = {k.replace("grounding.", "head.", 1): v for k, v in policy.state_dict().items() if _pointer_key(k)}
    wanted = {k.replace("grounding.", "head.", 1) for k in expected_keys(policy, manifest) if _pointer_key(k)}
    weights = load_weights(directory, manifest, wanted, own)
    with torch.no_grad():
        policy.load_state_dict({k.replace("head.", "grounding.", 1): v for k, v in weights.items()}, strict=False)
    return policy.eval()


@dataclass
class ConvertConfig:
    """A mot-policy/1 checkpoint's bundled pointer (vision expert + grounding head) as a mot-policy/2 align
    checkpoint to train a body from."""

    pointer: Path
    """the pointer directory (OLD_CHECKPOINT/pointer, format mot-pointer/1)"""
    out: Path
    """the align checkpoint to write (atomically)"""
    dtype: Literal["float32", "float16", "int8"] = "float32"
    """storage dtype of the written checkpoint"""


def main(argv: list[str] | None = None) -> int:
    cfg = parse(ConvertConfig, argv, prog="mot convert-pointer", description=ConvertConfig.__doc__)
    policy = policy_from_pointer(cfg.pointer)
    path = save_checkpoint(policy, cfg.out, dtype=STORAGE_DTYPES[cfg.dtype])
    print(f"align checkpoint (vision expert + grounding head of {cfg.pointer}): {path}")
    return 0
