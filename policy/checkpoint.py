"""Checkpoints: a directory written atomically, verified on load.

    model.safetensors   trained weights only (the frozen pretrained weights come from installed packages)
    config.json         PolicyConfig
    norm_stats.json     state/action normalisation statistics
    manifest.json       format, sha256 of each file above, sha256 of the pretrained sources, the
                        "inherited" vision tensors (still equal to the language copy they started as,
                        rebuilt on load instead of stored) and the storage dtype
    manifest.sig        optional: the ed25519 signature of manifest.json's bytes (policy/signing.py,
                        `mot pack --sign KEY`); it covers every file above

Format mot-policy/2: one model that points, then acts (its grounding head is among the weights). A
mot-policy/1 checkpoint (a body whose target points came from a separate `pointer/` model) is refused with
a message that says so: its body attends to another vision expert's image tokens, so it cannot be converted.

Weights may be stored as float16 (`dtype=torch.float16`) or int8 (`dtype=torch.int8`: weight-only, per
output row, `pack_weights`); they are loaded back into float32 parameters, so the model computes as trained.

The directory is assembled under a temporary name in the same parent and renamed into place, so a
crash never leaves a half-written checkpoint under the real name. `load_checkpoint` refuses a
checkpoint whose files do not match the manifest, whose weights do not fit its config, or whose
pretrained sources differ from those installed (the frozen experts would silently change). Given a trusted
public key (`trusted_key=`, or `$MOT_TRUSTED_KEY`), it also refuses a manifest that is unsigned or not signed
by that key: the sha256 list alone cannot tell a config edited and re-hashed from the one that was packed.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from policy.artifacts import atomic_directory, sha256_file
from policy.config import PolicyConfig
from policy.errors import CheckpointError, InputError
from policy.language import load_language_weights
from policy.manifest import (FILES, FORMAT, RETIRED_FORMATS, checkpoint_id, load_manifest,  # noqa: F401 (re-exported)
                             read_manifest)
from policy.model import MoTPolicy
from policy.normalize import NormStats
from policy.signing import SigningKey, TrustedKey, load_private_key, resolve_trusted_key, sign_bytes, signature_path
from policy.vision import default_trunk_weights

STORAGE_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16, "int8": torch.int8}
INT8_MIN_ELEMENTS = 4096  # matrices at least this large are stored as int8; biases, norms, small tables as float16
# Never int8: a retrieval bridge's lookup keys (policy/language.py RetrievalBridge). Its softmax divides cosines by
# a small temperature, which turns int8 rounding into a different nearest token (at 0.01: points 15 px away).
INT8_EXCLUDED = ("text_bridge.keys",)
SCALE_SUFFIX = ":scale"  # "<key>:scale" holds an int8 matrix's per-row scales (":" never occurs in a parameter name)


def storage_dtype(name: str) -> torch.dtype:
    """'float16' -> torch.float16; the CLI's --save-dtype / --dtype choices."""
    if name not in STORAGE_DTYPES:
        raise InputError(f"dtype: expected one of {sorted(STORAGE_DTYPES)}, received {name!r}")
    return STORAGE_DTYPES[name]


def pack_weights(weights: dict[str, torch.Tensor], dtype: torch.dtype) -> tuple[dict[str, torch.Tensor], list[str]]:
    """float32 tensors -> (what model.safetensors stores at `dtype`, the keys stored as int8).

    int8 is weight-only and symmetric per output row (as LLM.int8 / torchao's weight-only schemes): a
    matrix W (out, in) with at least INT8_MIN_ELEMENTS entries becomes q = round(W / s) in int8 with
    s (out,) = max |W_row| / 127 in float32 under "<key>:scale"; every other floating tensor (and INT8_EXCLUDED)
    is float16.
    The error per entry is at most s / 2, half a step of its own row's range.
    """
    if dtype not in STORAGE_DTYPES.values():
        raise InputError(f"dtype: expected one of {list(STORAGE_DTYPES.values())}, received {dtype}")
    stored, quantized = {}, []
    for key, value in weights.items():
        value = value.detach().cpu()
        if not value.is_floating_point():
            stored[key] = value.contiguous()
        elif dtype != torch.int8:
            stored[key] = value.to(dtype).contiguous()
        elif value.dim() == 2 and value.numel() >= INT8_MIN_ELEMENTS and key not in INT8_EXCLUDED:
            w = value.float()
            scale = w.abs().amax(dim=1) / 127.0
            scale = torch.where(scale > 0, scale, torch.ones_like(scale))  # an all-zero row stays zero
            stored[key] = torch.round(w / scale[:, None]).clamp(-127, 127).to(torch.int8).contiguous()
            stored[key + SCALE_SUFFIX] = scale.contiguous()
            quantized.append(key)
        else:
            stored[key] = value.to(torch.float16).contiguous()
    return stored, sorted(quantized)


