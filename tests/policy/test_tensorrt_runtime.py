"""The TensorRT backend on a CPU (tests/policy/fake_tensorrt.py: each engine runs its ONNX graph in onnxruntime; device
memory is host memory): whole chunks through PolicyRunner(backend="tensorrt") equal the torch runner's, actions and
target points, with the same noise; engines are built once and then cached; the cached K/V are read on the device in
place; `points=` is refused; a machine without a CUDA device or without cuda-python is told so in one line."""

import sys

import numpy as np
import pytest

from policy.checkpoint import checkpoint_id, save_checkpoint
from policy.errors import InputError
from policy.export import export_policy
from policy.runtime import PolicyRunner

from . import fake_tensorrt
from .conftest import make_batch
from .policies import tiny_policy

pytest.importorskip("onnxruntime")


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A tiny policy that points (image K/V pooled 2x2 for the body), saved, with its float32 graphs in <ckpt>/onnx."""
    policy = tiny_policy(points=True, seed=3)
    ckpt = save_checkpoint(policy, tmp_path_factory.mktemp("trt") / "ckpt")
    export_policy(policy, ckpt / "onnx", checkpoint_sha256=checkpoint_id(ckpt))
    return ckpt


@pytest.fixture(scope="module")
def torch_runner(checkpoint):
    return PolicyRunner.from_checkpoint(checkpoint)


def _single(cfg, seed):
    b = make_batch(cfg, batch_size=1, seed=seed, actions=False)
    return {k: v[0] for k, v in b["images"].items()}, b["state"][0, :cfg.robot_state_dim], b["instruction"][0]


def test_tensorrt_runner_matches_torch_on_whole_chunks_with_points(monkeypatch, checkpoint, torch_runner):
    trt, cudart = fake_tensorrt.install(monkeypatch)
    runner = PolicyRunner.from_checkpoint(checkpoint, backend="tensorrt", fp16=False)
    assert runner.policy is None and runner.backend.gpu == "Fake GPU (sm_87)" and len(trt.built) == 3
    cfg = runner.cfg
    for seed in (0, 1, 2):
        images, state, instruction = _single(cfg, seed)
        noise = np.random.default_rng(seed).standard_normal((cfg.horizon, cfg.action_dim)).astype(np.float32)
        a = runner.infer(images, state, instruction, noise=noise)
        b = torch_runner.infer(images, state, instruction, noise=noise)
        assert a.shape == (cfg.horizon, cfg.action_dim) and a.dtype == np.float32
        assert np.abs(a - b).max() <= 1e-4
        assert runner.last_points.shape == (cfg.target_point_dim,)
        assert np.abs(runner.last_points - torch_runner.last_points).max() <= 1e-4
        assert np.abs(runner.last_confidence - torch_runner.last_confidence).max() <= 1e-4
    contexts = runner.backend.contexts
    assert contexts["text_encoder"].runs == len({_single(cfg, s)[2] for s in (0, 1, 2)})  # once per instruction
    assert (contexts["obs_encoder"].runs, contexts["denoiser"].runs) == (3, 3 * cfg.num_inference_steps)
    engines = sorted((checkpoint / "onnx" / "trt").glob("*.engine"))
    assert len(engines) == 3
    PolicyRunner.from_checkpoint(checkpoint, backend="tensorrt", fp16=False)  # the cached engines: nothing built
    assert len(trt.built) == 3


def test_a_denoise_step_copies_only_x_t_and_t_to_the_device(monkeypatch, checkpoint):
    """The prefix K/V stay on the device between steps (the denoiser reads them in place); the velocity comes back."""
    _, cudart = fake_tensorrt.install(monkeypatch)
    runner = PolicyRunner.from_checkpoint(checkpoint, backend="tensorrt", fp16=False)
    cfg, backend = runner.cfg, runner.backend
    images, state, instruction = _single(cfg, 0)
    text = runner.text_kv(instruction)
    frames = np.stack([images[c] for c in cfg.cameras])[None]
    prefix, points, _ = backend.encode_observation(frames, runner.spec.normalize_robot_state(state[None]), text)
    assert points.shape == (1, cfg.target_point_dim) and points.dtype == np.float32
    cudart.calls.clear()
    velocity = backend.denoise(np.zeros((1, cfg.horizon, cfg.action_dim), np.float32), 0.5, prefix)
    assert cudart.calls == ["h2d", "h2d", "d2h"] and velocity.shape == (1, cfg.horizon, cfg.action_dim)


def test_points_override_needs_the_torch_backend(monkeypatch, checkpoint):
    fake_tensorrt.install(monkeypatch)
    runner = PolicyRunner.from_checkpoint(checkpoint, backend="tensorrt", fp16=False)
    images, state, instruction = _single(runner.cfg, 0)
    with pytest.raises(InputError, match=r"^points: replacing the policy's own target points needs the torch backend "
                                         r"\(the tensorrt observation graph computes them\)") as e:
        runner.infer(images, state, instruction, points=np.full(runner.cfg.target_point_dim, 0.5, np.float32))
    assert "\n" not in str(e.value)


def test_no_cuda_device_and_no_cuda_python_are_said_in_one_line(monkeypatch, checkpoint):
    fake_tensorrt.install(monkeypatch, devices=0)
    with pytest.raises(RuntimeError, match=r"^backend 'tensorrt': expected a CUDA device, cudaGetDeviceCount found none"):
        PolicyRunner.from_checkpoint(checkpoint, backend="tensorrt", fp16=False)
    for name in ("cuda", "cuda.bindings", "cuda.bindings.runtime"):
        monkeypatch.setitem(sys.modules, name, None)  # None in sys.modules: the import fails
    with pytest.raises(RuntimeError, match=r"^backend 'tensorrt': the `cuda-python` package is not installed"):
        PolicyRunner.from_checkpoint(checkpoint, backend="tensorrt", fp16=False)
