"""`mot pack` and `mot export`: the command-line entry points of policy/ (the top of its layering).

    mot pack   --checkpoint runs/tabletop/policy/checkpoint --out checkpoints/default
               [--sign keys/signing_key.pem]        manifest.sig: ed25519 signature of manifest.json (policy/signing.py)
    mot pack   --new-key keys                       keys/signing_key.pem (0600) + keys/signing_key.pub.pem
    mot export --checkpoint checkpoints/default [--out DIR] [--fp16] [--sign KEY]
               DIR/export_manifest.json: sha256 of every graph file (+ export_manifest.sig with --sign)
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np

from policy.checkpoint import checkpoint_id, load_checkpoint, save_checkpoint, storage_dtype
from policy.export import DEFAULT_OPSET, MANIFEST, export_policy, parity
from policy.model import MoTPolicy
from policy.errors import InputError
from policy.options import parse
from policy.runtime import PolicyRunner
from policy.signing import generate_key_pair, key_id, load_private_key


# -- mot pack ----------------------------------------------------------------------------------------
@dataclass
class PackConfig:
    checkpoint: Path | None = None
    """the policy checkpoint to pack (required unless only --new-key is given)"""
    out: Path | None = None
    """the packed checkpoint directory (replaced atomically)"""
    dtype: Literal["float32", "float16", "bfloat16", "int8"] = "int8"
    """storage dtype (int8: weight-only, one scale per output row; what keeps the checkpoint under 25 MB)"""
    sign: Path | None = None
    """ed25519 private key (PEM) to sign manifest.json with: writes manifest.sig inside the checkpoint (robots given
    the public key refuse anything else); an encrypted key's passphrase comes from $MOT_SIGNING_KEY_PASSPHRASE"""
    new_key: Path | None = None
    """write a new ed25519 key pair into this directory (signing_key.pem, mode 0600, and signing_key.pub.pem, the
    file robots get) and stop, or, with --checkpoint/--out and no --sign, pack signed with the new key"""

    def __post_init__(self):
        if self.new_key is None and (self.checkpoint is None or self.out is None):
            missing = [f"--{n}" for n in ("checkpoint", "out") if getattr(self, n) is None]
            raise InputError(f"pack: expected --checkpoint and --out (or --new-key DIR alone), received no "
                             f"{' or '.join(missing)}")
        if (self.checkpoint is None) != (self.out is None):
            raise InputError("pack: expected --checkpoint and --out together, received only "
                             f"{'--checkpoint' if self.out is None else '--out'}")


def make_key_pair(directory: str | Path) -> dict:
    """`mot pack --new-key DIR`: a new ed25519 signing key pair in DIR (see policy/signing.py)."""
    return generate_key_pair(directory)


def pack(cfg: PackConfig) -> dict:
    """Re-stores cfg.checkpoint at cfg.dtype under cfg.out, signed when cfg.sign (or a new key)
    is given; returns the JSON report."""
    report = {}
    sign = cfg.sign
    if cfg.new_key is not None:
        report["new_key"] = make_key_pair(cfg.new_key)
        if cfg.checkpoint is None:
            return report
        sign = sign or Path(report["new_key"]["private_key"])
    key = load_private_key(sign) if sign is not None else None  # a bad key fails before any work
    policy = load_checkpoint(cfg.checkpoint)
    out = save_checkpoint(policy, cfg.out, storage_dtype(cfg.dtype), signing_key=key)
    size = sum(f.stat().st_size for f in out.rglob("*") if f.is_file())
    return {"checkpoint": str(out), "dtype": cfg.dtype, "bytes": size, "id": checkpoint_id(out),
            "signed_by": key_id(key) if key is not None else None, **report, **packing_error(policy, out)}