def unpack_weights(stored: dict[str, torch.Tensor], quantized: list[str]) -> dict[str, torch.Tensor]:
    """`pack_weights`' output (and its int8 keys, from the manifest) -> float32 tensors."""
    weights = dict(stored)
    for key in quantized:
        q, scale = weights.get(key), weights.pop(key + SCALE_SUFFIX, None)
        if q is None or scale is None or q.dtype != torch.int8 or scale.shape != (q.shape[0],):
            raise CheckpointError(f"checkpoint: {key} is listed as int8 but its tensor or per-row scale is missing or "
                                  f"malformed (tensor {None if q is None else (q.dtype, tuple(q.shape))}, scale "
                                  f"{None if scale is None else tuple(scale.shape)})")
        weights[key] = q.float() * scale.float()[:, None]
    stray = sorted(k for k in weights if k.endswith(SCALE_SUFFIX))
    if stray:
        raise CheckpointError(f"checkpoint: scales {stray[:5]} belong to no int8 tensor of the manifest")
    return {k: v.float() if v.is_floating_point() else v for k, v in weights.items()}


def _external_keys(policy) -> set[str]:
    """State-dict keys loaded from installed packages and never trained: not stored in checkpoints."""
    keys = set()
    for name, _ in policy.state_dict().items():
        is_language_expert = name.startswith("layers.") and name.split(".")[2] == "language"
        if name.startswith(("trunk.", "text_embed.", "language.")) or is_language_expert:
            keys.add(name)
    return keys


def _initial_vision(policy) -> dict[str, torch.Tensor]:
    """The vision expert's tensors as constructed: the lined-up language expert's copy, or (bridged) the vision
    model's layers, loaded afresh from its installed folder."""
    sd = policy.state_dict()
    if not policy.cfg.bridged:
        return {k.replace(".language.", ".vision.", 1): v for k, v in sd.items()
                if k.startswith("layers.") and k.split(".")[2] == "language"}
    fresh = [copy.deepcopy(layer["vision"]) for layer in policy.layers]
    load_language_weights(policy.vision_folder, policy.dims, None, fresh)
    return {f"layers.{i}.vision.{k}": v for i, expert in enumerate(fresh) for k, v in expert.state_dict().items()}


def _inherited_keys(policy) -> list[str]:
    """Vision-expert tensors still bit-identical to the pretrained tensors they were copied from."""
    if policy.cfg.routing != "mot":
        return []
    initial = _initial_vision(policy)
    return sorted(k for k, v in policy.state_dict().items() if k in initial and torch.equal(v, initial[k]))


def stored_keys(policy) -> tuple[set[str], list[str]]:
    """(the state-dict keys a checkpoint of `policy` stores, the inherited ones it rebuilds instead)."""
    inherited = _inherited_keys(policy)
    return set(policy.state_dict()) - _external_keys(policy) - set(inherited), inherited


def pretrained_sources(policy) -> dict[str, str]:
    sources = {
        "language_model.sha256": sha256_file(policy.language_folder / "model.safetensors"),
        "vision_trunk.sha256": sha256_file(default_trunk_weights()),
    }
    if policy.cfg.bridged:  # the vision expert's untrained (inherited) tensors are rebuilt from it
        sources["vision_model.sha256"] = sha256_file(policy.vision_folder / "model.safetensors")
    return sources


def check_pretrained(policy, manifest: dict) -> None:
    """Refuse weights trained against other frozen experts than the installed ones."""
    sources = pretrained_sources(policy)
    for key, expected in manifest.get("pretrained", {}).items():
        if sources.get(key) != expected:
            raise CheckpointError(f"checkpoint: trained against pretrained weights {key}={expected}, but the "
                                  f"installed ones have {sources.get(key)}; install the same package versions")


