"""Backends: onnxruntime through PolicyRunner (same actions and errors as torch), artifact refusal,
TensorRT cache-key / engine-file / profile logic on CPU, engines themselves only with tensorrt + CUDA (the TensorRT
backend's data path on a CPU, with engines that run in onnxruntime: test_tensorrt_runtime.py)."""

import json
import shutil
import sys
import threading
import types

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
    assert runners[0].policy is None and runners[0].spec.checkpoint_id == checkpoint_id(checkpoint)  # no MoTPolicy
    onnx_dir = checkpoint / "onnx"
    assert sorted(p.name for p in onnx_dir.iterdir()) == sorted([*(f"{g}.onnx" for g in GRAPHS), "export_manifest.json"])  # no temp
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
    policy = runners[0].spec
    stale = tmp_path / "onnx"
    shutil.copytree(checkpoint / "onnx", stale)
    manifest = json.loads((stale / "export_manifest.json").read_text())
    (stale / "export_manifest.json").write_text(json.dumps({**manifest, "checkpoint_sha256": "0" * 64}))
    with pytest.raises(ArtifactMismatchError, match=r"export_manifest.json: exported from checkpoint 0{64}, but the "
                                                    r"loaded checkpoint is [0-9a-f]{64}"):
        OnnxRuntimeBackend(policy, checkpoint, onnx_dir=stale)
    # A graph whose own metadata names another checkpoint (its manifest entry re-hashed) is refused too ...
    (stale / "export_manifest.json").write_text(json.dumps(manifest))
    _rewrite_metadata(stale / "denoiser.onnx", **{"mot.checkpoint_sha256": "0" * 64})
    _rehash(stale, "denoiser")
    with pytest.raises(ArtifactMismatchError, match=r"denoiser.onnx: exported from checkpoint 0{64}, but the "
                                                    r"loaded checkpoint is [0-9a-f]{64}"):
        OnnxRuntimeBackend(policy, checkpoint, onnx_dir=stale)
    # ... and so is a graph in the wrong role.
    shutil.copy(checkpoint / "onnx" / "text_encoder.onnx", stale / "denoiser.onnx")
    _rehash(stale, "denoiser")
    with pytest.raises(ArtifactMismatchError, match=r"expected graph 'denoiser', received 'text_encoder'"):
        OnnxRuntimeBackend(policy, checkpoint, onnx_dir=stale)


def test_missing_graphs_without_export_raise_a_clear_error(checkpoint, runners, tmp_path):
    with pytest.raises(FileNotFoundError, match=r"run `mot export --checkpoint"):
        ensure_graphs(runners[0].spec, checkpoint, tmp_path, export_if_missing=False)


def test_unknown_backend_and_provider_are_refused(runners, checkpoint):
    with pytest.raises(ValueError, match=r"backend: expected one of"):
        make_backend("openvino", runners[0].spec, checkpoint)
    with pytest.raises(ValueError, match=r"providers: expected a subset"):
        OnnxRuntimeBackend(runners[0].spec, checkpoint, providers=["NoSuchExecutionProvider"])


# -- TensorRT: cache key, engine files, profiles (pure logic, no GPU) -------------------------------
def _key(**changes) -> EngineKey:
    base = dict(checkpoint_sha256="a" * 64, graph="denoiser", onnx_sha256="c" * 64, gpu="NVIDIA Jetson AGX Orin (sm_87)",
                tensorrt="10.3.0", precision="fp16", network="weakly_typed",
                profile='{"x_t": [[1, 8, 7], [1, 8, 7], [4, 8, 7]]}')
    return EngineKey(**{**base, **changes})


def test_engine_key_changes_with_every_field():
    base = _key()
    variants = [_key(checkpoint_sha256="b" * 64), _key(graph="obs_encoder"), _key(gpu="NVIDIA GeForce RTX 4090 (sm_89)"),
                _key(tensorrt="10.7.0"), _key(precision="fp32"), _key(profile="{}"), _key(onnx_sha256="d" * 64),
                _key(network="strongly_typed")]
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
    data = path.read_bytes()
    path.write_bytes(data.replace(b"10.3.0", b"10.7.0"))
    with pytest.raises(ArtifactMismatchError, match=r"digest differs"):
        read_engine(path, _key(tensorrt="10.7.0"))
    # So are engine bytes changed behind an intact header (the header records their sha256).
    path.write_bytes(data[:-1] + b"X")
    with pytest.raises(ArtifactMismatchError, match=r"engine bytes sha256 expected [0-9a-f]{64} \(its header\), "
                                                    r"received [0-9a-f]{64}: truncated or modified"):
        read_engine(path, _key())


