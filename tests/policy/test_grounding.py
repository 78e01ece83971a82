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
from policy.vision import preprocess_images
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


def _pixel_policy(width: int = 8) -> MoTPolicy:
    """A pointing policy whose grounding head gained a pixel path (scrambled, so it scores for real)."""
    policy = _pointing_policy()
    policy.set_grounding_pixels(width)
    with torch.no_grad():
        for p in policy.grounding.pixels.parameters():
            p.normal_(0.0, 0.5)
    return policy.eval()


def test_a_new_pixel_path_points_as_the_head_did_and_then_scores_cells_from_their_pixels():
    policy = _pointing_policy()
    images, state = _observation(policy.cfg)
    text = policy.encode_text(*policy.tokenizer(["pick up the red cube", "put the blue block on the green pad"]))
    with torch.no_grad():
        before = policy.observe(images, state, text)[1]
        policy.set_grounding_pixels(8)
        assert torch.equal(policy.observe(images, state, text)[1], before)  # the query MLP starts at zero
        _, hidden = policy.encode_images(images, text, return_hidden=True)
        pixels = policy.grounding.pixels
        head_alone = policy.grounding.score(hidden)
        for p in pixels.parameters():
            p.normal_(0.0, 0.5)
        scores = policy.ground(hidden, images, text)[0]
        # Independently: each cell's descriptor from its own 16x16 pixels (mean and max of GELU(1x1 conv)).
        x = torch.nn.functional.gelu(pixels.pixel(preprocess_images(images, policy.cfg.image_size)))  # (B * cams, P, S, S)
        cell, grid, cams = policy.cfg.image_token_stride, policy.cfg.feature_grid, len(policy.cfg.cameras)
        values = text.kv[-1, 1].transpose(1, 2).flatten(2)
        for b in range(2):
            logits = values[b] @ pixels.query.T / values.shape[-1] ** 0.5  # (L, 2)
            logits[~text.valid[b]] = float("-inf")
            query = pixels.text(torch.softmax(logits, 0).T @ values[b])  # (2, P)
            for c in range(cams):
                for r in range(grid):
                    for col in range(grid):
                        patch = x[b * cams + c, :, r * cell:(r + 1) * cell, col * cell:(col + 1) * cell].flatten(1)
                        d = pixels.describe_cells(torch.cat([patch.mean(1), patch.amax(1)]))
                        n = c * grid * grid + r * grid + col
                        want = head_alone[b, n] + query @ d / d.shape[0] ** 0.5
                        assert torch.allclose(scores[b, n], want, atol=1e-5), (b, n)


def test_the_pixel_path_reads_the_words_and_never_the_text_padding():
    policy = _pixel_policy()
    images, _ = _observation(policy.cfg)
    ids, valid = policy.tokenizer(["pick up the red cube", "put the blue block on the green pad"])
    text = policy.encode_text(ids, valid)
    assert not valid[0].all()  # the shorter instruction is padded
    with torch.no_grad():
        _, hidden = policy.encode_images(images, text, return_hidden=True)
        scores = policy.ground(hidden, images, text)[0]
        garbled = text.kv.clone()
        garbled[:, :, 0][..., ~valid[0], :] = 1e3  # (layers, 2, heads, L, hd): the padded positions of sample 0
        same = policy.ground(hidden, images, type(text)(garbled, text.valid))[0]
        assert torch.allclose(same, scores)
        garbled[:, :, 0][..., 1, :] += 1.0  # a word of sample 0
        moved = policy.ground(hidden, images, type(text)(garbled, text.valid))[0]
        assert not torch.allclose(moved[0], scores[0]) and torch.allclose(moved[1], scores[1])


def test_only_grounding_trains_the_head_alone_and_the_pixel_path_survives_a_checkpoint(tmp_path):
    policy = _pixel_policy()
    policy.set_stage("align", only_grounding=True)
    trainable = {name for name, p in policy.named_parameters() if p.requires_grad}
    assert trainable and all(name.startswith("grounding.") for name in trainable)
    assert any(name.startswith("grounding.pixels.") for name in trainable)
    with pytest.raises(InputError, match=r"only_grounding: needs stage 'align'"):
        policy.set_stage("policy", only_grounding=True)
    with pytest.raises(InputError, match=r"grounding_pixels: expected a width > 0 for a head without a pixel path, "
                                         r"received 4 \(this policy's: 8\)"):
        policy.set_grounding_pixels(4)
    loaded = load_checkpoint(save_checkpoint(policy, tmp_path / "ckpt"))
    assert loaded.cfg.grounding_pixels == 8
    for name, tensor in policy.grounding.state_dict().items():
        assert torch.equal(loaded.grounding.state_dict()[name], tensor), name


def test_grounding_pixels_config_is_validated():
    with pytest.raises(InputError, match=r"grounding_pixels: expected an int >= 0, received -1"):
        PolicyConfig.preset("tiny", grounding_pixels=-1)
    with pytest.raises(InputError, match=r"grounding_pixels: the pixel path needs prefix_mask 'blockwise'"):
        PolicyConfig.preset("tiny", grounding_pixels=8, prefix_mask="bidirectional")
