"""A checkpoint's manifest, without torch: its format, its files' sha256, its signature, its identity.

    manifest.json   {"format": "mot-policy/2", "files": {name: sha256}, "pretrained": {...}, "inherited": [...],
                     "dtype": ..., "int8": [...]}
    manifest.sig    optional ed25519 signature of manifest.json's bytes (policy/signing.py)

policy/checkpoint.py writes checkpoints and loads their weights into a MoTPolicy (torch); this module is what
both it and the torch-free runtime (policy/spec.py) check before trusting anything in the directory.
"""

from __future__ import annotations

import json
from pathlib import Path

from policy.artifacts import sha256_bytes, sha256_file
from policy.errors import CheckpointError
from policy.signing import Ed25519PublicKey, verify_signature

FORMAT = "mot-policy/2"
# Formats this code refuses, with why: one line each, for the error message.
RETIRED_FORMATS = {
    "mot-policy/1": "a body fed by a separate pointer model (before the policy pointed itself, 2026-12); its body "
                    "attends to another vision expert, so it cannot be converted: retrain with `mot recipe run "
                    "recipes/tabletop.yaml` (or use git tag experiments-2026-11 to run it)",
}
FILES = ("model.safetensors", "config.json", "norm_stats.json")


def load_manifest(directory: str | Path, fmt: str, files: tuple[str, ...],
                  trusted: Ed25519PublicKey | None = None) -> tuple[dict, str, str | None]:
    """directory/manifest.json of format `fmt`, read once: its signature checked when `trusted` is given, then every
    file in `files` against its sha256. Returns (manifest, sha256 of the bytes checked, signing key id or None)."""
    directory = Path(directory)
    manifest_path = directory / "manifest.json"
    if not manifest_path.is_file():
        raise CheckpointError(f"checkpoint: expected {manifest_path}, it does not exist (not a checkpoint directory?)")
    data = manifest_path.read_bytes()
    signed_by = verify_signature(manifest_path, data, trusted) if trusted is not None else None
    try:
        manifest = json.loads(data)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"checkpoint: {manifest_path} is not valid JSON ({e})") from e
    if not isinstance(manifest, dict) or manifest.get("format") != fmt:
        got = manifest.get("format") if isinstance(manifest, dict) else type(manifest).__name__
        why = f": {RETIRED_FORMATS[got]}" if got in RETIRED_FORMATS else ""
        raise CheckpointError(f"checkpoint: expected format {fmt!r} in {manifest_path}, received {got!r}{why}")
    for name in files:
        path = directory / name
        if not path.is_file():
            raise CheckpointError(f"checkpoint: expected file {path}, it does not exist")
        expected, actual = manifest.get("files", {}).get(name), sha256_file(path)
        if expected != actual:
            raise CheckpointError(f"checkpoint: {path} is corrupted or modified: sha256 expected {expected}, "
                                  f"received {actual}")
    return manifest, sha256_bytes(data), signed_by


def read_manifest(directory: str | Path, fmt: str, files: tuple[str, ...],
                  trusted: Ed25519PublicKey | None = None) -> dict:
    """directory/manifest.json of format `fmt`, with every file in `files` checked against its sha256 (and the
    manifest's signature, when a `trusted` key is given)."""
    return load_manifest(directory, fmt, files, trusted)[0]


def verify_checkpoint_files(directory: str | Path, trusted: Ed25519PublicKey | None = None) -> tuple[dict, str, str | None]:
    """A policy checkpoint's manifest (format FORMAT, every file of FILES hashed; signed by `trusted` when given).
    Returns (manifest, checkpoint id = sha256 of the manifest bytes checked, signing key id or None)."""
    directory = Path(directory)
    if not directory.is_dir():
        raise CheckpointError(f"checkpoint: expected a checkpoint directory, {directory} "
                              f"{'is a file' if directory.exists() else 'does not exist'}")
    return load_manifest(directory, FORMAT, FILES, trusted)


def checkpoint_id(directory: str | Path) -> str:
    """The checkpoint's identity: sha256 of its manifest (which hashes every file)."""
    return sha256_file(Path(directory) / "manifest.json")


__all__ = ["FORMAT", "FILES", "RETIRED_FORMATS", "load_manifest", "read_manifest", "verify_checkpoint_files",
           "checkpoint_id"]
