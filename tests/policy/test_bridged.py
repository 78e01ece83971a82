"""A bigger language expert, bridged (issue 18): MPNet exact against transformers, MoT layers of the vision model's
shape whatever the language model's width and depth, caches, checkpoints and config refusals.

The language model here is a tiny random MPNet written by transformers (tests never download); the vision
model is MiniLM's first two layers, as in the `tiny` preset."""

import json

import numpy as np
import pytest
import torch
import transformers
from safetensors import safe_open

from policy import MoTPolicy, PolicyConfig
from policy.checkpoint import load_checkpoint, save_checkpoint
from policy.errors import CheckpointError, InputError
from policy.language import LanguageEncoder, TextTokenizer, bridge_taps
from policy.mpnet import relative_buckets
from policy.text import BertDims, attention_dims, default_language_model

from .conftest import make_batch, randomize_body
from .tiny_mpnet import write_tiny_mpnet


@pytest.fixture(scope="module")
def mpnet_folder(tmp_path_factory):
    return write_tiny_mpnet(tmp_path_factory.mktemp("tiny_mpnet"))


def bridged_cfg(folder, **overrides) -> PolicyConfig:
    settings = dict(language_model=str(folder), language_layers=None, vision_model="minilm", vision_layers=2)
    return PolicyConfig.preset("tiny", **{**settings, **overrides})


def test_mpnet_equals_transformers_on_padded_text(mpnet_folder):
    dims = BertDims.from_folder(mpnet_folder)
    encoder = LanguageEncoder(mpnet_folder, dims, max_tokens=48).eval()
    ids, valid = TextTokenizer(mpnet_folder, 48)(["hoist the block", "could you put the red cube on the blue pad now"])
    assert not valid.all(), "the batch must pad one instruction"
    reference = transformers.MPNetModel.from_pretrained(str(mpnet_folder), add_pooling_layer=False).eval()
    with torch.no_grad():
        want = reference(input_ids=ids, attention_mask=valid.long(), output_hidden_states=True).hidden_states[1:]
        got = encoder(ids, valid)
    assert len(got) == dims.layers == 4
    for ours, theirs in zip(got, want):
        assert ((ours - theirs).abs() * valid[..., None]).max() <= 1e-4


def test_relative_buckets_are_mpnets():
    theirs = transformers.models.mpnet.modeling_mpnet.MPNetEncoder.relative_position_bucket
    positions = torch.arange(48)
    assert torch.equal(relative_buckets(48, 32), theirs(positions[None, :] - positions[:, None], num_buckets=32))


def test_bridge_taps_spread_over_the_language_layers_and_end_at_the_last():
    assert bridge_taps(12, 6) == [1, 3, 5, 7, 9, 11]
    assert bridge_taps(4, 2) == [1, 3]
    assert bridge_taps(6, 6) == list(range(6))


def test_the_mot_layers_take_the_vision_models_shape_not_the_language_models(mpnet_folder):
    policy = MoTPolicy(bridged_cfg(mpnet_folder)).eval()
    minilm = BertDims.from_folder(default_language_model(), 2)
    assert policy.dims == minilm == attention_dims(policy.cfg)
    assert policy.language_dims.width == 96 and policy.language_dims.layers == 4
    assert set(policy.layers[0]) == {"vision", "body"}, "no language expert inside the MoT layers"
    ids, valid = policy.tokenizer(["pick up the red cube"])
    kv = policy.encode_text(ids, valid).kv
    assert kv.shape == (2, 2, 1, minilm.heads, ids.shape[1], minilm.head_dim)


def test_cached_passes_equal_one_pass_over_the_whole_sequence(mpnet_folder):
    torch.manual_seed(0)
    policy = randomize_body(MoTPolicy(bridged_cfg(mpnet_folder))).eval()
    batch = make_batch(policy.cfg, batch_size=2, seed=1, actions=False)
    ids, valid = policy.tokenizer(batch["instruction"])
    images = torch.as_tensor(np.stack([batch["images"][c] for c in policy.cfg.cameras], axis=1))
    state = torch.as_tensor(batch["state"])
    x, t = torch.randn(2, policy.cfg.horizon, policy.cfg.action_dim), torch.rand(2)
    with torch.no_grad():
        prefix = policy.encode_state(state, policy.encode_images(images, policy.encode_text(ids, valid)))
        cached = policy.denoise(x, t, prefix)
        whole = policy.velocity_uncached(ids, valid, images, state, x, t)
    assert (cached - whole).abs().max() <= 1e-5


