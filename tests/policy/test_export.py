"""ONNX export: three graphs, named dynamic I/O, metadata, the export manifest (sha256 of every file, signed with
--sign), atomic writes, parity with torch (fp32 <= 1e-4): each graph, and whole 10-step chunks (actions and target
points) of a policy that points (its own grounding head, image K/V pooled for the body) and of one that does not.

One `mot export --sign KEY` per tiny checkpoint serves the whole module (export is the slow part).
"""

import contextlib
import io
import json

import numpy as np
import onnx
import pytest
import torch

from policy import MoTPolicy, PolicyConfig
from policy.checkpoint import checkpoint_id, load_checkpoint, save_checkpoint
from policy.cli import export_main as main
from policy.export import (GRAPHS, INPUTS, MODULES, ExportError, example_inputs, export_policy, graph_outputs, graph_paths,
                           read_metadata, resize_frames)

from policy.artifacts import sha256_file
from policy.attention import attend, attention_bias
from policy.experts import TanhGelu
from policy.backends import OnnxRuntimeBackend
from policy.errors import ArtifactMismatchError, InputError
from policy.signing import generate_key_pair, load_public_key, verify_signature

from policy.sampling import euler_sample

from .conftest import make_batch, randomize_body
from .policies import tiny_policy
from .tiny_mpnet import write_tiny_mpnet

ort = pytest.importorskip("onnxruntime")


@pytest.fixture(scope="module")
def signing_key(tmp_path_factory) -> dict:
    return generate_key_pair(tmp_path_factory.mktemp("keys"))


def _mot_export(policy, root, *args) -> tuple:
    """save_checkpoint + `mot export` (with its parity check) -> (the loaded policy, checkpoint, onnx dir, report)."""
    ckpt = root / "ckpt"
    save_checkpoint(policy, ckpt)
    out = ckpt.parent / "onnx"
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        assert main(["--checkpoint", str(ckpt), "--out", str(out), *args]) == 0
    return load_checkpoint(ckpt), ckpt, out, json.loads(printed.getvalue())


@pytest.fixture(scope="module")
def exported_both(tmp_path_factory, signing_key):
    """{"no_points": a policy without target points, "points": one that points, prefix_pool 2, "bridged": one that points
    with a (tiny) MPNet language expert bridged to its MoT layers by projections, "retrieval": by a token memory}:
    (policy, ckpt, out, the `mot export` report)."""
    root = tmp_path_factory.mktemp("export")
    mpnet = str(write_tiny_mpnet(root / "tiny_mpnet"))
    return {"no_points": _mot_export(tiny_policy(points=False), root / "a", "--sign", signing_key["private_key"]),
            "points": _mot_export(tiny_policy(points=True), root / "b"),
            "bridged": _mot_export(tiny_policy(points=True, language_model=mpnet), root / "c"),
            "retrieval": _mot_export(tiny_policy(points=True, language_model=mpnet, text_bridge="retrieval"), root / "d")}


@pytest.fixture(scope="module")
def exported(exported_both):
    return exported_both["no_points"][:3]


@pytest.fixture(scope="module")
def exported_points(exported_both):
    return exported_both["points"][:3]


def _session(path):
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


@pytest.mark.parametrize("kind", ["no_points", "points", "bridged", "retrieval"])
def test_three_graphs_pass_the_checker_with_named_dynamic_io(exported_both, kind):
    policy, _, out, _ = exported_both[kind]
    assert ("points" in graph_outputs(policy.cfg, "obs_encoder")) == (kind != "no_points")
    for graph, path in graph_paths(out).items():
        model = onnx.load(str(path))
        onnx.checker.check_model(model, full_check=True)
        assert [i.name for i in model.graph.input] == list(INPUTS[graph])
        assert [o.name for o in model.graph.output] == list(graph_outputs(policy.cfg, graph))
        for value in list(model.graph.input) + list(model.graph.output):
            dims = value.type.tensor_type.shape.dim
            batch_axis = 2 if value.name.endswith("_kv") else 0
            assert dims[batch_axis].dim_param, f"{graph}.{value.name}: batch axis must be dynamic"
    signed = ["export_manifest.sig"] if kind == "no_points" else []
    assert sorted(p.name for p in out.iterdir()) == sorted([*(f"{g}.onnx" for g in GRAPHS), "export_manifest.json",
                                                            *signed])  # no temp files left