def save_checkpoint(policy: MoTPolicy, directory: str | Path, dtype: torch.dtype = torch.float32,
                    signing_key: SigningKey | None = None) -> Path:
    """Writes `policy` as a checkpoint directory (atomically); float16 halves it, int8 quarters its matrices.
    signing_key: an ed25519 private key (PEM path or key) to sign manifest.json with: manifest.sig is written
    inside the same atomic directory."""
    key = load_private_key(signing_key) if signing_key is not None else None  # a bad key fails before any work
    keys, inherited = stored_keys(policy)
    stored, quantized = pack_weights({k: v for k, v in policy.state_dict().items() if k in keys}, dtype)

    def write(tmp: Path) -> None:
        save_file(stored, str(tmp / "model.safetensors"))
        (tmp / "config.json").write_text(json.dumps(policy.cfg.to_dict(), indent=2))
        (tmp / "norm_stats.json").write_text(json.dumps(policy.norm_stats.to_dict(), indent=2))
        manifest = {"format": FORMAT, "files": {name: sha256_file(tmp / name) for name in FILES},
                    "pretrained": pretrained_sources(policy), "inherited": inherited, "dtype": str(dtype),
                    "int8": quantized}
        data = json.dumps(manifest, indent=2).encode()
        (tmp / "manifest.json").write_bytes(data)
        if key is not None:  # over the exact bytes just written, which hash every file
            signature_path(tmp / "manifest.json").write_bytes(sign_bytes(data, key))

    return atomic_directory(directory, write)


def _verify(directory: Path, trusted_key: TrustedKey) -> tuple[dict, str, str | None]:
    return load_manifest(directory, FORMAT, FILES, resolve_trusted_key(trusted_key))


def verify_checkpoint(directory: str | Path, trusted_key: TrustedKey = None) -> dict:
    """Checks the files against the manifest, and the manifest's signature when a trusted key is configured
    (`trusted_key`, else `$MOT_TRUSTED_KEY`); returns the manifest."""
    return _verify(Path(directory), trusted_key)[0]


def expected_keys(policy, manifest: dict) -> set[str]:
    """The state-dict keys a checkpoint's model.safetensors must hold: all but the external and the inherited."""
    own = set(policy.state_dict())
    inherited = set(manifest.get("inherited", []))
    if not inherited <= own:
        raise CheckpointError(f"checkpoint: inherited tensors {sorted(inherited - own)[:5]} do not exist in "
                              "the model config.json describes")
    return own - _external_keys(policy) - inherited


def load_weights(directory: Path, manifest: dict, expected_keys: set[str], own: dict[str, torch.Tensor]) -> dict:
    """directory/model.safetensors as float32, checked key by key and shape by shape against the model's own."""
    weights = unpack_weights(load_file(str(directory / "model.safetensors")), manifest.get("int8", []))
    missing, unexpected = sorted(expected_keys - set(weights)), sorted(set(weights) - expected_keys)
    if missing or unexpected:
        raise CheckpointError(f"checkpoint: weights in {directory} do not match config.json: missing {missing[:5]}, "
                              f"unexpected {unexpected[:5]}")
    for key, tensor in weights.items():
        if tensor.shape != own[key].shape:
            raise CheckpointError(f"checkpoint: {key} expected shape {tuple(own[key].shape)} from config.json, "
                                  f"received {tuple(tensor.shape)}")
    return weights


def load_checkpoint(directory: str | Path, trusted_key: TrustedKey = None) -> MoTPolicy:
    """A checkpoint directory -> MoTPolicy in eval mode, verified (files against the manifest, pretrained
    sources against the installed packages, every tensor's key and shape against config.json).

    trusted_key: an ed25519 public key (PEM file path, PEM text or key); default `$MOT_TRUSTED_KEY`. When one is
    configured, a checkpoint whose manifest.sig is missing or not that key's signature of manifest.json is refused
    (CheckpointError); without one, signatures are not looked at. The policy's `checkpoint_id` is the sha256 of the
    manifest bytes that were verified, `signed_by` the key id that signed them (None when unchecked)."""
    directory = Path(directory)
    if not directory.is_dir():
        raise CheckpointError(f"checkpoint: expected a checkpoint directory, {directory} "
                              f"{'is a file' if directory.exists() else 'does not exist'}")
    manifest, sha, signed_by = _verify(directory, trusted_key)
    cfg = PolicyConfig.from_json(directory / "config.json")
    policy = MoTPolicy(cfg, NormStats.load(directory / "norm_stats.json"))
    check_pretrained(policy, manifest)
    weights = load_weights(directory, manifest, expected_keys(policy, manifest), policy.state_dict())
    with torch.no_grad():
        policy.load_state_dict(weights, strict=False)
    policy.checkpoint_id = sha
    policy.signed_by = signed_by
    return policy.eval()
