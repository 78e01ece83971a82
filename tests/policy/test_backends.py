"""Backends: onnxruntime through PolicyRunner (same actions and errors as torch), artifact refusal,
TensorRT cache-key / engine-file / profile logic on CPU, engines themselves only with tensorrt + CUDA."""

import json
import shutil
import threading

import numpy as np
import onnx
import pytest
import torch

from policy import MoTPolicy, PolicyConfig
from policy.backends import ArtifactMismatchError, OnnxRuntimeBackend, ensure_graphs
from policy.runtime import make_backend
from policy.tensorrt import EngineKey, check_in_profile, profile_shapes, read_engine, write_engine
from policy.checkpoint import checkpoint_id, save_checkpoint
from policy.export import GRAPHS, graph_paths, read_metadata
from policy.runtime import PolicyRunner

from .conftest import make_batch, randomize_body

pytest.importorskip("onnxruntime")


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    torch.manual_seed(0)
    policy = randomize_body(MoTPolicy(PolicyConfig.preset("tiny")))
    return save_checkpoint(policy, tmp_path_factory.mktemp("backends") / "ckpt")


@pytest.fixture(scope="module")
def runners(checkpoint):
    """(onnxruntime runner, torch runner) on the same checkpoint; the first exports its graphs."""
    ort_runner = PolicyRunner.from_checkpoint(checkpoint, backend="onnxruntime")
    return ort_runner, PolicyRunner.from_checkpoint(checkpoint)


def _single(cfg, seed=0):
    b = make_batch(cfg, batch_size=1, seed=seed, actions=False)
    return {k: v[0] for k, v in b["images"].items()}, b["state"][0], b["instruction"][0]


def test_from_checkpoint_exports_missing_graphs_into_the_checkpoint(checkpoint, runners):
    onnx_dir = checkpoint / "onnx"
    assert sorted(p.name for p in onnx_dir.iterdir()) == sorted(f"{g}.onnx" for g in GRAPHS)  # no temp files
    for path in graph_paths(onnx_dir).values():
        assert read_metadata(path)["mot.checkpoint_sha256"] == checkpoint_id(checkpoint)
    assert runners[0].backend.name == "onnxruntime"


@pytest.mark.parametrize("seed", [0, 1])
def test_runner_gives_the_same_actions_through_torch_and_onnxruntime(runners, seed):
    ort_runner, torch_runner = runners
    cfg = ort_runner.cfg
    images, state, instruction = _single(cfg, seed)
    noise = np.random.default_rng(seed).standard_normal((cfg.horizon, cfg.action_dim)).astype(np.float32)
    a = ort_runner.infer(images, state, instruction, noise=noise)
    b = torch_runner.infer(images, state, instruction, noise=noise)
    assert a.shape == (cfg.horizon, cfg.action_dim) and a.dtype == np.float32
    assert np.abs(a - b).max() <= 1e-4


def _bad_calls(cfg):
    images, state, instruction = _single(cfg)
    return {
        "missing camera": ({"front": images["front"]}, state, instruction),
        "extra camera": ({**images, "top": images["front"]}, state, instruction),
        "float frame": ({k: v.astype(np.float32) for k, v in images.items()}, state, instruction),
        "nan state": (images, np.full_like(state, np.nan), instruction),
        "short state": (images, state[:3], instruction),
        "float64 state": (images, state.astype(np.float64), instruction),
        "list state": (images, state.tolist(), instruction),
        "no instruction": (images, state, None),
        "empty instruction": (images, state, "   "),
        "long instruction": (images, state, "pick " * 200),
    }


@pytest.mark.parametrize("case", list(_bad_calls(PolicyConfig.preset("tiny"))))
def test_bad_inputs_raise_the_same_errors_as_torch(runners, case):
    ort_runner, torch_runner = runners
    args = _bad_calls(ort_runner.cfg)[case]
    errors = []
    for runner in (torch_runner, ort_runner):
        with pytest.raises((TypeError, ValueError)) as info:
            runner.infer(*args)
        errors.append((type(info.value), str(info.value)))
    assert errors[0] == errors[1]


def test_text_is_encoded_once_per_instruction(runners):
    ort_runner = runners[0]
    calls, encode = [], ort_runner.backend.encode_text
    ort_runner.backend.encode_text = lambda *a: calls.append(1) or encode(*a)
    try:
        images, state, _ = _single(ort_runner.cfg)
        for _ in range(3):
            ort_runner.infer(images, state, "stack the green cube on the red one")
        ort_runner.infer(images, state, "touch the blue cube")
    finally:
        ort_runner.backend.encode_text = encode
    assert len(calls) == 2


