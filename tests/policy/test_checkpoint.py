"""Checkpoints round-trip exactly; corrupted or mismatched ones are refused."""

import json
import os

import numpy as np
import pytest
import torch

from policy import MoTPolicy, NormStats, PolicyConfig
from policy.checkpoint import CheckpointError, load_checkpoint, save_checkpoint

from .conftest import make_batch, randomize_body


@pytest.fixture()
def saved(tmp_path, tiny_cfg):
    policy = randomize_body(MoTPolicy(tiny_cfg))
    rng = np.random.default_rng(0)
    policy.set_norm_stats(NormStats(rng.normal(size=7), rng.uniform(0.5, 2, 7), rng.normal(size=7), rng.uniform(0.5, 2, 7)))
    return policy, save_checkpoint(policy, tmp_path / "ckpt")


def test_round_trip_is_exact(saved, tiny_cfg):
    policy, path = saved
    loaded = load_checkpoint(path)
    assert loaded.cfg == policy.cfg
    for (name, a), (_, b) in zip(policy.state_dict().items(), loaded.state_dict().items()):
        assert torch.equal(a, b), name
    batch = make_batch(tiny_cfg, actions=False)
    noise = torch.randn(2, tiny_cfg.horizon, tiny_cfg.action_dim)
    assert torch.equal(policy.sample_actions(batch, noise=noise), loaded.sample_actions(batch, noise=noise))
    assert np.array_equal(loaded.norm_stats.action_std, policy.norm_stats.action_std)


def test_checkpoint_stores_only_trained_weights(saved):
    _, path = saved
    from safetensors import safe_open

    keys = list(safe_open(str(path / "model.safetensors"), "pt").keys())
    assert not [k for k in keys if k.startswith(("trunk.", "text_embed.")) or ".language." in k]
    assert any(".body." in k for k in keys)
    # An untrained vision expert is still the language copy: listed as inherited, not stored.
    inherited = json.loads((path / "manifest.json").read_text())["inherited"]
    assert not any(".vision." in k for k in keys) and "layers.1.vision.query.weight" in inherited


def test_corrupted_weights_are_refused(saved):
    _, path = saved
    data = bytearray((path / "model.safetensors").read_bytes())
    data[-5] ^= 0xFF
    (path / "model.safetensors").write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="model.safetensors is corrupted or modified"):
        load_checkpoint(path)


def test_missing_file_and_non_checkpoint_are_refused(saved, tmp_path):
    _, path = saved
    with pytest.raises(CheckpointError, match="expected a checkpoint directory, .*nowhere does not exist"):
        load_checkpoint(tmp_path / "nowhere")
    os.remove(path / "norm_stats.json")
    with pytest.raises(CheckpointError, match="norm_stats.json, it does not exist"):
        load_checkpoint(path)