# Every op the graphs may use: all in TensorRT 10's ONNX parser (onnx-tensorrt docs/operators.md, 10.1) for the
# types the graphs use them with. Not there: Resize with antialias=1 (the parser refuses it), so no Resize at all.
TENSORRT_OPS = {"Abs", "Add", "And", "ArgMax", "Cast", "Clip", "Concat", "Constant", "Conv", "Cos", "Div", "Equal", "Erf",
                "Expand", "Gather", "GatherElements", "Gemm", "IsNaN", "LayerNormalization", "Less", "MatMul", "Mod",
                "Mul", "Neg", "Not", "Pow", "Range", "ReduceMax", "ReduceMean", "ReduceSum", "Relu", "Reshape", "Shape",
                "Sigmoid", "Sin", "Slice", "Softmax", "Split", "Sqrt", "Squeeze", "Sub", "Tanh", "Transpose", "Unsqueeze",
                "Where"}


def test_graphs_use_only_tensorrt_parsable_ops_and_the_points_are_argmax_and_gather(exported_points):
    _, _, out = exported_points
    ops = {g: {n.op_type for n in onnx.load(str(p)).graph.node} for g, p in graph_paths(out).items()}
    assert {g: sorted(o - TENSORRT_OPS) for g, o in ops.items()} == {g: [] for g in GRAPHS}
    assert {"ArgMax", "GatherElements"} <= ops["obs_encoder"]  # the grounding head's top token and its offset
    argmax = [n for n in onnx.load(str(graph_paths(out)["obs_encoder"])).graph.node if n.op_type == "ArgMax"]
    assert len(argmax) == 2  # object, pad


def test_export_forms_of_gelu_and_attention_compute_what_torch_runs(monkeypatch):
    """The body's GELU and the joint attention are written out while exporting (policy.experts.TanhGelu,
    policy.attention.attend): the same functions as torch's F.gelu(tanh) and scaled_dot_product_attention."""
    torch.manual_seed(0)
    x = torch.randn(2, 10, 64) * 3
    q, k, v = torch.randn(3, 2, 4, 7, 8).unbind(0)
    keys_valid = torch.rand(2, 1, 1, 7) > 0.3
    keys_valid[..., 0] = True
    bias = attention_bias(keys_valid, torch.float32)
    torch_runs = TanhGelu()(x), attend(q, k, v, bias)
    monkeypatch.setattr(torch.onnx, "is_in_onnx_export", lambda: True)
    exported = TanhGelu()(x), attend(q, k, v, bias)
    assert torch.allclose(exported[0], torch.nn.functional.gelu(x, approximate="tanh"), atol=2e-6)
    assert torch.allclose(exported[0], torch_runs[0], atol=2e-6)
    assert torch.allclose(exported[1], torch_runs[1], atol=1e-6)


def test_onnxruntime_fuses_the_body_gelu_and_the_attention_transpose(exported_points, tmp_path):
    """What each Euler step costs on a CPU is mostly per-node overhead: the denoiser's GELU must reach onnxruntime
    as FastGelu (one kernel, not nine element-wise passes) and q @ k^T as one FusedMatMul per layer."""
    policy, _, out = exported_points
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.optimized_model_filepath = str(tmp_path / "denoiser_optimized.onnx")
    ort.InferenceSession(str(graph_paths(out)["denoiser"]), options, providers=["CPUExecutionProvider"])
    ops = [n.op_type for n in onnx.load(options.optimized_model_filepath).graph.node]
    layers = len(policy.layers)
    assert ops.count("FastGelu") == layers and "Tanh" not in ops and "Pow" not in ops
    assert ops.count("FusedMatMul") >= layers and ops.count("Softmax") == layers


def test_metadata_carries_checkpoint_config_and_preprocessing(exported):
    policy, ckpt, out = exported
    for graph, path in graph_paths(out).items():
        meta = read_metadata(path)
        assert meta["mot.graph"] == graph
        assert meta["mot.checkpoint_sha256"] == checkpoint_id(ckpt)
        assert PolicyConfig.from_dict(json.loads(meta["mot.config"])) == policy.cfg
        pre = json.loads(meta["mot.preprocessing"])
        assert pre["image"]["resize_to"] == policy.cfg.image_size
        assert (pre["image"]["offset"], pre["image"]["scale"]) == (127.0, 128.0)
        assert np.allclose(pre["state"]["std"], policy.norm_stats.state_std)
        assert np.allclose(pre["action"]["mean"], policy.norm_stats.action_mean)
        assert meta["mot.dtype"] == "float32"


