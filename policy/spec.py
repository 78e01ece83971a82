"""PolicySpec: what a runtime knows about a policy without its torch weights.

    spec = PolicySpec.from_checkpoint("checkpoints/default", trusted)   # no torch: config, norm stats, identity
    spec = PolicySpec.of(policy)                                        # an in-memory MoTPolicy (torch)

The onnxruntime and TensorRT backends run graphs exported from a checkpoint (policy/graphs.py); they need the
config (shapes), the normalisation statistics (the runner normalises and de-normalises in numpy), the language
model's dimensions (K/V shapes) and the checkpoint's identity (which graphs belong to it). `from_checkpoint`
verifies the checkpoint as `load_checkpoint` does, less its weights: the manifest's format, every file's sha256,
its signature when a trusted key is given, and the installed language model (whose tokenizer.json the runtime
uses) against the one it was trained with. The vision trunk's weights are inside the exported graphs.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from policy.artifacts import sha256_file
from policy.config import PolicyConfig
from policy.errors import CheckpointError
from policy.manifest import checkpoint_id, verify_checkpoint_files
from policy.normalize import NormStats, to_absolute
from policy.signing import Ed25519PublicKey
from policy.text import BertDims, attention_dims, resolve_language_model

LANGUAGE_SOURCE = "language_model.sha256"  # the manifest's "pretrained" entry for the language model's weights


@dataclass(frozen=True)
class PolicySpec:
    cfg: PolicyConfig
    norm_stats: NormStats
    dims: BertDims  # the MoT layers' heads, head dim and layer count (text.attention_dims): the K/V shapes
    checkpoint_id: str  # sha256 of the checkpoint's manifest, or "unsaved-<sha256>" (policy_fingerprint)
    signed_by: str | None = None  # key id that signed the manifest (None when no key was configured)
    checkpoint_dir: Path | None = None
    policy: Any = None  # the MoTPolicy, when this process has one (torch backend, exporting missing graphs)

    @classmethod
    def from_checkpoint(cls, directory: str | Path, trusted: Ed25519PublicKey | None = None) -> "PolicySpec":
        """A checkpoint directory, verified (module docstring) without reading its weights."""
        directory = Path(directory)
        manifest, sha, signed_by = verify_checkpoint_files(directory, trusted)
        cfg = PolicyConfig.from_json(directory / "config.json")
        stats = NormStats.load(directory / "norm_stats.json")
        if stats.state_mean.shape != (cfg.state_dim,) or stats.action_mean.shape != (cfg.action_dim,):
            raise CheckpointError(f"checkpoint: {directory / 'norm_stats.json'} expected state ({cfg.state_dim},) and "
                                  f"action ({cfg.action_dim},) vectors, received {stats.state_mean.shape} and "
                                  f"{stats.action_mean.shape}")
        folder = resolve_language_model(cfg.language_model)
        expected = manifest.get("pretrained", {}).get(LANGUAGE_SOURCE)
        if expected is not None and sha256_file(folder / "model.safetensors") != expected:
            raise CheckpointError(f"checkpoint: trained against pretrained weights {LANGUAGE_SOURCE}={expected}, but "
                                  f"{folder / 'model.safetensors'} differs (its tokenizer may too); install the same "
                                  "language model package version")
        return cls(cfg, stats, attention_dims(cfg), sha, signed_by, directory)

    @classmethod
    def of(cls, policy, checkpoint_dir: str | Path | None = None) -> "PolicySpec":
        """An in-memory MoTPolicy's spec. Identity: the checkpoint it was loaded from, else checkpoint_dir's manifest,
        else a fingerprint of its config and weights."""
        ident = getattr(policy, "checkpoint_id", None)
        if not ident and checkpoint_dir is not None and (Path(checkpoint_dir) / "manifest.json").is_file():
            ident = checkpoint_id(checkpoint_dir)
        return cls(policy.cfg, policy.norm_stats, policy.dims, ident or policy_fingerprint(policy),
                   getattr(policy, "signed_by", None), Path(checkpoint_dir) if checkpoint_dir else None, policy)

    # -- normalisation in numpy (the runner's, for every backend) -----------------------------------------
    def normalize_robot_state(self, state: np.ndarray) -> np.ndarray:
        """The robot's state (B, robot_state_dim) float32 -> normalised, as MoTPolicy.normalize_robot_state."""
        r, stats = self.cfg.robot_state_dim, self.norm_stats
        return ((state - stats.state_mean[:r]) / stats.state_std[:r]).astype(np.float32, copy=False)

    def unnormalize_actions(self, actions: np.ndarray, state: np.ndarray) -> np.ndarray:
        """Normalised chunk (B, horizon, A) and the robot's state (B, S_robot) -> chunk in robot units (float32)."""
        stats = self.norm_stats
        mask = np.asarray(self.cfg.delta_action_mask or (False,) * self.cfg.action_dim, np.float32)
        return to_absolute(actions * stats.action_std + stats.action_mean, state, mask).astype(np.float32, copy=False)


def as_spec(policy, checkpoint_dir: str | Path | None = None) -> PolicySpec:
    """A PolicySpec as is, or an in-memory MoTPolicy's (`PolicySpec.of`)."""
    return policy if isinstance(policy, PolicySpec) else PolicySpec.of(policy, checkpoint_dir)


def policy_fingerprint(policy) -> str:
    """The identity graphs and engines are keyed by: the checkpoint's sha256 when the policy was loaded
    from one (`policy.checkpoint_id`), else a sha256 over config + every weight (an unsaved policy)."""
    if getattr(policy, "checkpoint_id", None):
        return policy.checkpoint_id
    h = hashlib.sha256(json.dumps(policy.cfg.to_dict(), sort_keys=True).encode())
    h.update(json.dumps(policy.norm_stats.to_dict(), sort_keys=True).encode())
    for name, tensor in sorted(policy.state_dict().items()):
        h.update(name.encode())
        h.update(tensor.detach().contiguous().cpu().numpy().tobytes())
    return "unsaved-" + h.hexdigest()


__all__ = ["PolicySpec", "as_spec", "policy_fingerprint"]