def test_only_the_bridge_vision_and_head_train_in_align_and_the_language_model_never(mpnet_folder):
    policy = MoTPolicy(bridged_cfg(mpnet_folder))
    policy.set_stage("align")
    counts = policy.num_parameters()
    assert counts["language"]["trainable"] == 0 and counts["language"]["total"] > 0
    assert counts["language_bridge"]["trainable"] == counts["language_bridge"]["total"] > 0
    assert counts["body"]["trainable"] == 0 and policy.prefix_trainable()
    policy.set_stage("policy")
    assert policy.num_parameters()["language_bridge"]["trainable"] == 0 and not policy.prefix_trainable()


def test_a_bridged_checkpoint_stores_neither_language_model_nor_inherited_vision_tensors(mpnet_folder, tmp_path):
    torch.manual_seed(0)
    policy = randomize_body(MoTPolicy(bridged_cfg(mpnet_folder, vision_trainable="attention"))).eval()
    with torch.no_grad():  # what align trains moves away from its initialisation; the FFN stays MiniLM's copy
        policy.text_bridge.key[0].weight.normal_()
        policy.layers[0]["vision"].query.weight.normal_()
    save_checkpoint(policy, tmp_path / "ckpt")
    manifest = json.loads((tmp_path / "ckpt" / "manifest.json").read_text())
    assert "vision_model.sha256" in manifest["pretrained"]
    inherited = set(manifest["inherited"])
    assert "layers.0.vision.ffn_in.weight" in inherited and "layers.0.vision.query.weight" not in inherited
    loaded = load_checkpoint(tmp_path / "ckpt")
    with safe_open(str(tmp_path / "ckpt" / "model.safetensors"), "pt") as f:
        stored = set(f.keys())
    assert not any(k.startswith("language.") for k in stored) and any(k.startswith("text_bridge.") for k in stored)
    for key, value in policy.state_dict().items():
        assert torch.equal(value, loaded.state_dict()[key]), key


def test_a_bridged_checkpoint_of_another_language_model_is_refused(mpnet_folder, tmp_path):
    save_checkpoint(MoTPolicy(bridged_cfg(mpnet_folder)), tmp_path / "ckpt")
    other = write_tiny_mpnet(tmp_path / "other", seed=1)
    cfg = json.loads((tmp_path / "ckpt" / "config.json").read_text())
    manifest = json.loads((tmp_path / "ckpt" / "manifest.json").read_text())
    assert manifest["pretrained"]["language_model.sha256"]
    cfg["language_model"] = str(other)
    (tmp_path / "ckpt" / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError):  # the config hash, then the pretrained source, would both refuse it
        load_checkpoint(tmp_path / "ckpt")


@pytest.mark.parametrize("overrides, field", [
    (dict(vision_model=None, vision_layers=None), "language_model"),  # MPNet lined up: its bias is not MoT attention
    (dict(routing="dense"), "vision_model"),
    (dict(prefix_mask="bidirectional"), "vision_model"),
])
def test_configs_the_bridge_cannot_run_are_refused_naming_the_field(mpnet_folder, overrides, field):
    with pytest.raises(InputError, match=f"^{field}:"):
        MoTPolicy(bridged_cfg(mpnet_folder, **overrides))


def test_vision_layers_needs_a_vision_model():
    with pytest.raises(InputError, match="^vision_layers:"):
        PolicyConfig.preset("tiny", vision_layers=2)


def retrieval_policy(folder, memory: int = 8, temperature: float = 0.01) -> MoTPolicy:
    return MoTPolicy(bridged_cfg(folder, language_layers=2, text_bridge="retrieval", bridge_memory=memory,
                                 bridge_temperature=temperature)).eval()