@pytest.mark.parametrize("kind", ["no_points", "points", "bridged", "retrieval"])
@pytest.mark.parametrize("batch,text_len", [(1, 3), (3, 9)])
def test_each_graph_matches_torch(exported_both, kind, batch, text_len):
    policy, _, out, _ = exported_both[kind]
    inputs = example_inputs(policy, batch=batch, text_len=text_len, seed=batch)
    for graph, path in graph_paths(out).items():
        got = _session(path).run(None, {n: x.numpy() for n, x in zip(INPUTS[graph], inputs[graph])})
        with torch.no_grad():
            want = MODULES[graph](policy)(*inputs[graph])
        want = want if isinstance(want, tuple) else (want,)
        for g, w in zip(got, want):
            assert g.shape == tuple(w.shape)
            if g.dtype == bool:
                assert np.array_equal(g, w.numpy())
            else:
                assert np.abs(g - w.numpy()).max() <= 1e-4, graph


def _chunk_onnx(out, policy, batch, noise):
    """The full 10-step chunk through the three sessions with numpy glue (no runner) -> (actions, points or None)."""
    obs = {k: v for k, v in batch.items() if k != "actions"}
    ids, valid = policy.tokenizer.encode(obs["instruction"])
    s = {g: _session(p) for g, p in graph_paths(out).items()}
    (text_kv,) = s["text_encoder"].run(None, {"token_ids": ids, "text_valid": valid})
    images = np.stack([obs["images"][c] for c in policy.cfg.cameras], axis=1)
    state = policy.normalize_robot_state(torch.from_numpy(obs["state"])).numpy()
    kv, pvalid, *points = s["obs_encoder"].run(None, {"images": images, "robot_state_norm": state, "text_kv": text_kv,
                                                      "text_valid": valid})
    b = images.shape[0]
    step = lambda x, t: s["denoiser"].run(None, {"x_t": x, "t": np.full((b,), t, np.float32), "prefix_kv": kv,  # noqa
                                                 "prefix_valid": pvalid})[0]
    x = euler_sample(step, noise.numpy(), policy.cfg.num_inference_steps)
    actions = policy.unnormalize_actions(torch.from_numpy(x), torch.from_numpy(obs["state"])).numpy()
    return actions, (points[0] if points else None)


def _chunk_torch(policy, batch, noise):
    """The same chunk in torch -> (actions (policy.sample_actions), points (MoTPolicy.observe) or None)."""
    actions = policy.sample_actions(batch, noise=noise).numpy()
    with torch.no_grad():
        text = policy.encode_text(*policy.tokenizer(batch["instruction"]))
        images = torch.from_numpy(np.stack([batch["images"][c] for c in policy.cfg.cameras], axis=1))
        _, points, _ = policy.observe(images, policy.normalize_robot_state(torch.from_numpy(batch["state"])), text)
    return actions, (None if points is None else points.numpy())


@pytest.mark.parametrize("kind", ["no_points", "points", "bridged", "retrieval"])
def test_full_chunk_matches_torch_on_random_observations(exported_both, kind):
    policy, _, out, _ = exported_both[kind]
    batch = make_batch(policy.cfg, batch_size=3, seed=2, actions=False)  # padded text in the batch
    batch["state"] = batch["state"][:, :policy.cfg.robot_state_dim]  # callers pass the robot's state
    noise = torch.randn(3, policy.cfg.horizon, policy.cfg.action_dim)
    (got, got_points), (want, want_points) = _chunk_onnx(out, policy, batch, noise), _chunk_torch(policy, batch, noise)
    assert np.abs(got - want).max() <= 1e-4
    if kind == "no_points":
        assert got_points is None and want_points is None
    else:
        assert got_points.shape == (3, policy.cfg.target_point_dim) and np.abs(got_points - want_points).max() <= 1e-4
        assert ((got_points >= 0) & (got_points <= 1)).all()


def test_mot_export_reports_parity_of_the_points_and_of_whole_chunks(exported_both):
    for kind, (_, _, _, report) in exported_both.items():
        parity = report["parity_max_abs"]
        assert set(parity) >= {"text_encoder", "obs_encoder", "denoiser", "chunk_actions"}
        assert all(v <= 1e-4 for v in parity.values()), parity
        assert ({"points", "confidence", "chunk_points"} <= set(parity)) == (kind != "no_points")


