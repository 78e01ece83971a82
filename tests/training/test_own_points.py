"""Out-of-view target points: the body trains on the grounding head's own point where the truth is only the
clipped image edge (training/data.py `points_in_view`, training/losses.py `with_own_points`, the prefix
cache's per-frame points)."""

import numpy as np
import torch

from policy.inputs import validate_batch
from tests.policy.policies import tiny_policy
from training.data import ChunkDataset, points_in_view, read_episodes, target_point_vector
from training.losses import StageLoss, with_own_points
from training.prefix_cache import PrefixCache


def test_points_in_view_flags_each_camera_and_target_whose_truth_is_off_the_image():
    objects = np.array([[0.2, 0.3], [0.5, 1.2]], np.float32)  # front inside, wrist below the image
    pads = np.array([[-0.1, 0.5], [0.0, 1.0]], np.float32)  # front left of it, wrist on its corner (inside)
    assert points_in_view(objects, pads).tolist() == [True, False, False, True]
    # The layout is target_point_vector's: object per camera, then pad per camera, one flag per (u, v) pair.
    assert target_point_vector(objects, pads, np.random.default_rng(0)).shape == (2 * len(points_in_view(objects, pads)),)
    # A task without a pad: its random pad point is what the body must learn to ignore, so it stays.
    no_pad = np.full((2, 2), np.nan, np.float32)
    assert points_in_view(objects, no_pad).tolist() == [True, False, True, True]
    # An unknown object position (NaN) is not in view: nothing true to train on.
    assert points_in_view(np.full((2, 2), np.nan, np.float32), pads).tolist() == [False, False, False, True]


def test_with_own_points_replaces_only_the_out_of_view_pairs():
    robot = 3
    state = torch.arange(2 * (robot + 8), dtype=torch.float32).reshape(2, robot + 8)
    own = -torch.ones(2, 8)
    in_view = np.array([[True, True, True, False], [False, True, True, True]])
    out = with_own_points(state, in_view, own, robot)
    assert torch.equal(out[:, :robot], state[:, :robot])
    assert out[0, robot:].tolist() == state[0, robot:robot + 6].tolist() + [-1.0, -1.0]
    assert out[1, robot:].tolist() == [-1.0, -1.0] + state[1, robot + 2:].tolist()


def test_the_body_trains_on_the_heads_own_points_where_the_target_is_out_of_view(sim_dataset):
    """The cache stores the head's points from its image pass; cached and recomputed prefixes give the same
    loss, and that loss reads the head's points, not the clipped edge, where the target is out of view."""
    _, episodes = read_episodes(sim_dataset)
    policy = tiny_policy(points=True)
    policy.set_stage("policy")
    data = ChunkDataset(episodes, list(policy.cfg.cameras), policy.cfg.horizon, target_points=True)
    batch = data.batch(np.arange(len(data)))
    hidden_in_some = ~batch["points_in_view"]
    assert hidden_in_some.any() and batch["points_in_view"].any()  # the push/place wrist view loses the pad
    cache = PrefixCache(policy, data, batch_size=16, progress=False)
    idx = np.flatnonzero(hidden_in_some.any(1))[:6]
    sub = data.batch(idx)
    robot = policy.cfg.robot_state_dim
    with torch.no_grad():  # the head's own points on these frames, as the policy points at inference
        obs = validate_batch({**sub, "state": sub["state"][:, :robot]}, policy.cfg)
        text = policy.encode_text(*policy.tokenizer(obs.instruction))
        _, pointed, _ = policy.observe(obs.images, policy.normalize_robot_state(obs.state), text)
    np.testing.assert_allclose(cache.own_points(idx).numpy(), pointed.numpy(), atol=1e-5)

    loss = StageLoss(policy, "policy")
    noise, t = torch.randn(len(idx), policy.cfg.horizon, 7), torch.linspace(0.1, 0.9, len(idx))
    with torch.no_grad():
        direct = loss.flow_loss(sub, noise, t)
        cached = loss.flow_loss({**data.batch(idx, images=False), "prefix": cache.prefix(idx),
                                 "own_points": cache.own_points(idx)}, noise, t)
        edge = policy.flow_matching_loss(cache.prefix(idx), torch.from_numpy(sub["state"]),
                                         torch.from_numpy(sub["actions"]), noise, t)
    assert abs(direct.item() - cached.item()) < 1e-3 * max(1.0, direct.item())  # float16 storage
    assert abs(cached.item() - edge.item()) > 1e-4  # the out-of-view points changed what the body read

