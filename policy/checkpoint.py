"""Checkpoints: a directory written atomically, verified on load.

    model.safetensors   trained weights only (the frozen pretrained weights come from installed packages)
    config.json         PolicyConfig
    norm_stats.json     state/action normalisation statistics
    manifest.json       format, sha256 of each file above, sha256 of the pretrained sources, the
                        "inherited" vision tensors (still equal to the language copy they started as,
                        rebuilt on load instead of stored) and the storage dtype

Weights may be stored as float16 (`dtype=torch.float16`, what the shipped checkpoint uses to stay
small); they are loaded back into float32 parameters.

The directory is assembled under a temporary name in the same parent and renamed into place, so a
crash never leaves a half-written checkpoint under the real name. `load_checkpoint` refuses a
checkpoint whose files do not match the manifest, whose weights do not fit its config, or whose
pretrained sources differ from those installed (the frozen experts would silently change).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from policy.config import PolicyConfig
from policy.language import sha256_file
from policy.normalize import NormStats
from policy.vision import default_trunk_weights

FORMAT = "mot-policy/1"
FILES = ("model.safetensors", "config.json", "norm_stats.json")


class CheckpointError(ValueError):
    """A checkpoint directory that cannot be trusted (missing file, bad hash, shape mismatch)."""


def _external_keys(policy) -> set[str]:
    """State-dict keys loaded from installed packages and never trained: not stored in checkpoints."""
    keys = set()
    for name, _ in policy.state_dict().items():
        is_language_expert = name.startswith("layers.") and name.split(".")[2] == "language"
        if name.startswith(("trunk.", "text_embed.")) or is_language_expert:
            keys.add(name)
    return keys


def _inherited_keys(policy) -> list[str]:
    """Vision-expert tensors still bit-identical to the language tensors they were copied from."""
    sd = policy.state_dict()
    return sorted(k for k, v in sd.items() if k.startswith("layers.") and k.split(".")[2] == "vision"
                  and torch.equal(v, sd[k.replace(".vision.", ".language.", 1)]))


def pretrained_sources(policy) -> dict[str, str]:
    return {
        "language_model.sha256": sha256_file(policy.language_folder / "model.safetensors"),
        "vision_trunk.sha256": sha256_file(default_trunk_weights()),
    }


def checkpoint_id(directory: str | Path) -> str:
    """The checkpoint's identity: sha256 of its manifest (which hashes every file)."""
    return sha256_file(Path(directory) / "manifest.json")


def _fsync_write(path: Path, data: bytes) -> None:
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def save_checkpoint(policy, directory: str | Path, dtype: torch.dtype = torch.float32) -> Path:
    if dtype not in (torch.float32, torch.float16, torch.bfloat16):
        raise ValueError(f"dtype: expected torch.float32, float16 or bfloat16, received {dtype}")
    directory = Path(directory)
    directory.parent.mkdir(parents=True, exist_ok=True)
    inherited = _inherited_keys(policy) if policy.cfg.routing == "mot" else []
    skip = _external_keys(policy) | set(inherited)
    weights = {k: v.detach().to(dtype if v.is_floating_point() else v.dtype).contiguous().cpu()
               for k, v in policy.state_dict().items() if k not in skip}
    tmp = Path(tempfile.mkdtemp(prefix=f".{directory.name}.tmp-", dir=directory.parent))
    try:
        save_file(weights, str(tmp / "model.safetensors"))
        _fsync_write(tmp / "config.json", json.dumps(policy.cfg.to_dict(), indent=2).encode())
        _fsync_write(tmp / "norm_stats.json", json.dumps(policy.norm_stats.to_dict(), indent=2).encode())
        manifest = {"format": FORMAT, "files": {name: sha256_file(tmp / name) for name in FILES},
                    "pretrained": pretrained_sources(policy), "inherited": inherited, "dtype": str(dtype)}
        _fsync_write(tmp / "manifest.json", json.dumps(manifest, indent=2).encode())
        # Swap into place: the old checkpoint (if any) is moved aside first and removed only after.
        old = None
        if directory.exists():
            old = directory.with_name(f".{directory.name}.old-{os.getpid()}")
            os.replace(directory, old)
        os.replace(tmp, directory)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return directory


def verify_checkpoint(directory: str | Path) -> dict:
    """Checks the files against the manifest; returns the manifest."""
    directory = Path(directory)
    manifest_path = directory / "manifest.json"
    if not manifest_path.is_file():
        raise CheckpointError(f"checkpoint: expected {manifest_path}, it does not exist (not a checkpoint directory?)")
    try:
        manifest = json.loads(manifest_path.read_text())
    except json.JSONDecodeError as e:
        raise CheckpointError(f"checkpoint: {manifest_path} is not valid JSON ({e})") from e
    if manifest.get("format") != FORMAT:
        raise CheckpointError(f"checkpoint: expected format {FORMAT!r}, received {manifest.get('format')!r}")
    for name in FILES:
        path = directory / name
        if not path.is_file():
            raise CheckpointError(f"checkpoint: expected file {path}, it does not exist")
        expected, actual = manifest["files"].get(name), sha256_file(path)
        if expected != actual:
            raise CheckpointError(f"checkpoint: {name} is corrupted or modified: sha256 expected {expected}, "
                                  f"received {actual}")
    return manifest


def load_checkpoint(directory: str | Path):
    from policy.model import MoTPolicy

    directory = Path(directory)
    manifest = verify_checkpoint(directory)
    cfg = PolicyConfig.from_json(directory / "config.json")
    policy = MoTPolicy(cfg, NormStats.load(directory / "norm_stats.json"))
    sources = pretrained_sources(policy)
    for key, expected in manifest.get("pretrained", {}).items():
        if sources.get(key) != expected:
            raise CheckpointError(f"checkpoint: trained against pretrained weights {key}={expected}, but the "
                                  f"installed ones have {sources.get(key)}; install the same package versions")
    weights = load_file(str(directory / "model.safetensors"))
    own = policy.state_dict()
    inherited = set(manifest.get("inherited", []))
    if not inherited <= set(own):
        raise CheckpointError(f"checkpoint: inherited tensors {sorted(inherited - set(own))[:5]} do not exist in "
                              "the model config.json describes")
    expected_keys = set(own) - _external_keys(policy) - inherited
    missing, unexpected = sorted(expected_keys - set(weights)), sorted(set(weights) - expected_keys)
    if missing or unexpected:
        raise CheckpointError(f"checkpoint: weights do not match config.json: missing {missing[:5]}, "
                              f"unexpected {unexpected[:5]}")
    for key, tensor in weights.items():
        if tensor.shape != own[key].shape:
            raise CheckpointError(f"checkpoint: {key} expected shape {tuple(own[key].shape)} from config.json, "
                                  f"received {tuple(tensor.shape)}")
    with torch.no_grad():
        policy.load_state_dict(weights, strict=False)
    policy.checkpoint_id = checkpoint_id(directory)
    return policy.eval()