def test_full_chunk_matches_torch_on_rendered_observations(exported_points):
    policy, _, out = exported_points
    try:
        from sim.tabletop_env import TabletopEnv

        env = TabletopEnv(render_mode="rgb_array", image_size=policy.cfg.image_size, cameras=policy.cfg.cameras)
        obs, _ = env.reset(seed=0)
        env.close()
    except Exception as e:  # no MuJoCo/EGL rendering on this machine
        pytest.skip(f"sim rendering unavailable: {type(e).__name__}: {e}")
    batch = {"images": {c: obs["images"][c][None] for c in policy.cfg.cameras},
             "state": obs["state"][None].astype(np.float32), "instruction": [obs["instruction"]]}
    noise = torch.randn(1, policy.cfg.horizon, policy.cfg.action_dim)
    want = policy.sample_actions(batch, noise=noise).numpy()
    assert np.abs(_chunk_onnx(out, policy, batch, noise)[0] - want).max() <= 1e-4


@pytest.mark.parametrize("hw", [(96, 80), (240, 320), (50, 70)])
def test_frames_of_another_size_are_resized_inside_the_graph(exported_points, hw):
    """H, W are dynamic: the graph resizes like policy.vision.preprocess_images (torch's antialiased bilinear)."""
    policy, _, out = exported_points
    cfg = policy.cfg
    batch = make_batch(cfg, batch_size=1, actions=False)
    batch["state"] = batch["state"][:, :cfg.robot_state_dim]
    rng = np.random.default_rng(1)
    batch["images"] = {c: rng.integers(0, 256, (1, *hw, 3), dtype=np.uint8) for c in cfg.cameras}
    noise = torch.randn(1, cfg.horizon, cfg.action_dim)
    (got, got_points), (want, want_points) = _chunk_onnx(out, policy, batch, noise), _chunk_torch(policy, batch, noise)
    assert np.abs(got - want).max() <= 1e-4 and np.abs(got_points - want_points).max() <= 1e-4


@pytest.mark.parametrize("hw", [(64, 64), (128, 128), (96, 80), (480, 640), (20, 30), (8, 200)])
def test_resize_frames_is_torchs_antialiased_bilinear(hw):
    """The graph's resize (two matrix products, TensorRT-parsable) against F.interpolate(antialias=True), which the
    torch path runs (policy.vision.preprocess_images): up and down, square or not; the identity at the model's size."""
    images = torch.randint(0, 256, (2, 2, *hw, 3), dtype=torch.uint8)
    got = resize_frames(images, 64)
    x = images.reshape(4, *hw, 3).permute(0, 3, 1, 2).float()
    want = torch.nn.functional.interpolate(x, size=(64, 64), mode="bilinear", antialias=True, align_corners=False)
    want = want.permute(0, 2, 3, 1).reshape(2, 2, 64, 64, 3)
    assert got.shape == (2, 2, 64, 64, 3) and (got - want).abs().max() <= 1e-3  # grey levels (0..255)
    if hw == (64, 64):
        assert torch.equal(got, images.float())


def test_bidirectional_prefix_is_refused(tmp_path):
    policy = MoTPolicy(PolicyConfig.preset("tiny", prefix_mask="bidirectional"))
    with pytest.raises(ExportError, match=r"prefix_mask: export supports 'blockwise' only"):
        export_policy(policy, tmp_path)
    assert not any(tmp_path.iterdir())


def test_failed_export_leaves_no_file(tiny_policy, tmp_path, monkeypatch):
    import policy.export as ex

    def broken(*args, **kwargs):
        raise RuntimeError("exporter crashed")

    monkeypatch.setattr(ex, "_finish", broken)
    with pytest.raises(RuntimeError, match="exporter crashed"):
        export_policy(tiny_policy, tmp_path, graphs=("denoiser",))
    assert list(tmp_path.iterdir()) == []


