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