def test_profiles_cover_the_batch_and_text_ranges(tiny_policy):
    cfg, dims = tiny_policy.cfg, tiny_policy.dims
    extra = cfg.body_image_tokens + 1
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

        from policy.cuda import Cuda, import_cudart

        Cuda(import_cudart())
    except ImportError:
        return "tensorrt is not installed (Jetson/RTX only; see docs/deploy.md)"
    except RuntimeError as e:  # no cuda-python, no device
        return str(e)
    return None


def test_tensorrt_backend_without_tensorrt_says_how_to_get_it(runners, checkpoint):
    if _tensorrt_missing() is None:
        pytest.skip("tensorrt and CUDA are present")
    with pytest.raises(RuntimeError, match=r"backend 'tensorrt'"):
        make_backend("tensorrt", runners[0].spec, checkpoint)


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


# -- export manifest: every graph file's sha256 (and, with a trusted key, its signature) ---------------
def _negate_one_initializer(path):
    """Edited weights, metadata untouched: what the metadata check alone let through."""
    from onnx import numpy_helper

    model = onnx.load(str(path))
    for i, init in enumerate(model.graph.initializer):
        array = numpy_helper.to_array(init)
        if array.dtype == np.float32 and array.size > 16 and np.abs(array).max() > 0:
            model.graph.initializer[i].CopyFrom(numpy_helper.from_array(-array, init.name))
            break
    else:
        raise AssertionError("no float initializer to negate")
    onnx.save(model, str(path))


def _rehash(onnx_dir, graph):
    """Re-hash one graph into the export manifest, as someone who edits graphs by hand would."""
    from policy.export import graph_record

    path = onnx_dir / "export_manifest.json"
    manifest = json.loads(path.read_text())
    manifest["graphs"][graph] = graph_record(onnx_dir / f"{graph}.onnx")
    path.write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")


def test_export_manifest_hashes_every_graph(checkpoint, runners):
    from policy.artifacts import sha256_file

    onnx_dir = checkpoint / "onnx"
    manifest = json.loads((onnx_dir / "export_manifest.json").read_text())
    assert manifest["format"] == "mot-onnx-manifest/1" and manifest["checkpoint_sha256"] == checkpoint_id(checkpoint)
    assert manifest["dtype"] == "float32" and sorted(manifest["graphs"]) == sorted(GRAPHS)
    for graph, record in manifest["graphs"].items():
        assert record["file"] == f"{graph}.onnx" and record["external_data"] == {}
        assert record["sha256"] == sha256_file(onnx_dir / record["file"])
        assert record["bytes"] == (onnx_dir / record["file"]).stat().st_size


def test_graph_with_edited_weights_and_intact_metadata_is_refused(checkpoint, runners, tmp_path):
    """Negated weights, metadata kept: the metadata check let it run (actions 0.13 off); the manifest refuses it."""
    policy = runners[0].spec
    edited = tmp_path / "onnx"
    shutil.copytree(checkpoint / "onnx", edited)
    before = read_metadata(edited / "denoiser.onnx")
    _negate_one_initializer(edited / "denoiser.onnx")
    assert read_metadata(edited / "denoiser.onnx") == before  # invisible to the metadata check
    with pytest.raises(ArtifactMismatchError, match=r"denoiser.onnx: sha256 expected [0-9a-f]{64} "
                                                    r"\(export_manifest.json\), received [0-9a-f]{64}: the graph "
                                                    r"changed after export") as e:
        OnnxRuntimeBackend(policy, checkpoint, onnx_dir=edited)
    assert "\n" not in str(e.value)
    with pytest.raises(ArtifactMismatchError, match=r"denoiser.onnx: sha256 expected"):
        ensure_graphs(policy, checkpoint, edited)  # refused, never silently re-exported
    assert read_metadata(edited / "denoiser.onnx") == before