def test_fp16_denoiser_passes_the_checker_and_stays_close(tiny_policy, tmp_path):
    paths = export_policy(tiny_policy, tmp_path, graphs=("denoiser",), fp16=True)
    model = onnx.load(str(paths["denoiser"]))
    onnx.checker.check_model(model, full_check=True)
    assert read_metadata(paths["denoiser"])["mot.dtype"] == "float16"
    inputs = example_inputs(tiny_policy)["denoiser"]
    try:
        (got,) = _session(paths["denoiser"]).run(None, {n: x.numpy() for n, x in zip(INPUTS["denoiser"], inputs)})
    except Exception as e:  # the CPU provider lacks some fp16 kernels; TensorRT/CUDA are the fp16 targets
        pytest.skip(f"onnxruntime CPU cannot run this fp16 graph: {e}")
    with torch.no_grad():
        want = MODULES["denoiser"](tiny_policy)(*inputs).numpy()
    assert got.dtype == np.float32 and np.abs(got - want).max() <= 2e-2


def test_bad_export_arguments_are_refused(tiny_policy, tmp_path):
    with pytest.raises(ExportError, match=r"opset: expected >= 18"):
        export_policy(tiny_policy, tmp_path, opset=13)
    with pytest.raises(ExportError, match=r"graphs: expected a subset"):
        export_policy(tiny_policy, tmp_path, graphs=("decoder",))


@pytest.mark.parametrize("extra", [{"image_token_stride": 16, "prefix_pool": 2}], ids=["token_stride16_pool2"])
def test_longer_prefix_policies_export_and_match_torch(tmp_path, extra):
    """Finer image tokens lengthen the prefix the graphs pass on: export, reload, compare."""
    torch.manual_seed(1)
    policy = randomize_body(MoTPolicy(PolicyConfig.preset("tiny", **extra)))
    save_checkpoint(policy, tmp_path / "ckpt")
    assert main(["--checkpoint", str(tmp_path / "ckpt"), "--out", str(tmp_path / "onnx")]) == 0
    policy = load_checkpoint(tmp_path / "ckpt")
    assert all(getattr(policy.cfg, k) == v for k, v in extra.items())
    batch = make_batch(policy.cfg, batch_size=2, seed=3, actions=False)
    noise = torch.randn(2, policy.cfg.horizon, policy.cfg.action_dim)
    want = policy.sample_actions(batch, noise=noise).numpy()
    assert np.abs(_chunk_onnx(tmp_path / "onnx", policy, batch, noise)[0] - want).max() <= 1e-4


# -- the export manifest ---------------------------------------------------------------------------
def test_export_manifest_hashes_every_file_and_mot_export_signs_it(exported, signing_key):
    policy, ckpt, out = exported
    data = (out / "export_manifest.json").read_bytes()
    manifest = json.loads(data)
    assert manifest["checkpoint_sha256"] == checkpoint_id(ckpt) and manifest["opset"] == 18
    assert {g: r["sha256"] for g, r in manifest["graphs"].items()} == {g: sha256_file(p) for g, p in graph_paths(out).items()}
    key = signing_key
    assert verify_signature(out / "export_manifest.json", data, load_public_key(key["public_key"])) == key["key_id"]
    backend = OnnxRuntimeBackend(policy, ckpt, onnx_dir=out, trusted_key=key["public_key"])
    assert backend.name == "onnxruntime"


def test_partial_reexport_keeps_the_other_entries_and_drops_the_stale_signature(exported, signing_key, tmp_path):
    import shutil

    policy, ckpt, out = exported
    copy = tmp_path / "onnx"
    shutil.copytree(out, copy)
    before = json.loads((copy / "export_manifest.json").read_text())
    export_policy(policy, copy, checkpoint_sha256=checkpoint_id(ckpt), graphs=("denoiser",))  # unsigned
    after = json.loads((copy / "export_manifest.json").read_text())
    assert after["graphs"]["text_encoder"] == before["graphs"]["text_encoder"]
    assert after["graphs"]["denoiser"]["sha256"] == sha256_file(copy / "denoiser.onnx")
    assert not (copy / "export_manifest.sig").exists()  # a signature never outlives the bytes it signed
    with pytest.raises(ArtifactMismatchError, match=r"expected a signed manifest"):
        OnnxRuntimeBackend(policy, ckpt, onnx_dir=copy, trusted_key=signing_key["public_key"])


def test_mot_export_with_a_public_key_to_sign_fails_before_exporting(exported, signing_key, tmp_path):
    _, ckpt, _ = exported
    with pytest.raises(InputError, match=r"sign: expected a PEM private key, .*that is a public key"):
        main(["--checkpoint", str(ckpt), "--out", str(tmp_path / "onnx"), "--sign", signing_key["public_key"]])
    assert not (tmp_path / "onnx").exists()
