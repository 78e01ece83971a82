"""`mot bridge-language`: a trained (lined-up) policy gets another language expert whose text bridge reproduces the
old text K/V on train instructions (a retrieval memory, or ridge-fitted projections); everything else is the
source's, tensor for tensor."""

import json

import numpy as np
import pytest
import torch

from policy import MoTPolicy, PolicyConfig
from policy.checkpoint import load_checkpoint, save_checkpoint
from policy.errors import InputError
from tests.policy.conftest import randomize_body
from tests.policy.tiny_mpnet import write_tiny_mpnet
from training.bridge import RIDGES, bridged_policy, main, ridge, train_instructions
from training.cli import main as mot


@pytest.fixture(scope="module")
def source():
    torch.manual_seed(0)
    policy = MoTPolicy(PolicyConfig.preset("tiny"))
    policy.set_target_points("model")
    return randomize_body(policy).eval()


@pytest.fixture(scope="module")
def mpnet(tmp_path_factory):
    return str(write_tiny_mpnet(tmp_path_factory.mktemp("mpnet")))


def text_kv_error(source, target, instructions) -> float:
    ids, valid = source.tokenizer(instructions)
    with torch.no_grad():
        want, got = source.encode_text(ids, valid).kv, target.encode_text(ids, valid).kv
    mask = valid[None, None, :, None, :, None]
    return float((((got - want) ** 2) * mask).sum() / (((want - want.mean()) ** 2) * mask).sum())


def assert_bridged_like_the_source(source, target, check) -> None:
    """The bridge halves (at least) an unfitted bridge's text K/V error; every other tensor is the source's."""
    unfitted = MoTPolicy(target.cfg, source.norm_stats).eval()
    assert text_kv_error(source, target, check) < 0.5 * text_kv_error(source, unfitted, check)
    theirs = source.state_dict()
    for key, value in target.state_dict().items():
        if not key.startswith(("language.", "text_bridge.")):
            assert torch.equal(value, theirs[key]), key


def test_train_instructions_are_distinct_and_of_the_train_split():
    texts = train_instructions(400, seed=1)
    assert len(texts) == len(set(texts)) == 400
    assert any("ruby" in t for t in texts) and not any("crimson" in t for t in texts)


def test_ridge_recovers_a_linear_map():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(500, 8, generator=g)
    w, b = torch.randn(8, 3, generator=g), torch.randn(3, generator=g)
    w_fit, b_fit = ridge(x, x @ w + b, 1e-6)
    assert torch.allclose(w_fit, w, atol=1e-3) and torch.allclose(b_fit, b, atol=1e-3)


def test_the_fitted_bridge_reproduces_the_old_text_kv_and_keeps_every_other_tensor(source, mpnet):
    fit, check = train_instructions(600, seed=0), train_instructions(100, seed=99)
    target, report = bridged_policy(source, mpnet, fit, bridge="linear")
    assert target.cfg.bridged and target.cfg.vision_model == "minilm" and target.cfg.vision_layers == 2
    assert report["ridge"] in RIDGES and report["tokens"] > 600
    assert_bridged_like_the_source(source, target, check)
    assert np.allclose(target.norm_stats.state_mean, source.norm_stats.state_mean)


def test_a_bridged_source_is_refused(source, mpnet):
    target, _ = bridged_policy(source, mpnet, train_instructions(200), bridge="linear")
    with pytest.raises(InputError, match="^checkpoint: expected a lined-up MoT policy"):
        bridged_policy(target, mpnet, train_instructions(200), bridge="linear")


def test_mot_bridge_language_writes_a_loadable_checkpoint_and_its_report(source, mpnet, tmp_path):
    save_checkpoint(source, tmp_path / "src")
    out = tmp_path / "out"
    assert main(["--checkpoint", str(tmp_path / "src"), "--out", str(out), "--language-model", mpnet,
                 "--instructions", "300", "--bridge", "linear"]) == 0
    report = json.loads((out / "bridge.json").read_text())
    assert report["source"] == str(tmp_path / "src") and set(report["unseen_synonym_relative_error"]) == {
        str(r) for r in RIDGES}
    loaded = load_checkpoint(out / "checkpoint")
    assert loaded.cfg.language_model == mpnet and loaded.cfg.bridged
    assert mot(["bridge-language", "--checkpoint", str(tmp_path / "missing"), "--out", str(out / "x")]) == 2


def test_the_retrieval_memory_reproduces_the_old_text_kv_and_keeps_every_other_tensor(source, mpnet):
    fit, check = train_instructions(600, seed=0), train_instructions(100, seed=99)
    target, report = bridged_policy(source, mpnet, fit, bridge="retrieval", language_layers=2, memory=512,
                                    temperature=0.02)
    assert target.cfg.text_bridge == "retrieval" and target.language_dims.layers == 2 and report["memory"] == 512
    assert torch.allclose(target.text_bridge.keys.norm(dim=1), torch.ones(512), atol=1e-5)
    assert report["memory_token_relative_error"] < report["unseen_synonym_relative_error"]
    assert_bridged_like_the_source(source, target, check)


def test_a_memory_larger_than_the_fitting_tokens_is_refused(source, mpnet):
    with pytest.raises(InputError, match="^instructions: expected at least bridge_memory=100000 tokens"):
        bridged_policy(source, mpnet, train_instructions(50), bridge="retrieval", language_layers=2, memory=100_000)


def test_mot_bridge_language_builds_a_retrieval_bridge_by_default(source, mpnet, tmp_path):
    save_checkpoint(source, tmp_path / "src")
    out = tmp_path / "out"
    assert main(["--checkpoint", str(tmp_path / "src"), "--out", str(out), "--language-model", mpnet,
                 "--instructions", "300", "--language-layers", "2", "--memory", "256"]) == 0
    report = json.loads((out / "bridge.json").read_text())
    assert report["bridge"] == "retrieval" and report["memory"] == 256
    loaded = load_checkpoint(out / "checkpoint")
    assert loaded.cfg.text_bridge == "retrieval" and loaded.cfg.bridge_memory == 256