def test_graphs_without_their_manifest_are_refused(checkpoint, runners, tmp_path):
    old = tmp_path / "onnx"
    shutil.copytree(checkpoint / "onnx", old)
    (old / "export_manifest.json").unlink()  # an export from before manifests
    with pytest.raises(ArtifactMismatchError, match=r"export_manifest.json: expected the export manifest"):
        OnnxRuntimeBackend(runners[0].spec, checkpoint, onnx_dir=old)


def test_signed_graphs_run_with_the_trusted_key_and_edited_ones_are_refused(checkpoint, runners, tmp_path):
    from policy.signing import generate_key_pair, sign_manifest

    ours, theirs = generate_key_pair(tmp_path / "ours"), generate_key_pair(tmp_path / "theirs")
    policy = runners[0].spec
    signed = tmp_path / "onnx"
    shutil.copytree(checkpoint / "onnx", signed)
    with pytest.raises(ArtifactMismatchError, match=r"expected a signed manifest \(export_manifest.sig beside"):
        OnnxRuntimeBackend(policy, checkpoint, onnx_dir=signed, trusted_key=ours["public_key"])
    sign_manifest(signed / "export_manifest.json", ours["private_key"])  # what `mot export --sign` writes
    backend = OnnxRuntimeBackend(policy, checkpoint, onnx_dir=signed, trusted_key=ours["public_key"])
    assert backend.name == "onnxruntime"
    with pytest.raises(ArtifactMismatchError, match=rf"does not verify with the trusted key {theirs['key_id']}"):
        OnnxRuntimeBackend(policy, checkpoint, onnx_dir=signed, trusted_key=theirs["public_key"])
    _negate_one_initializer(signed / "denoiser.onnx")
    _rehash(signed, "denoiser")  # the sha256 now agree: only the signature can tell
    ensure_graphs(policy, checkpoint, signed)  # without a key it passes, as the checkpoint's own manifest would
    with pytest.raises(ArtifactMismatchError, match=r"export_manifest.sig does not verify .*changed after signing"):
        OnnxRuntimeBackend(policy, checkpoint, onnx_dir=signed, trusted_key=ours["public_key"])


def test_with_a_trusted_key_missing_graphs_are_not_exported(checkpoint, runners, tmp_path):
    from policy.signing import generate_key_pair

    ours = generate_key_pair(tmp_path / "k")
    with pytest.raises(ArtifactMismatchError, match=r"expected signed graphs .*graphs are not exported here"):
        ensure_graphs(runners[0].spec, checkpoint, tmp_path / "empty", trusted_key=ours["public_key"])
    assert not (tmp_path / "empty").exists() or not any((tmp_path / "empty").iterdir())