def test_a_retrieval_bridge_gives_a_remembered_token_its_own_kv_and_a_new_one_its_neighbours(mpnet_folder):
    policy = retrieval_policy(mpnet_folder)
    bridge = policy.text_bridge
    ids, valid = policy.tokenizer(["pick up the red cube"])
    with torch.no_grad():
        states = policy.language(ids, valid)  # its last (second) layer is the lookup key
    assert len(states) == 2
    g = torch.Generator().manual_seed(0)
    remembered = states[-1][0, 1:5]  # four of the instruction's tokens
    others = torch.randn(4, remembered.shape[1], generator=g)
    with torch.no_grad():
        bridge.keys.copy_(torch.nn.functional.normalize(torch.cat([remembered, others]), dim=1))
        bridge.values.copy_(torch.randn(bridge.values.shape, generator=g))
        kv = policy.encode_text(ids, valid).kv  # (layers, 2, B, heads, L, head_dim)
    layers, heads, head_dim = policy.dims.layers, policy.dims.heads, policy.dims.head_dim
    assert kv.shape == (layers, 2, 1, heads, ids.shape[1], head_dim)
    for i in range(4):  # token 1 + i is memory row i: at temperature 0.01 its own K/V come back
        want = bridge.values[i].reshape(layers, 2, heads, head_dim)
        assert (kv[:, :, 0, :, 1 + i] - want).abs().max() <= 1e-3
    # Halfway between two remembered tokens: the mean of their K/V (the geometry decides, no projection).
    between = torch.nn.functional.normalize(bridge.keys[0] + bridge.keys[1], dim=0)
    with torch.no_grad():
        mixed = bridge([between[None, None]])[:, :, 0, :, 0]
    half = ((bridge.values[0] + bridge.values[1]) / 2).reshape(layers, 2, heads, head_dim)
    assert (mixed - half).abs().max() <= 0.05 * half.abs().max()


def test_a_retrieval_bridge_has_nothing_to_train_and_travels_in_the_checkpoint(mpnet_folder, tmp_path):
    policy = retrieval_policy(mpnet_folder)
    with torch.no_grad():
        policy.text_bridge.values.normal_()
        policy.text_bridge.keys.copy_(torch.nn.functional.normalize(torch.randn(policy.text_bridge.keys.shape), dim=1))
    policy.set_stage("align")
    assert list(policy.text_bridge.parameters()) == [] and "language_bridge" not in policy.num_parameters()
    with pytest.raises(InputError, match="^only_bridge: .*text_bridge='retrieval'"):
        policy.set_stage("align", only_bridge=True)
    save_checkpoint(policy, tmp_path / "ckpt")
    loaded = load_checkpoint(tmp_path / "ckpt")
    assert loaded.cfg.text_bridge == "retrieval" and loaded.language_dims.layers == 2
    assert torch.equal(loaded.text_bridge.values, policy.text_bridge.values)
    assert torch.equal(loaded.text_bridge.keys, policy.text_bridge.keys)


@pytest.mark.parametrize("overrides", [dict(text_bridge="nearest"), dict(text_bridge="retrieval", bridge_memory=0),
                                       dict(text_bridge="retrieval", bridge_memory=4, bridge_temperature=0.0)])
def test_a_retrieval_bridge_it_cannot_build_is_refused_naming_the_field(mpnet_folder, overrides):
    with pytest.raises(InputError, match="^text_bridge:"):
        bridged_cfg(mpnet_folder, **overrides)
    with pytest.raises(InputError, match="^text_bridge:"):
        PolicyConfig.preset("tiny", text_bridge="retrieval", bridge_memory=4)  # lined up: nothing to bridge


def test_int8_packing_leaves_the_retrieval_keys_in_float16(mpnet_folder, tmp_path):
    """Cosines over a 0.01 temperature turn int8 rounding of the keys into another nearest token."""
    policy = retrieval_policy(mpnet_folder, memory=64)
    with torch.no_grad():
        policy.text_bridge.keys.copy_(torch.nn.functional.normalize(torch.randn(64, 96), dim=1))
        policy.text_bridge.values.normal_()
    save_checkpoint(policy, tmp_path / "ckpt", dtype=torch.int8)
    manifest = json.loads((tmp_path / "ckpt" / "manifest.json").read_text())
    assert "text_bridge.values" in manifest["int8"] and "text_bridge.keys" not in manifest["int8"]
    with safe_open(str(tmp_path / "ckpt" / "model.safetensors"), "pt") as f:
        assert f.get_tensor("text_bridge.keys").dtype == torch.float16
