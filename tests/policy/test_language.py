"""The language expert computes exactly what the pretrained BERT computes (block-wise mask)."""

import json

import pytest
import torch

from policy import MoTPolicy, PolicyConfig
from policy.language import default_language_model

transformers = pytest.importorskip("transformers")


def _text_hidden(policy: MoTPolicy, instructions: list[str]):
    ids, valid = policy.tokenizer(instructions)
    with torch.no_grad():
        hs, _ = policy._forward([("text", policy.text_embed(ids), None)], None, valid)
    return ids, valid, hs[0]


def test_minilm_language_expert_matches_bert_model():
    policy = MoTPolicy(PolicyConfig.preset("small")).eval()
    reference = transformers.BertModel.from_pretrained(str(default_language_model()), add_pooling_layer=False).eval()
    instructions = ["put the red cube on the blue pad", "hoist the crimson block", "touch it"]
    ids, valid, ours = _text_hidden(policy, instructions)
    with torch.no_grad():
        theirs = reference(input_ids=ids, attention_mask=valid.long()).last_hidden_state
    # Padding positions are never attended to; compare the real tokens.
    err = (ours - theirs).abs()[valid].max().item()
    assert err <= 1e-4, f"language expert deviates from BertModel by {err}"
    # And the cached text K/V are what a second encode of the same text gives (deterministic).
    kv = policy.encode_text(ids, valid).kv
    assert torch.equal(kv, policy.encode_text(ids, valid).kv)


def test_user_bert_folder_loads_through_the_same_interface(tmp_path):
    """A user's own BERT checkpoint on disk (here a tiny random one) becomes the language expert."""
    cfg = transformers.BertConfig(vocab_size=30522, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                                  intermediate_size=128, max_position_embeddings=64)
    model = transformers.BertModel(cfg, add_pooling_layer=False).eval()
    model.save_pretrained(tmp_path, safe_serialization=True)
    (tmp_path / "tokenizer.json").write_bytes((default_language_model() / "tokenizer.json").read_bytes())
    assert json.loads((tmp_path / "config.json").read_text())["hidden_size"] == 64

    policy = MoTPolicy(PolicyConfig.preset("tiny", language_model=str(tmp_path), language_layers=None)).eval()
    assert policy.dims.heads == 4 and policy.dims.width == 64 and len(policy.layers) == 2
    ids, valid, ours = _text_hidden(policy, ["pick up the red cube", "go"])
    with torch.no_grad():
        theirs = model(input_ids=ids, attention_mask=valid.long()).last_hidden_state
    assert (ours - theirs).abs()[valid].max().item() <= 1e-5


def test_bad_language_folder_is_refused(tmp_path):
    with pytest.raises(FileNotFoundError, match="language_model"):
        MoTPolicy(PolicyConfig.preset("tiny", language_model=str(tmp_path)))


def test_language_benchmark_scores_held_out_synonyms_against_the_train_words():
    """`mot bench language` (default: every supported expert) -> one entry per expert; an expert that is not
    installed (mpnet on a bare checkout) is an entry saying how to install it, not a failure."""
    import json
    import subprocess
    import sys

    from policy.text import LANGUAGE_MODELS

    done = subprocess.run([sys.executable, "-m", "training.cli", "bench", "language", "--json"], capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(done.stdout)
    assert result["chance_colour"] == 0.125
    experts = {e["name"]: e for e in result["experts"]}
    assert tuple(experts) == LANGUAGE_MODELS and experts["minilm"]["installed"]
    layers = {"bert": 6, "mpnet": 12}
    for e in experts.values():
        if not e["installed"]:
            assert e == {"name": "mpnet", "installed": False, "how": "make mpnet"}
            continue
        assert e["colour_words"] == 16 and e["phrases"] == 64 and e["chance_colour"] == 0.125 and e["parameters"] > 0
        for key in ("colour_word_nn_acc", "shape_word_nn_acc", "colour_phrase_nn_acc", "phrase_colour_nn_acc",
                    "phrase_both_nn_acc"):
            assert 0.0 <= e[key] <= 1.0
        assert e["phrase_both_nn_acc"] <= e["phrase_colour_nn_acc"]  # both right implies the colour is
        assert 0 <= e["colour_phrase_nn_hits"] <= 16 and e["colour_phrase_nn_acc"] == e["colour_phrase_nn_hits"] / 16
        by_layer = e["colour_token_nn_acc_by_layer"]
        assert len(by_layer) == layers[e["model_type"]] + 1  # embeddings + every layer
        assert all(0.0 <= a <= 1.0 and (a * 16).is_integer() for a in by_layer)
        assert e["best_colour_token_nn_acc"] == max(by_layer) == by_layer[e["best_colour_token_layer"]]


def test_language_benchmark_reports_an_uninstalled_expert(tmp_path, monkeypatch):
    from training import bench

    monkeypatch.setenv("MOT_MODELS_DIR", str(tmp_path))  # nothing installed there
    assert bench.load_script("language").measure_named("mpnet") == {"name": "mpnet", "installed": False,
                                                                     "how": "make mpnet"}