# -- TensorRT with a fake tensorrt module (CPU): version -> precision API, checked return values, engine key ------
class _FakeTRT(types.ModuleType):
    """The few TensorRT 10/11 Python API names policy/tensorrt.py calls, recording what it was asked to do.
    Switches: parse_ok, build_ok, profile_ok, context_ok, shape_ok (what the real calls can return)."""

    def __init__(self, version: str, fp16_flag: bool = True, **switches):
        super().__init__("tensorrt")
        self.__version__ = version
        self.calls: list[tuple] = []
        self.ok = {"parse_ok": True, "build_ok": True, "profile_ok": True, "context_ok": True, "shape_ok": True,
                   **switches}
        flags = {"FP16": "FP16", "TF32": "TF32"} if fp16_flag else {"TF32": "TF32"}  # TensorRT 11: no FP16 flag
        self.BuilderFlag = types.SimpleNamespace(**flags)
        self.NetworkDefinitionCreationFlag = types.SimpleNamespace(STRONGLY_TYPED=1)
        self.MemoryPoolType = types.SimpleNamespace(WORKSPACE="WORKSPACE")
        fake = self

        class Logger:
            WARNING = 2

            def __init__(self, level=None):
                pass

        class Context:
            def set_input_shape(self, name, shape):
                fake.calls.append(("set_input_shape", name, tuple(shape)))
                return fake.ok["shape_ok"]

        class Engine:
            def create_execution_context(self):
                return Context() if fake.ok["context_ok"] else None

        class Runtime:
            def __init__(self, logger):
                pass

            def deserialize_cuda_engine(self, data):
                fake.calls.append(("deserialize", bytes(data)))
                return Engine()

        class Config:
            def set_memory_pool_limit(self, pool, size):
                fake.calls.append(("set_memory_pool_limit", pool, size))

            def set_flag(self, flag):
                fake.calls.append(("set_flag", flag))

            def add_optimization_profile(self, profile):
                return 0 if fake.ok["profile_ok"] else -1

        class Profile:
            def set_shape(self, name, lo, opt, hi):
                fake.calls.append(("set_shape", name))

        class Builder:
            def __init__(self, logger):
                fake.calls.append(("Builder",))

            def create_network(self, flags):
                fake.calls.append(("create_network", flags))
                return object()

            def create_builder_config(self):
                return Config()

            def create_optimization_profile(self):
                return Profile()

            def build_serialized_network(self, network, config):
                return b"serialized-plan" if fake.ok["build_ok"] else None

        class ParserError:
            def node_name(self):
                return "/layers.0/Attention"

            def node_operator(self):
                return "Softmax"

            def desc(self):
                return "unsupported data type"

        class OnnxParser:
            num_errors = 0

            def __init__(self, network, logger):
                pass

            def parse(self, data, path=None):
                fake.calls.append(("parse", bytes(data)))
                self.num_errors = 0 if fake.ok["parse_ok"] else 2
                return fake.ok["parse_ok"]

            def get_error(self, i):
                return ParserError()

        self.Logger, self.Runtime, self.Builder, self.OnnxParser = Logger, Runtime, Builder, OnnxParser

    def names(self, call: str) -> list[tuple]:
        return [c for c in self.calls if c[0] == call]


def _fake_graphs(tmp_path, data: bytes = b"onnx graph bytes"):
    from policy.artifacts import sha256_bytes
    from policy.backends import VerifiedGraphs

    path = tmp_path / "denoiser.onnx"
    return VerifiedGraphs({"denoiser": path}, "a" * 64, {"denoiser": data}, {"denoiser": sha256_bytes(data)}, "float32",
                          None)


@pytest.mark.parametrize("version,fp16_flag,precision,mode", [
    ("10.3.0.26", True, "fp16", "weakly_typed"),     # JetPack 6: BuilderFlag.FP16, not deprecated yet
    ("10.3.0.26", True, "fp32", "weakly_typed"),
    ("10.11.0.33", True, "fp16", "weakly_typed"),
    ("10.12.0.36", True, "fp16", "strongly_typed"),  # weak typing deprecated from here on
    ("10.13.2.6", True, "fp32", "strongly_typed"),
    ("11.0.0.1", False, "fp16", "strongly_typed"),   # no BuilderFlag.FP16 at all
])
def test_precision_api_follows_the_tensorrt_version(monkeypatch, version, fp16_flag, precision, mode):
    from policy.tensorrt import graph_dtype, import_tensorrt, network_mode

    fake = _FakeTRT(version, fp16_flag)
    monkeypatch.setitem(sys.modules, "tensorrt", fake)
    trt = import_tensorrt()
    assert trt is fake and network_mode(trt, precision) == mode
    assert graph_dtype(precision, mode) == ("float16" if (precision, mode) == ("fp16", "strongly_typed") else "float32")


def test_forced_modes_and_old_tensorrt_are_refused_clearly(monkeypatch):
    from policy.tensorrt import TensorRTError, import_tensorrt, network_mode

    assert network_mode(_FakeTRT("10.3.0"), "fp16", strongly_typed=True) == "strongly_typed"
    assert network_mode(_FakeTRT("10.13.0"), "fp16", strongly_typed=False) == "weakly_typed"
    with pytest.raises(TensorRTError, match=r"strongly_typed=False with fp16 needs BuilderFlag.FP16"):
        network_mode(_FakeTRT("11.0.0", fp16_flag=False), "fp16", strongly_typed=False)
    with pytest.raises(ValueError, match=r"precision: expected 'fp16' or 'fp32', received 'int8'"):
        network_mode(_FakeTRT("10.3.0"), "int8")
    monkeypatch.setitem(sys.modules, "tensorrt", _FakeTRT("8.6.1"))
    with pytest.raises(TensorRTError, match=r"tensorrt: expected version >= 10.0 .* received 8.6.1"):
        import_tensorrt()


