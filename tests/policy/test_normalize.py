"""Normalisation and delta (state-relative) actions: stats, inverse, and the sampling path."""

import dataclasses

import numpy as np
import pytest
import torch

from policy import MoTPolicy, NormStats, PolicyConfig
from policy.normalize import to_absolute, to_relative
from policy.runtime import PolicyRunner

from .conftest import make_batch, randomize_body

MASK = (True,) * 6 + (False,)


def test_relative_and_absolute_are_inverse_and_leave_unmasked_dims_alone():
    rng = np.random.default_rng(0)
    chunk, state, mask = rng.normal(size=(3, 8, 7)), rng.normal(size=(3, 7)), np.array(MASK, float)
    rel = to_relative(chunk, state, mask)
    assert np.allclose(rel[..., :6], chunk[..., :6] - state[:, None, :6])
    assert np.array_equal(rel[..., 6], chunk[..., 6])
    assert np.allclose(to_absolute(rel, state, mask), chunk)


def test_stats_with_a_delta_mask_are_of_chunk_minus_state():
    rng = np.random.default_rng(1)
    state = rng.normal(3.0, 1.0, size=(500, 7))
    chunk = state[:, None, :] + rng.normal(0.0, 0.1, size=(500, 8, 7))  # small motions around the state
    absolute = NormStats.from_arrays(state, chunk)
    delta = NormStats.from_arrays(state, chunk, MASK)
    assert np.all(absolute.action_std[:6] > 0.5)  # absolute targets spread like the states
    assert np.all(delta.action_std[:6] < 0.15) and np.all(np.abs(delta.action_mean[:6]) < 0.05)
    assert delta.action_std[6] == pytest.approx(absolute.action_std[6])  # the gripper stays absolute
    assert np.allclose(delta.state_mean, absolute.state_mean)


def test_delta_mask_is_validated_and_round_trips():
    cfg = PolicyConfig.preset("tiny", delta_action_mask=MASK)
    assert PolicyConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ValueError, match="delta_action_mask: expected 7 bools"):
        PolicyConfig.preset("tiny", delta_action_mask=(True,) * 3)
    with pytest.raises(ValueError, match="delta_action_mask: only the first state_dim=6"):
        PolicyConfig.preset("tiny", state_dim=6, delta_action_mask=(True,) * 7)
    assert PolicyConfig.preset("small").delta_action_mask == MASK


def test_sampling_with_a_delta_mask_adds_the_state_back(tiny_cfg):
    torch.manual_seed(0)
    absolute = randomize_body(MoTPolicy(tiny_cfg))
    delta = MoTPolicy(dataclasses.replace(tiny_cfg, delta_action_mask=MASK))
    delta.load_state_dict(absolute.state_dict())  # the same network; only the action space differs
    batch = make_batch(tiny_cfg, actions=False)
    noise = torch.randn(2, tiny_cfg.horizon, tiny_cfg.action_dim)
    a, d = absolute.sample_actions(batch, noise=noise), delta.sample_actions(batch, noise=noise)
    state = torch.from_numpy(batch["state"])
    assert torch.allclose(d - a, torch.tensor(MASK, dtype=torch.float32) * state[:, None, :], atol=1e-5)

    # The runner (shared by every backend) de-normalises the same way.
    images = {k: v[0] for k, v in batch["images"].items()}
    chunk = PolicyRunner(delta).infer(images, batch["state"][0], batch["instruction"][0], noise=noise[0].numpy())
    assert np.abs(chunk - d[0].numpy()).max() <= 1e-5


def test_a_chunk_that_holds_still_looks_the_same_from_any_state(tiny_cfg):
    """What delta actions buy: "stay where you are" is one target for the model, wherever the arm is."""
    policy = MoTPolicy(dataclasses.replace(tiny_cfg, delta_action_mask=MASK))
    state = torch.randn(2, 7)
    hold = state[:, None, :].expand(2, tiny_cfg.horizon, 7)
    normalised = policy.normalize_actions(hold, state)
    assert torch.allclose(normalised[0, :, :6], normalised[1, :, :6])
    assert torch.allclose(policy.unnormalize_actions(normalised, state), hold, atol=1e-6)