def test_config_that_does_not_fit_the_weights_is_refused(saved):
    """Edit config.json and re-hash it: the manifest agrees, but the weights no longer fit."""
    _, path = saved
    cfg = json.loads((path / "config.json").read_text())
    cfg["body_width"] = 32
    (path / "config.json").write_text(json.dumps(cfg))
    from policy.artifacts import sha256_file

    manifest = json.loads((path / "manifest.json").read_text())
    manifest["files"]["config.json"] = sha256_file(path / "config.json")
    (path / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(CheckpointError, match=r"expected shape .* from config.json"):
        load_checkpoint(path)


def test_mismatched_pretrained_sources_are_refused(saved):
    _, path = saved
    manifest = json.loads((path / "manifest.json").read_text())
    manifest["pretrained"]["language_model.sha256"] = "0" * 64
    (path / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(CheckpointError, match="language_model.sha256"):
        load_checkpoint(path)


def test_save_replaces_atomically_and_leaves_no_temporaries(saved, tiny_cfg):
    policy, path = saved
    first = (path / "manifest.json").read_text()
    with torch.no_grad():
        policy.action_out.bias.add_(1.0)
    save_checkpoint(policy, path)
    assert (path / "manifest.json").read_text() != first
    assert sorted(p.name for p in path.parent.iterdir()) == ["ckpt"]
    assert torch.equal(load_checkpoint(path).action_out.bias, policy.action_out.bias)


def test_config_validation_names_the_field():
    with pytest.raises(ValueError, match="routing: expected one of"):
        PolicyConfig(routing="sparse")
    with pytest.raises(ValueError, match="horizon: expected a positive int, received 0"):
        PolicyConfig(horizon=0)
    with pytest.raises(ValueError, match="cameras: expected unique"):
        PolicyConfig(cameras=("front", "front"))
    with pytest.raises(ValueError, match="preset: expected one of"):
        PolicyConfig.preset("huge")
    with pytest.raises(ValueError, match="image_token_stride: expected 16 or 32, received 8"):
        PolicyConfig(image_token_stride=8)
    with pytest.raises(ValueError, match="image_size: expected a multiple of 32 .* image_token_stride 16"):
        PolicyConfig(image_size=80, image_token_stride=16)


def test_small_checkpoint_stays_small_and_float16_round_trips(tmp_path):
    """The shipped preset: attention-only vision training leaves the vision FFN inherited (not stored)."""
    policy = MoTPolicy(PolicyConfig.preset("small"))
    policy.set_stage("align")
    with torch.no_grad():  # what align training does: move every trainable vision tensor
        for name, p in policy.named_parameters():
            if p.requires_grad:
                p.add_(0.01)
    assert not any(p.requires_grad for p in policy.layers[0]["vision"].ffn_in.parameters())
    path = save_checkpoint(policy, tmp_path / "half", dtype=torch.float16)
    size = (path / "model.safetensors").stat().st_size
    assert size <= 25 * 2**20, f"{size / 2**20:.1f} MiB"
    manifest = json.loads((path / "manifest.json").read_text())
    assert "layers.0.vision.ffn_in.weight" in manifest["inherited"] and manifest["dtype"] == "torch.float16"
    loaded = load_checkpoint(path)
    for (name, a), (_, b) in zip(policy.state_dict().items(), loaded.state_dict().items()):
        assert b.dtype == a.dtype and torch.allclose(a, b, rtol=1e-3, atol=1e-4), name
    assert torch.equal(loaded.layers[2]["vision"].ffn_out.weight, policy.layers[2]["language"].ffn_out.weight)


def test_int8_storage_is_per_row_and_samples_what_float32_samples(tmp_path):
    """int8 (weight-only, per row): a quarter of float32 for the matrices, float16 for the rest, float32 in memory."""
    from policy.checkpoint import INT8_MIN_ELEMENTS

    torch.manual_seed(0)
    policy = randomize_body(MoTPolicy(PolicyConfig.preset("small")))
    with torch.no_grad():
        policy.layers[0]["body"].mlp[0].weight[3].zero_()  # an all-zero row must stay zero (scale 1, not 0/0)
    full, half, packed = (save_checkpoint(policy, tmp_path / n, dtype=d) for n, d in
                          (("f32", torch.float32), ("f16", torch.float16), ("i8", torch.int8)))
    size = {p.name: (p / "model.safetensors").stat().st_size for p in (full, half, packed)}
    assert size["i8"] < 0.3 * size["f32"] and size["i8"] < 0.6 * size["f16"], size
    manifest = json.loads((packed / "manifest.json").read_text())
    assert manifest["dtype"] == "torch.int8" and "layers.0.body.mlp.0.weight" in manifest["int8"]
    assert "layers.0.body.mlp.0.bias" not in manifest["int8"] and "action_out.weight" not in manifest["int8"]
    loaded = load_checkpoint(packed)
    own = policy.state_dict()
    for name, value in loaded.state_dict().items():
        assert value.dtype == own[name].dtype, name
        if name in manifest["int8"]:  # at most half a step of the row's own range
            step = own[name].abs().amax(dim=1, keepdim=True) / 127
            assert own[name].numel() >= INT8_MIN_ELEMENTS and ((value - own[name]).abs() <= step / 2 + 1e-7).all(), name
    assert not loaded.layers[0]["body"].mlp[0].weight[3].any()
    batch = make_batch(policy.cfg, actions=False)
    noise = torch.randn(2, policy.cfg.horizon, policy.cfg.action_dim)
    with torch.no_grad():
        a, b = policy.sample_actions(batch, noise=noise), loaded.sample_actions(batch, noise=noise)
    assert not torch.equal(a, b) and torch.allclose(a, b, atol=0.02), (a - b).abs().max()


def test_int8_tensors_without_their_scales_are_refused():
    from policy.checkpoint import pack_weights, unpack_weights

    w = torch.randn(64, 128)
    stored, quantized = pack_weights({"w": w, "b": torch.randn(64)}, torch.int8)
    assert quantized == ["w"] and stored["w"].dtype == torch.int8 and stored["b"].dtype == torch.float16
    error = (unpack_weights(stored, quantized)["w"] - w).abs()
    assert (error <= stored["w:scale"][:, None] / 2 + 1e-7).all() and error.max() > 0
    with pytest.raises(CheckpointError, match="w is listed as int8 but its tensor or per-row scale is missing"):
        unpack_weights({"w": stored["w"], "b": stored["b"]}, quantized)
    with pytest.raises(CheckpointError, match=r"scales \['w:scale'\] belong to no int8 tensor"):
        unpack_weights(stored, [])
    with pytest.raises(ValueError, match="dtype: expected one of"):
        pack_weights({"w": torch.randn(2, 2)}, torch.int16)