def test_concurrent_calls_from_threads_agree(runners):
    ort_runner = runners[0]
    images, state, instruction = _single(ort_runner.cfg)
    noise = np.ones((ort_runner.cfg.horizon, ort_runner.cfg.action_dim), np.float32)
    reference = ort_runner.infer(images, state, instruction, noise=noise)
    results = []
    threads = [threading.Thread(target=lambda: results.append(ort_runner.infer(images, state, instruction, noise=noise)))
               for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(results) == 4 and all(np.array_equal(r, reference) for r in results)


def _rewrite_metadata(path, **changes):
    model = onnx.load(str(path))
    for prop in model.metadata_props:
        if prop.key in changes:
            prop.value = changes[prop.key]
    onnx.save(model, str(path))


def test_graphs_from_another_checkpoint_are_refused(checkpoint, runners, tmp_path):
    policy = runners[0].policy
    stale = tmp_path / "onnx"
    shutil.copytree(checkpoint / "onnx", stale)
    _rewrite_metadata(stale / "denoiser.onnx", **{"mot.checkpoint_sha256": "0" * 64})
    with pytest.raises(ArtifactMismatchError, match=r"denoiser.onnx: exported from checkpoint 0{64}, but the "
                                                    r"loaded checkpoint is [0-9a-f]{64}"):
        OnnxRuntimeBackend(policy, checkpoint, onnx_dir=stale)
    # A graph in the wrong role is refused too.
    shutil.copy(checkpoint / "onnx" / "text_encoder.onnx", stale / "denoiser.onnx")
    with pytest.raises(ArtifactMismatchError, match=r"expected graph 'denoiser', received 'text_encoder'"):
        OnnxRuntimeBackend(policy, checkpoint, onnx_dir=stale)


def test_missing_graphs_without_export_raise_a_clear_error(checkpoint, runners, tmp_path):
    with pytest.raises(FileNotFoundError, match=r"run `mot export --checkpoint"):
        ensure_graphs(runners[0].policy, checkpoint, tmp_path, export_if_missing=False)


def test_unknown_backend_and_provider_are_refused(runners, checkpoint):
    with pytest.raises(ValueError, match=r"backend: expected one of"):
        make_backend("openvino", runners[0].policy, checkpoint)
    with pytest.raises(ValueError, match=r"providers: expected a subset"):
        OnnxRuntimeBackend(runners[0].policy, checkpoint, providers=["NoSuchExecutionProvider"])


# -- TensorRT: cache key, engine files, profiles (pure logic, no GPU) -------------------------------
def _key(**changes) -> EngineKey:
    base = dict(checkpoint_sha256="a" * 64, graph="denoiser", gpu="NVIDIA Jetson AGX Orin (sm_87)",
                tensorrt="10.3.0", precision="fp16", profile='{"x_t": [[1, 8, 7], [1, 8, 7], [4, 8, 7]]}')
    return EngineKey(**{**base, **changes})


def test_engine_key_changes_with_every_field():
    base = _key()
    variants = [_key(checkpoint_sha256="b" * 64), _key(graph="obs_encoder"), _key(gpu="NVIDIA GeForce RTX 4090 (sm_89)"),
                _key(tensorrt="10.7.0"), _key(precision="fp32"), _key(profile="{}")]
    digests = {base.digest} | {k.digest for k in variants}
    assert len(digests) == len(variants) + 1
    assert base.filename() == f"denoiser-{base.digest[:16]}.engine" and base.digest == _key().digest


def test_engine_file_round_trip_and_refusal(tmp_path):
    path = tmp_path / _key().filename()
    write_engine(path, _key(), b"\x00engine-bytes")
    assert read_engine(path, _key()) == b"\x00engine-bytes"
    assert [p.name for p in tmp_path.iterdir()] == [path.name]  # written atomically, no temp left
    with pytest.raises(ArtifactMismatchError, match=r"gpu: expected 'NVIDIA GeForce RTX 4090 \(sm_89\)', engine has "
                                                    r"'NVIDIA Jetson AGX Orin \(sm_87\)'"):
        read_engine(path, _key(gpu="NVIDIA GeForce RTX 4090 (sm_89)"))
    with pytest.raises(ArtifactMismatchError, match=r"checkpoint_sha256: expected 'b{64}'"):
        read_engine(path, _key(checkpoint_sha256="b" * 64))
    with pytest.raises(ArtifactMismatchError, match=r"tensorrt: expected '10.7.0'"):
        read_engine(path, _key(tensorrt="10.7.0"))
    raw = tmp_path / "plain.engine"
    raw.write_bytes(b"a TensorRT plan without our header")
    with pytest.raises(ArtifactMismatchError, match=r"expected a mot-policy engine file"):
        read_engine(raw, _key())
    # A header edited to claim another key but keeping the old digest is refused as well.
    data = path.read_bytes().replace(b"10.3.0", b"10.7.0")
    path.write_bytes(data)
    with pytest.raises(ArtifactMismatchError, match=r"digest differs"):
        read_engine(path, _key(tensorrt="10.7.0"))


def test_profiles_cover_the_batch_and_text_ranges(tiny_policy):
    cfg, dims = tiny_policy.cfg, tiny_policy.dims
    extra = cfg.image_tokens + 1
    for graph in GRAPHS:
        profile = profile_shapes(tiny_policy, graph, max_batch=4, opt_batch=2, opt_text_len=12)
        for name, (lo, opt, hi) in profile.items():
            assert len(lo) == len(opt) == len(hi) and all(a <= b <= c for a, b, c in zip(lo, opt, hi)), name
            batch_axis = 2 if name.endswith("_kv") else 0
            assert (lo[batch_axis], opt[batch_axis], hi[batch_axis]) == (1, 2, 4), name
    den = profile_shapes(tiny_policy, "denoiser", max_batch=4)
    assert den["prefix_kv"][2] == (dims.layers, 2, 4, dims.heads, cfg.max_text_tokens + extra, dims.head_dim)
    assert den["prefix_valid"][0] == (1, 1 + extra)
    obs = profile_shapes(tiny_policy, "obs_encoder", image_hw=(480, 640))
    assert obs["images"][0] == obs["images"][2] == (1, len(cfg.cameras), 480, 640, 3)
    text = profile_shapes(tiny_policy, "text_encoder")
    assert text["token_ids"] == ((1, 1), (1, 16), (1, cfg.max_text_tokens))
    with pytest.raises(ValueError, match=r"opt_batch: expected 1 <= opt_batch <= max_batch=1"):
        profile_shapes(tiny_policy, "denoiser", opt_batch=2)


def test_shapes_outside_the_profile_raise_a_clear_error(tiny_policy):
    profile = profile_shapes(tiny_policy, "denoiser", max_batch=2)
    cfg = tiny_policy.cfg
    check_in_profile("denoiser", {"x_t": (2, cfg.horizon, cfg.action_dim)}, profile)
    with pytest.raises(ValueError, match=r"denoiser.x_t: expected a shape between .* received \(3, 8, 7\); rebuild"):
        check_in_profile("denoiser", {"x_t": (3, cfg.horizon, cfg.action_dim)}, profile)


def _tensorrt_missing() -> str | None:
    try:
        import tensorrt  # noqa: F401
    except ImportError:
        return "tensorrt is not installed (Jetson/RTX only; see docs/deploy.md)"
    if not torch.cuda.is_available():
        return "no CUDA device"
    return None


def test_tensorrt_backend_without_tensorrt_says_how_to_get_it(runners, checkpoint):
    if _tensorrt_missing() is None:
        pytest.skip("tensorrt and CUDA are present")
    with pytest.raises(RuntimeError, match=r"backend 'tensorrt'"):
        make_backend("tensorrt", runners[0].policy, checkpoint)


@pytest.mark.skipif(_tensorrt_missing() is not None, reason=str(_tensorrt_missing()))
def test_tensorrt_engines_match_torch_and_are_cached(checkpoint, runners):
    torch_runner = runners[1]
    trt_runner = PolicyRunner.from_checkpoint(checkpoint, backend="tensorrt", fp16=False)
    cfg = trt_runner.cfg
    images, state, instruction = _single(cfg)
    noise = np.random.default_rng(0).standard_normal((cfg.horizon, cfg.action_dim)).astype(np.float32)
    a = trt_runner.infer(images, state, instruction, noise=noise)
    b = torch_runner.infer(images, state, instruction, noise=noise)
    assert np.abs(a - b).max() <= 1e-3  # TF32 may be on in fp32 engines
    engines = sorted((checkpoint / "onnx" / "trt").glob("*.engine"))
    assert len(engines) == 3
    stamps = [p.stat().st_mtime_ns for p in engines]
    PolicyRunner.from_checkpoint(checkpoint, backend="tensorrt", fp16=False)  # reuses the cache
    assert [p.stat().st_mtime_ns for p in engines] == stamps
    header = json.loads(engines[0].read_bytes()[16:16 + int.from_bytes(engines[0].read_bytes()[8:16], "little")])
    assert header["checkpoint_sha256"] == checkpoint_id(checkpoint)


def test_mot_bench_dispatches_to_the_benchmark_scripts(capsys):
    from training import bench

    assert callable(bench.load_script("inference").main)
    assert bench.main(["no-such-benchmark"]) == 2
    assert "unknown benchmark" in capsys.readouterr().err
