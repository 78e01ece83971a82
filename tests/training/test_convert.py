"""training/convert.py: `mot convert-pointer` turns a mot-policy/1 checkpoint's pointer into an align checkpoint
that points as the pointer did, and refuses a pointer whose files do not match its manifest."""

import dataclasses
import json

import pytest
import torch
from safetensors.torch import save_file

from policy import MoTPolicy, PolicyConfig
from policy.artifacts import sha256_file
from policy.checkpoint import pack_weights, pretrained_sources, stored_keys
from policy.errors import CheckpointError
from tests.policy.test_grounding import _observation
from training.convert import policy_from_pointer


def _write_old_pointer(policy: MoTPolicy, directory):
    """A mot-pointer/1 directory as `mot pack --pointer` wrote them (image embedding, vision expert, `head.`), int8."""
    directory.mkdir()
    keys, inherited = stored_keys(policy)
    pointing = lambda k: k.startswith("image_embed.") or (k.startswith("layers.") and k.split(".")[2] == "vision")  # noqa: E731
    weights = {k: v for k, v in policy.state_dict().items() if k in keys and pointing(k)}
    weights.update({f"head.{k}": v for k, v in policy.grounding.state_dict().items()})
    stored, quantized = pack_weights(weights, torch.int8)
    save_file(stored, str(directory / "model.safetensors"))
    old = {k: v for k, v in policy.cfg.to_dict().items() if k not in ("prefix_pool",)}
    (directory / "config.json").write_text(json.dumps({**old, "target_points": None, "state_dim": 7, "goal_token": False}))
    files = {n: sha256_file(directory / n) for n in ("model.safetensors", "config.json")}
    (directory / "manifest.json").write_text(json.dumps({
        "format": "mot-pointer/1", "files": files, "pretrained": pretrained_sources(policy), "inherited": inherited,
        "int8": quantized, "offsets": True, "source": "runs/align_s16c"}))


def test_an_old_pointer_converts_to_an_align_checkpoint_that_points_the_same(tmp_path):
    source = MoTPolicy(PolicyConfig.preset("tiny", image_token_stride=16))
    with torch.no_grad():
        for p in list(source.grounding.parameters()) + list(source.image_embed.parameters()):
            p.normal_(0.0, 0.5)
        source.layers[0]["vision"].query.weight.mul_(1.5)  # one trained vision tensor (the rest stay inherited)
    _write_old_pointer(source, tmp_path / "pointer")
    converted = policy_from_pointer(tmp_path / "pointer")
    images, _ = _observation(source.cfg)
    with torch.no_grad():
        text = source.encode_text(*source.tokenizer(["pick up the red cube"] * 2))
        expected = source.point(source.encode_images(images, text, return_hidden=True)[1])[0]
        got = converted.point(converted.encode_images(images, text, return_hidden=True)[1])[0]
    assert (got - expected).abs().max() < 0.02  # int8 storage: points within a small fraction of a cell
    # A body then trains from it with the points and the pool it chooses.
    converted.cfg = dataclasses.replace(converted.cfg, prefix_pool=2)
    converted.set_target_points("model")
    assert converted.cfg.state_dim == 7 + 8
    manifest = json.loads((tmp_path / "pointer" / "manifest.json").read_text())
    manifest["files"]["config.json"] = "0" * 64
    (tmp_path / "pointer" / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(CheckpointError, match=r"config.json is corrupted or modified"):
        policy_from_pointer(tmp_path / "pointer")
