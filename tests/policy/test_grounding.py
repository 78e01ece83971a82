"""policy/grounding.py and the point-then-act pass of MoTPolicy: token scores and in-cell offsets -> image
points in the target-point layout; the body attends to pooled image K/V and reads the points it was given."""

import json

import numpy as np
import pytest
import torch

from policy import MoTPolicy, PolicyConfig
from policy.checkpoint import load_checkpoint, save_checkpoint
from policy.errors import CheckpointError, InputError
from policy.grounding import point_confidence, pointed_uv
from tests.policy.conftest import randomize_body


def test_pointed_uv_takes_each_cameras_top_token_and_its_offset():
    grid, cams = 4, 2
    scores = torch.full((1, cams * grid * grid, 2), -5.0)
    scores[0, 5, 0] = 3.0  # object: camera 0, row 1, column 1
    scores[0, 16 + 14, 0] = 3.0  # object: camera 1, row 3, column 2
    scores[0, 2, 1] = 3.0  # pad: camera 0, row 0, column 2
    scores[0, 16, 1] = 3.0  # pad: camera 1, row 0, column 0
    scores[0, 6, 0] = 2.9  # a close second for the object: a hard choice, not a point in between
    centres = pointed_uv(scores, None, cams, grid)
    assert centres.tolist() == [[0.375, 0.375, 0.625, 0.875, 0.625, 0.125, 0.125, 0.125]]
    offsets = torch.zeros(1, cams * grid * grid, 2, 2)
    offsets[0, 5, 0] = torch.tensor([0.25, -0.25])  # object's own offset at its token
    offsets[0, 5, 1] = torch.tensor([0.4, 0.4])  # the pad's offset at the same token: not read
    offsets[0, 16, 1] = torch.tensor([-0.5, -0.5])  # pad, camera 1: clipped at the image edge
    moved = pointed_uv(scores, offsets, cams, grid)
    expected = [0.375 + 0.25 / grid, 0.375 - 0.25 / grid, 0.625, 0.875, 0.625, 0.125, 0.0, 0.0]
    assert moved[0].tolist() == pytest.approx(expected)
    # Confidence: the chosen token's softmax probability within its camera, object per camera then pad.
    confidence = point_confidence(scores, cams)
    camera0 = torch.softmax(scores[0, :16, 0], 0)
    assert confidence.shape == (1, 4) and confidence[0, 0].item() == pytest.approx(camera0.max().item())
    assert confidence[0, 0] < confidence[0, 1]  # camera 0's object has a close second, camera 1's does not


def test_pointed_uv_refuses_a_token_count_that_is_not_the_grid():
    with pytest.raises(ValueError, match=r"scores: expected 2 x 4x4 = 32 image tokens, received 30"):
        pointed_uv(torch.zeros(1, 30, 2), None, 2, 4)


def _pointing_policy(prefix_pool: int = 2, seed: int = 0) -> MoTPolicy:
    """tiny preset with 4x4 image tokens per camera (stride 16 at 64 px) and target points."""
    torch.manual_seed(seed)
    policy = MoTPolicy(PolicyConfig.preset("tiny", image_token_stride=16, prefix_pool=prefix_pool))
    policy.set_target_points("model")
    with torch.no_grad():  # a grounding head that prefers some tokens clearly (untrained scores are near-ties)
        policy.grounding.score.weight.normal_(0.0, 1.0)
    return randomize_body(policy).eval()


def _observation(cfg: PolicyConfig, seed: int = 0):
    rng = np.random.default_rng(seed)
    images = torch.from_numpy(rng.integers(0, 255, (2, len(cfg.cameras), cfg.image_size, cfg.image_size, 3), dtype=np.uint8))
    return images, torch.from_numpy(rng.standard_normal((2, cfg.robot_state_dim)).astype(np.float32))