@pytest.mark.parametrize("version,fp16_flag,network,flags,set_flags", [
    ("10.3.0", True, "weakly_typed", 0, [("set_flag", "FP16")]),
    ("10.12.0", True, "strongly_typed", 1 << 1, []),
    ("11.0.0", False, "strongly_typed", 1 << 1, []),
])
def test_build_sets_the_fp16_flag_only_on_weakly_typed_networks(version, fp16_flag, network, flags, set_flags):
    from policy.tensorrt import build_engine

    trt = _FakeTRT(version, fp16_flag)
    plan = build_engine(trt, trt.Logger(), "denoiser", b"graph", {"x_t": ((1, 8, 7),) * 3}, "fp16", network, 1 << 20)
    assert plan == b"serialized-plan" and trt.names("create_network") == [("create_network", flags)]
    assert trt.names("set_flag") == set_flags and trt.names("parse") == [("parse", b"graph")]


@pytest.mark.parametrize("switch,message", [
    ("parse_ok", r"tensorrt denoiser: the ONNX parser refused the graph: node '/layers.0/Attention' \(Softmax\): "
                 r"unsupported data type; node"),
    ("build_ok", r"tensorrt denoiser: build_serialized_network returned None"),
    ("profile_ok", r"tensorrt denoiser: add_optimization_profile refused the profile"),
])
def test_failed_build_steps_raise_a_clear_error(switch, message):
    from policy.tensorrt import TensorRTError, build_engine

    trt = _FakeTRT("10.3.0", **{switch: False})
    with pytest.raises(TensorRTError, match=message):
        build_engine(trt, trt.Logger(), "denoiser", b"graph", {"x_t": ((1, 8, 7),) * 3}, "fp16", "weakly_typed", 1)


def test_false_from_set_input_shape_raises_a_clear_error():
    from policy.tensorrt import TensorRTError, set_input_shape

    trt = _FakeTRT("10.3.0", shape_ok=False)
    context = trt.Runtime(None).deserialize_cuda_engine(b"").create_execution_context()
    with pytest.raises(TensorRTError, match=r"tensorrt denoiser.x_t: set_input_shape refused shape \(9, 8, 7\)"):
        set_input_shape(context, "denoiser", "x_t", (9, 8, 7))


def test_engines_are_built_once_cached_and_a_missing_context_raises(tmp_path):
    """prepare_engine: build from the verified bytes -> engine file (header + plan) -> deserialize -> context;
    the second call reads the cache; None from create_execution_context is a clear error."""
    from policy.tensorrt import TensorRTError, engine_key, prepare_engine

    trt = _FakeTRT("10.3.0")
    graphs = _fake_graphs(tmp_path)
    profile = {"x_t": ((1, 8, 7),) * 3}
    key = engine_key(graphs, "denoiser", "NVIDIA Jetson AGX Orin (sm_87)", trt.__version__, "fp16", "weakly_typed",
                     profile)
    engine_dir = tmp_path / "trt"
    for _ in range(2):
        engine, context = prepare_engine(trt, trt.Logger(), trt.Runtime(None), graphs, "denoiser", key, profile,
                                         engine_dir, 1 << 20)
        assert context is not None
    assert len(trt.names("Builder")) == 1 and [c[1] for c in trt.names("deserialize")] == [b"serialized-plan"] * 2
    assert [p.name for p in engine_dir.iterdir()] == [key.filename()]
    trt.ok["context_ok"] = False
    with pytest.raises(TensorRTError, match=r"tensorrt denoiser: create_execution_context returned None"):
        prepare_engine(trt, trt.Logger(), trt.Runtime(None), graphs, "denoiser", key, profile, engine_dir, 1 << 20)