def runner_difference(source: PolicyRunner, target: PolicyRunner, observations: int) -> tuple[float, float | None]:
    """The largest differences between two runners of one policy on seeded random observations with the same flow
    noise: (actions, robot units; target points, (u, v) units, or None for a policy without them)."""
    cfg, rng = source.config, np.random.default_rng(0)
    actions, points = 0.0, 0.0
    for i in range(observations):
        images = {c: rng.integers(0, 256, (cfg.image_size, cfg.image_size, 3), dtype=np.uint8) for c in cfg.cameras}
        state = rng.standard_normal(cfg.robot_state_dim).astype(np.float32) * 0.1
        noise = rng.standard_normal((cfg.horizon, cfg.action_dim)).astype(np.float32)
        words = ("put the red cube on the blue pad", "pick up the green cylinder")[i % 2]
        a, b = source.infer(images, state, words, noise=noise), target.infer(images, state, words, noise=noise)
        actions = max(actions, float(np.abs(a - b).max()))
        if cfg.target_points is not None:
            points = max(points, float(np.abs(source.last_points - target.last_points).max()))
    return actions, (points if cfg.target_points is not None else None)


def packing_error(policy: MoTPolicy, packed: Path, observations: int = 4) -> dict:
    """What packing changed: the largest action difference (robot units) and, for a policy that points, target-point
    difference (pixels) between the source and the packed checkpoint (`runner_difference`)."""
    actions, points = runner_difference(PolicyRunner(policy), PolicyRunner.from_checkpoint(packed), observations)
    return {"max_action_diff": round(actions, 6),
            **({"max_point_diff_px": round(points * policy.cfg.image_size, 4)} if points is not None else {})}


def pack_main(argv: list[str] | None = None) -> int:
    cfg = parse(PackConfig, argv, "mot pack", "Re-store a checkpoint at another dtype (what made checkpoints/default); "
                "--sign KEY signs it, --new-key DIR makes a key pair.")
    print(json.dumps(pack(cfg), indent=2))
    return 0


# -- mot export --------------------------------------------------------------------------------------
@dataclass
class ExportConfig:
    checkpoint: Path
    """checkpoint directory"""
    out: Path | None = None
    """output directory (default: <checkpoint>/onnx)"""
    opset: int = DEFAULT_OPSET
    """ONNX opset (the antialiased image resize needs >= 18)"""
    fp16: bool = False
    """fp16 weights and arithmetic (inputs and outputs stay fp32)"""
    parity: bool = True
    """check onnxruntime against torch after the export: each graph (and the target points) on random inputs, and
    whole sampled chunks through PolicyRunner with the same flow noise (actions and points)"""
    sign: Path | None = None
    """ed25519 private key (PEM) to sign export_manifest.json with (writes export_manifest.sig): a robot with a
    trusted key runs only signed graphs and never exports its own"""


def export_main(argv: list[str] | None = None) -> int:
    cfg = parse(ExportConfig, argv, "mot export", "Export a checkpoint to three ONNX graphs (text encoder, "
                "observation encoder, denoiser) with metadata and export_manifest.json (sha256 of every file; "
                "--sign KEY signs it).")
    key = load_private_key(cfg.sign) if cfg.sign is not None else None  # a bad key fails before the export
    policy = load_checkpoint(cfg.checkpoint)
    out = cfg.out or cfg.checkpoint / "onnx"
    paths = export_policy(policy, out, checkpoint_sha256=checkpoint_id(cfg.checkpoint), opset=cfg.opset, fp16=cfg.fp16,
                          signing_key=key)
    report = {"out": str(out), "graphs": {g: str(p) for g, p in paths.items()}, "manifest": str(out / MANIFEST),
              "signed_by": key_id(key) if key is not None else None,
              "checkpoint_sha256": checkpoint_id(cfg.checkpoint), "dtype": "float16" if cfg.fp16 else "float32"}
    if cfg.parity:
        report["parity_max_abs"] = {**parity(policy, out), **chunk_parity(policy, cfg.checkpoint, out)}
    print(json.dumps(report, indent=2))
    return 0


def chunk_parity(policy: MoTPolicy, checkpoint: Path, onnx_dir: Path, observations: int = 3) -> dict:
    """Whole sampled chunks through PolicyRunner, onnxruntime (the torch-free path: from the checkpoint directory and
    `onnx_dir`) vs torch (`runner_difference`): the largest action and target-point differences."""
    target = PolicyRunner.from_checkpoint(checkpoint, backend="onnxruntime", onnx_dir=onnx_dir, export_if_missing=False)
    actions, points = runner_difference(PolicyRunner(policy), target, observations)
    return {"chunk_actions": actions, **({"chunk_points": points} if points is not None else {})}