def test_pooled_prefix_is_the_mean_of_each_block_of_cells_and_the_image_pass_sees_every_cell():
    pooled, full = _pointing_policy(prefix_pool=2), _pointing_policy(prefix_pool=1)
    full.load_state_dict(pooled.state_dict())
    images, _ = _observation(pooled.cfg)
    with torch.no_grad():
        text = pooled.encode_text(*pooled.tokenizer(["pick up the red cube", "touch the blue cylinder"]))
        p, hidden_p = pooled.encode_images(images, text, return_hidden=True)
        f, hidden_f = full.encode_images(images, text, return_hidden=True)
    n_text, g = text.kv.shape[4], pooled.cfg.feature_grid
    assert p.kv.shape[4] == n_text + pooled.cfg.body_image_tokens == n_text + 2 * 2 * 2  # 2 cameras x 2x2 pooled
    torch.testing.assert_close(hidden_p, hidden_f)  # the vision expert itself is the same either way
    cells = f.kv[..., n_text:, :].reshape(*f.kv.shape[:4], 2, g // 2, 2, g // 2, 2, -1)  # (.., cam, row/2, 2, col/2, 2, hd)
    torch.testing.assert_close(p.kv[..., n_text:, :], cells.mean(dim=(6, 8)).flatten(4, 6))
    torch.testing.assert_close(p.kv[..., :n_text, :], text.kv)
    assert p.valid.shape == (2, p.kv.shape[4])


def test_observe_points_with_the_grounding_head_and_the_state_token_reads_the_points():
    policy = _pointing_policy()
    cfg = policy.cfg
    images, state = _observation(cfg)
    with torch.no_grad():
        text = policy.encode_text(*policy.tokenizer(["pick up the red cube", "touch the blue cylinder"]))
        prefix, points, confidence = policy.observe(images, policy.normalize_robot_state(state), text)
        _, hidden = policy.encode_images(images, text, return_hidden=True)
        scores, offsets, _ = policy.grounding(hidden)
        torch.testing.assert_close(points, pointed_uv(scores, offsets, 2, cfg.feature_grid))
        assert confidence.shape == (2, 4) and bool(((confidence > 0) & (confidence <= 1)).all())
        # The state token is the last prefix key; it is the one that reads the points.
        other = torch.rand_like(points)
        replaced, given, _ = policy.observe(images, policy.normalize_robot_state(state), text, points=other)
        assert torch.equal(given, other)
        assert torch.equal(replaced.kv[..., :-1, :], prefix.kv[..., :-1, :])
        assert not torch.allclose(replaced.kv[..., -1:, :], prefix.kv[..., -1:, :])
        # The same as the body's prefix from the whole state (robot state + normalised points), as training builds it.
        whole = torch.cat([state, points], dim=1)
        expected = policy.encode_state(policy.normalize_state(whole), policy.encode_images(images, text))
        torch.testing.assert_close(prefix.kv, expected.kv)


def test_sample_actions_takes_the_robot_state_and_training_takes_the_whole_state():
    policy = _pointing_policy()
    cfg = policy.cfg
    images, state = _observation(cfg)
    obs = {"images": {c: images[:, i].numpy() for i, c in enumerate(cfg.cameras)}, "state": state.numpy(),
           "instruction": ["pick up the red cube", "touch the blue cylinder"]}
    assert policy.sample_actions(obs, num_steps=2).shape == (2, cfg.horizon, cfg.action_dim)
    with pytest.raises(InputError, match=rf"state: expected shape \(B, {cfg.robot_state_dim}\), received \(2, {cfg.state_dim}\)"):
        policy.sample_actions({**obs, "state": np.zeros((2, cfg.state_dim), np.float32)})
    batch = {**obs, "state": np.zeros((2, cfg.state_dim), np.float32),
             "actions": np.zeros((2, cfg.horizon, cfg.action_dim), np.float32)}
    assert torch.isfinite(policy.compute_loss(batch))


def test_align_trains_the_grounding_head_and_the_policy_stage_keeps_it_frozen():
    policy = _pointing_policy()
    policy.set_stage("align")
    assert all(p.requires_grad for p in policy.grounding.parameters())
    policy.set_stage("policy")
    assert not any(p.requires_grad for p in policy.grounding.parameters()) and not policy.prefix_trainable()


def test_checkpoint_keeps_the_grounding_head_and_refuses_the_two_model_format(tmp_path):
    policy = _pointing_policy()
    path = save_checkpoint(policy, tmp_path / "ckpt")
    loaded = load_checkpoint(path)
    assert loaded.cfg.target_points == "model" and loaded.cfg.prefix_pool == 2
    for name, tensor in policy.grounding.state_dict().items():
        assert torch.equal(loaded.grounding.state_dict()[name], tensor), name
    manifest = json.loads((path / "manifest.json").read_text())
    manifest["format"] = "mot-policy/1"
    (path / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(CheckpointError, match=r"expected format 'mot-policy/2'.*received 'mot-policy/1': a body fed by "
                                              r"a separate pointer model.*cannot be converted"):
        load_checkpoint(path)


def test_prefix_pool_must_divide_the_grid():
    with pytest.raises(InputError, match=r"prefix_pool: expected a divisor of the 4x4 image-token grid .* received 3"):
        PolicyConfig.preset("tiny", image_token_stride=16, prefix_pool=3)
