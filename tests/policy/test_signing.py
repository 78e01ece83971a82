"""Signed checkpoint manifests (policy/signing.py): with a trusted key, unsigned, mis-signed and signed-then-edited
checkpoints are refused; without one, nothing changes."""

import json
import os
import stat

import numpy as np
import pytest
import torch

from policy import MoTPolicy, PolicyConfig
from policy.artifacts import sha256_file
from policy.checkpoint import load_checkpoint, save_checkpoint
from policy.cli import PackConfig, make_key_pair, pack, pack_main
from policy.errors import CheckpointError, InputError
from policy.runtime import PolicyRunner
from policy.signing import TRUSTED_KEY_ENV, generate_key_pair, key_id, load_public_key

from .conftest import randomize_body


@pytest.fixture(autouse=True)
def _no_robot_wide_key(monkeypatch):
    monkeypatch.delenv(TRUSTED_KEY_ENV, raising=False)


@pytest.fixture(scope="module")
def keys(tmp_path_factory):
    """Two key pairs: the build machine's (`ours`) and somebody else's (`theirs`)."""
    root = tmp_path_factory.mktemp("keys")
    return generate_key_pair(root / "ours"), generate_key_pair(root / "theirs")


@pytest.fixture(scope="module")
def policy():
    torch.manual_seed(0)
    return randomize_body(MoTPolicy(PolicyConfig.preset("tiny")))


def _edit_config_and_rehash(path):
    """What an attacker (or a careless teammate) does: edit config.json, re-hash it into the manifest."""
    cfg = json.loads((path / "config.json").read_text())
    cfg["num_inference_steps"] = cfg["num_inference_steps"] + 1
    (path / "config.json").write_text(json.dumps(cfg))
    manifest = json.loads((path / "manifest.json").read_text())
    manifest["files"]["config.json"] = sha256_file(path / "config.json")
    (path / "manifest.json").write_text(json.dumps(manifest, indent=2))


def test_key_pair_is_private_0600_public_pem_and_never_overwritten(tmp_path):
    made = make_key_pair(tmp_path / "k")
    private, public = tmp_path / "k" / "signing_key.pem", tmp_path / "k" / "signing_key.pub.pem"
    assert made["private_key"] == str(private) and made["public_key"] == str(public)
    assert stat.S_IMODE(os.stat(private).st_mode) == 0o600
    assert b"BEGIN PRIVATE KEY" in private.read_bytes() and b"BEGIN PUBLIC KEY" in public.read_bytes()
    assert key_id(load_public_key(public)) == made["key_id"]
    with pytest.raises(InputError, match=r"new_key: expected a directory without a key pair"):
        make_key_pair(tmp_path / "k")


def test_signed_checkpoint_loads_with_the_trusted_key(policy, keys, tmp_path):
    ours, _ = keys
    path = save_checkpoint(policy, tmp_path / "ckpt", signing_key=ours["private_key"])
    assert sorted(p.name for p in path.iterdir()) == ["config.json", "manifest.json", "manifest.sig",
                                                      "model.safetensors", "norm_stats.json"]
    loaded = load_checkpoint(path, trusted_key=ours["public_key"])
    assert loaded.signed_by == ours["key_id"] and loaded.checkpoint_id == sha256_file(path / "manifest.json")
    assert load_checkpoint(path).signed_by is None  # without a key nothing is checked


def test_unsigned_checkpoint_is_refused_with_a_key_and_loads_without(policy, keys, tmp_path):
    ours, _ = keys
    path = save_checkpoint(policy, tmp_path / "ckpt")
    load_checkpoint(path)
    with pytest.raises(CheckpointError, match=r"expected a signed manifest \(manifest.sig beside .*received none") as e:
        load_checkpoint(path, trusted_key=ours["public_key"])
    assert "\n" not in str(e.value)


def test_checkpoint_signed_by_another_key_is_refused(policy, keys, tmp_path):
    ours, theirs = keys
    path = save_checkpoint(policy, tmp_path / "ckpt", signing_key=theirs["private_key"])
    with pytest.raises(CheckpointError, match=rf"manifest.sig does not verify with the trusted key {ours['key_id']}"):
        load_checkpoint(path, trusted_key=ours["public_key"])


def test_signed_then_edited_and_rehashed_checkpoint_is_refused(policy, keys, tmp_path):
    ours, _ = keys
    path = save_checkpoint(policy, tmp_path / "ckpt", signing_key=ours["private_key"])
    _edit_config_and_rehash(path)
    load_checkpoint(path)  # the sha256 list alone cannot tell: it loads without a key (as before signing)
    with pytest.raises(CheckpointError, match=r"does not verify .*manifest.json changed after signing") as e:
        load_checkpoint(path, trusted_key=ours["public_key"])
    assert "\n" not in str(e.value)


def test_runner_takes_the_trusted_key_and_the_environment_default(policy, keys, tmp_path, monkeypatch):
    ours, theirs = keys
    path = save_checkpoint(policy, tmp_path / "ckpt", signing_key=ours["private_key"])
    runner = PolicyRunner.from_checkpoint(path, trusted_key=ours["public_key"])
    assert runner.policy.signed_by == ours["key_id"]
    with pytest.raises(CheckpointError, match=r"does not verify with the trusted key"):
        PolicyRunner.from_checkpoint(path, trusted_key=theirs["public_key"])
    monkeypatch.setenv(TRUSTED_KEY_ENV, theirs["public_key"])  # the robot-wide default
    with pytest.raises(CheckpointError, match=r"does not verify with the trusted key"):
        PolicyRunner.from_checkpoint(path)


def test_a_private_key_as_trusted_key_and_a_public_key_to_sign_with_are_refused(policy, keys, tmp_path):
    ours, _ = keys
    with pytest.raises(InputError, match=r"trusted_key: expected a public key, .* is a private key"):
        load_checkpoint(save_checkpoint(policy, tmp_path / "a"), trusted_key=ours["private_key"])
    with pytest.raises(InputError, match=r"sign: expected a PEM private key, .*that is a public key"):
        save_checkpoint(policy, tmp_path / "b", signing_key=ours["public_key"])
    assert not (tmp_path / "b").exists()


def test_mot_pack_signs_and_makes_keys(policy, keys, tmp_path, capsys):
    ours, _ = keys
    source = save_checkpoint(policy, tmp_path / "src")
    report = pack(PackConfig(checkpoint=source, out=tmp_path / "packed", dtype="float16", sign=ours["private_key"]))
    assert report["signed_by"] == ours["key_id"] and (tmp_path / "packed" / "manifest.sig").is_file()
    load_checkpoint(tmp_path / "packed", trusted_key=ours["public_key"])
    assert pack_main(["--new-key", str(tmp_path / "k")]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["new_key"]["public_key"] == str(tmp_path / "k" / "signing_key.pub.pem")
    with pytest.raises(InputError, match=r"pack: expected --checkpoint and --out"):
        pack_main([])
    assert np.isfinite(report["max_action_diff"])