def test_engine_key_changes_when_the_onnx_bytes_change(checkpoint, runners, tmp_path):
    """Edited graph bytes: refused while the export manifest disagrees; once re-exported (manifest re-hashed), they
    get another engine key (file name), so a cached engine of the old graph is never reused. Other graphs keep theirs."""
    from policy import export as ex
    from policy.backends import load_graphs
    from policy.tensorrt import engine_key

    policy = runners[0].spec
    edited = tmp_path / "onnx"
    shutil.copytree(checkpoint / "onnx", edited, ignore=shutil.ignore_patterns("trt"))
    gpu, profile = "NVIDIA GeForce RTX 4090 (sm_89)", {"x_t": [[1, 8, 7]] * 3}
    keys = lambda graphs: {g: engine_key(graphs, g, gpu, "10.3.0", "fp16", "weakly_typed", profile) for g in GRAPHS}  # noqa
    before = keys(load_graphs(policy, checkpoint, edited, export_if_missing=False))
    model = onnx.load(str(edited / "denoiser.onnx"))
    from onnx import numpy_helper

    init = next(i for i in model.graph.initializer if numpy_helper.to_array(i).dtype == np.float32
                and numpy_helper.to_array(i).size > 16)
    init.CopyFrom(numpy_helper.from_array(-numpy_helper.to_array(init), init.name))
    onnx.save(model, str(edited / "denoiser.onnx"))  # metadata untouched
    with pytest.raises(ArtifactMismatchError, match=r"denoiser.onnx: sha256 expected [0-9a-f]{64} "
                                                    r"\(export_manifest.json\), received [0-9a-f]{64}"):
        load_graphs(policy, checkpoint, edited, export_if_missing=False)
    manifest = ex.read_export_manifest(edited)[0]
    manifest["graphs"]["denoiser"] = ex.graph_record(edited / "denoiser.onnx")
    ex.write_export_manifest(edited, manifest)
    after = keys(load_graphs(policy, checkpoint, edited, export_if_missing=False))
    assert after["denoiser"].onnx_sha256 != before["denoiser"].onnx_sha256
    assert after["denoiser"].filename() != before["denoiser"].filename()
    assert after["text_encoder"] == before["text_encoder"] and after["obs_encoder"] == before["obs_encoder"]


# -- benchmarks/tensorrt_check.sh: refuses cleanly without a GPU ----------------------------------------------
def _tensorrt_check(tmp_path, **env):
    import os
    import subprocess
    from pathlib import Path

    script = Path(__file__).resolve().parents[2] / "benchmarks" / "tensorrt_check.sh"
    env = {"PATH": os.environ["PATH"], "HOME": str(tmp_path), "MOT_TRT_VENV": str(tmp_path / "venv"), **env}
    return subprocess.run(["bash", str(script)], env=env, capture_output=True, text=True, timeout=60)


def test_tensorrt_check_refuses_cleanly_without_nvidia_smi(tmp_path):
    done = _tensorrt_check(tmp_path, NVIDIA_SMI=str(tmp_path / "no-such-nvidia-smi"))
    assert done.returncode == 3 and done.stdout == ""
    assert done.stderr.strip().splitlines() == [f"tensorrt_check: no NVIDIA GPU here ({tmp_path}/no-such-nvidia-smi "
                                                "not found); run this on a machine with an NVIDIA GPU and driver"]
    assert not (tmp_path / "venv").exists()  # nothing installed


def test_tensorrt_check_refuses_cleanly_when_nvidia_smi_finds_no_device(tmp_path):
    smi = tmp_path / "nvidia-smi"
    smi.write_text("#!/bin/sh\necho 'NVIDIA-SMI has failed because it could not communicate with the driver' >&2\nexit 9\n")
    smi.chmod(0o755)
    done = _tensorrt_check(tmp_path, NVIDIA_SMI=str(smi))
    assert done.returncode == 3 and "lists no device" in done.stderr and len(done.stderr.splitlines()) == 1
    assert not (tmp_path / "venv").exists()


def test_tensorrt_check_python_part_refuses_cleanly_without_cuda_or_tensorrt():
    import subprocess
    from pathlib import Path

    if _tensorrt_missing() is None:
        pytest.skip("tensorrt and CUDA are present: the check would run")
    script = Path(__file__).resolve().parents[2] / "benchmarks" / "tensorrt_check.py"
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 3 and done.stdout == "", done.stderr[-2000:]
    assert done.stderr.startswith("tensorrt_check: expected ") and len(done.stderr.strip().splitlines()) == 1
