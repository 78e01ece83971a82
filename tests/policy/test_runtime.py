"""PolicyRunner (torch backend): same actions as the policy, per-instruction text cache, thread safety."""

import threading

import numpy as np
import pytest
import torch

from policy.runtime import PolicyRunner

from .conftest import make_batch


@pytest.fixture()
def runner(tiny_policy):
    return PolicyRunner(tiny_policy)


def _single(cfg, seed=0):
    b = make_batch(cfg, batch_size=1, seed=seed, actions=False)
    return {k: v[0] for k, v in b["images"].items()}, b["state"][0], b["instruction"][0]


def test_runner_matches_policy_for_the_same_noise(runner, tiny_policy):
    cfg = tiny_policy.cfg
    images, state, instruction = _single(cfg)
    noise = np.random.default_rng(0).standard_normal((cfg.horizon, cfg.action_dim)).astype(np.float32)
    chunk = runner.infer(images, state, instruction, noise=noise)
    expected = tiny_policy.sample_actions({"images": {k: v[None] for k, v in images.items()}, "state": state[None],
                                           "instruction": [instruction]}, noise=torch.from_numpy(noise)[None])
    assert chunk.shape == (cfg.horizon, cfg.action_dim) and chunk.dtype == np.float32
    assert np.abs(chunk - expected[0].numpy()).max() <= 1e-5


def test_text_is_encoded_once_per_instruction(runner, tiny_policy):
    calls = []
    encode = runner.backend.encode_text
    runner.backend.encode_text = lambda *a: calls.append(1) or encode(*a)
    images, state, instruction = _single(tiny_policy.cfg)
    for _ in range(3):
        runner.infer(images, state, instruction)
    runner.infer(images, state, "touch the blue cube")
    assert len(calls) == 2


def test_runner_raises_the_policy_errors(runner, tiny_policy):
    images, state, instruction = _single(tiny_policy.cfg)
    with pytest.raises(ValueError, match=r"images: expected cameras"):
        runner.infer({"front": images["front"]}, state, instruction)
    with pytest.raises(ValueError, match=r"state: expected finite values"):
        runner.infer(images, np.full_like(state, np.nan), instruction)
    with pytest.raises(TypeError, match=r"instruction: expected str"):
        runner.infer(images, state, None)
    with pytest.raises(ValueError, match=r"noise: expected shape"):
        runner.infer(images, state, instruction, noise=np.zeros((2, 2), np.float32))


def test_concurrent_calls_from_threads_agree(runner, tiny_policy):
    images, state, instruction = _single(tiny_policy.cfg)
    noise = np.ones((tiny_policy.cfg.horizon, tiny_policy.cfg.action_dim), np.float32)
    reference = runner.infer(images, state, instruction, noise=noise)
    results, errors = [], []

    def work():
        try:
            results.append(runner.infer(images, state, instruction, noise=noise))
        except Exception as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and len(results) == 4
    assert all(np.array_equal(r, reference) for r in results)


# -- a policy that points, then acts ---------------------------------------------------------------------------
@pytest.fixture(scope="module")
def pointing():
    from .policies import tiny_policy

    policy = tiny_policy(points=True, seed=1)
    return policy, PolicyRunner(policy)


def test_runner_reports_the_policys_points_and_matches_observe(pointing):
    policy, runner = pointing
    cfg = policy.cfg
    images, state, instruction = _single(cfg)
    state = state[:cfg.robot_state_dim]  # callers pass the robot's state; the policy appends its points
    noise = np.random.default_rng(0).standard_normal((cfg.horizon, cfg.action_dim)).astype(np.float32)
    chunk = runner.infer(images, state, instruction, noise=noise)
    batch = {"images": {k: v[None] for k, v in images.items()}, "state": state[None], "instruction": [instruction]}
    assert np.abs(chunk - policy.sample_actions(batch, noise=torch.from_numpy(noise)[None])[0].numpy()).max() <= 1e-5
    with torch.no_grad():
        text = policy.encode_text(*policy.tokenizer([instruction]))
        frames = torch.from_numpy(np.stack([images[c] for c in cfg.cameras])[None])
        _, points, confidence = policy.observe(frames, policy.normalize_robot_state(torch.from_numpy(state[None])), text)
    assert runner.last_points.shape == (cfg.target_point_dim,) and runner.last_confidence.shape == (2 * len(cfg.cameras),)
    assert np.array_equal(runner.last_points, points[0].numpy())
    assert np.array_equal(runner.last_confidence, confidence[0].numpy())
    assert sorted(runner.last_timing) == ["denoise_ms", "observation_ms", "text_ms"]


def test_points_given_replace_the_policys_own_on_the_torch_backend(pointing):
    policy, runner = pointing
    cfg = policy.cfg
    images, state, instruction = _single(cfg)
    state = state[:cfg.robot_state_dim]
    noise = np.zeros((cfg.horizon, cfg.action_dim), np.float32)
    own = runner.infer(images, state, instruction, noise=noise)
    given = np.full(cfg.target_point_dim, 0.9, np.float32)
    moved = runner.infer(images, state, instruction, noise=noise, points=given)
    assert np.array_equal(runner.last_points, given) and np.abs(moved - own).max() > 1e-4  # the body reads them
    with pytest.raises(ValueError, match=r"points: expected shape \(8,\), received \(3,\)"):
        runner.infer(images, state, instruction, points=given[:3])


def test_a_policy_without_target_points_refuses_points_and_reports_none(runner, tiny_policy):
    images, state, instruction = _single(tiny_policy.cfg)
    runner.infer(images, state, instruction)
    assert runner.last_points is None and runner.last_confidence is None
    with pytest.raises(ValueError, match=r"points: this policy has no target points to replace"):
        runner.infer(images, state, instruction, points=np.zeros(8, np.float32))


def test_unknown_backend_and_a_spec_for_torch_are_refused(tiny_policy, tmp_path):
    from policy.spec import PolicySpec

    with pytest.raises(ValueError, match=r"backend: expected one of \['torch', 'onnxruntime', 'tensorrt'\], "
                                         r"received 'openvino'"):
        PolicyRunner.from_checkpoint(tmp_path, backend="openvino")
    spec = PolicySpec.of(tiny_policy)
    with pytest.raises(ValueError, match=r"backend: 'torch' needs the MoTPolicy"):
        PolicyRunner(PolicySpec(spec.cfg, spec.norm_stats, spec.dims, spec.checkpoint_id))
