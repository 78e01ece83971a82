"""MoT routing, masks, caching, freezing, and learning."""

import dataclasses

import numpy as np
import pytest
import torch

from policy import MoTPolicy, PolicyConfig
from policy.inputs import validate_batch
from policy.attention import attention_bias, pool_matrix
from policy.experts import gelu_erf
from policy.model import ACTION, IMAGE, STATE, TEXT, euler_sample, make_attn_mask

from .conftest import make_batch, randomize_body


def _prefix_parts(policy, batch):
    """(text kv, text+image kv, full prefix) for a batch."""
    obs = validate_batch(batch, policy.cfg)
    with torch.no_grad():
        text = policy.encode_text(*policy.tokenizer(obs.instruction))
        images = policy.encode_images(obs.images, text)
        full = policy.encode_state(policy.normalize_state(obs.state), images)
    return text, images, full


def test_attn_mask_is_block_causal_with_padding():
    blocks = torch.tensor([TEXT, TEXT, IMAGE, STATE, ACTION, ACTION])
    valid = torch.tensor([[True, False, True, True, True, True]])
    mask = make_attn_mask(blocks, valid)[0, 0].int()
    expected = torch.tensor([
        [1, 0, 0, 0, 0, 0],
        [1, 0, 0, 0, 0, 0],
        [1, 0, 1, 0, 0, 0],
        [1, 0, 1, 1, 0, 0],
        [1, 0, 1, 1, 1, 1],
        [1, 0, 1, 1, 1, 1],
    ])
    assert torch.equal(mask, expected)


def test_attention_bias_matches_the_bool_mask():
    """The additive bias every layer shares gives the attention a bool mask gives, padded keys included."""
    q, k, v = torch.randn(2, 3, 4, 8), torch.randn(2, 3, 6, 8), torch.randn(2, 3, 6, 8)
    valid = torch.tensor([[True] * 6, [True, True, False, True, False, False]])
    mask = valid[:, None, None, :]
    bias = attention_bias(mask, q.dtype)
    allowed = mask.expand_as(bias)
    assert bias.shape == mask.shape and bool((bias[~allowed] < -1e30).all()) and bool((bias[allowed] == 0).all())
    ours = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=bias)
    reference = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    torch.testing.assert_close(ours, reference, rtol=0, atol=1e-6)


def test_gelu_erf_is_torchs_exact_gelu():
    x = torch.linspace(-8, 8, 4001)
    torch.testing.assert_close(gelu_erf(x), torch.nn.functional.gelu(x), rtol=0, atol=1e-6)


def test_pool_matrix_averages_each_cameras_p_by_p_cells():
    """Pooled cell j of camera c is the mean of its p x p cells, in (camera, row, column) order: checked by loops."""
    cams, grid, p = 2, 4, 2
    kv = torch.randn(3, 2, 1, 5, cams * grid * grid, 8)  # (layers, 2, B, heads, cams * grid^2, hd)
    pooled = pool_matrix(cams, grid, p) @ kv
    g = grid // p
    assert pooled.shape == (3, 2, 1, 5, cams * g * g, 8)
    for c in range(cams):
        for r in range(g):
            for col in range(g):
                cells = [c * grid * grid + (r * p + i) * grid + col * p + j for i in range(p) for j in range(p)]
                torch.testing.assert_close(pooled[..., c * g * g + r * g + col, :], kv[..., cells, :].mean(dim=-2))
    assert pool_matrix(cams, grid, 1) is None


def test_a_prefix_pool_set_after_loading_pools_the_body_prefix():
    """Training sets prefix_pool on a policy loaded from an align checkpoint: the image pass must follow the config."""
    policy = MoTPolicy(PolicyConfig.preset("tiny", image_token_stride=16))  # 4x4 tokens per camera
    obs = validate_batch(make_batch(policy.cfg, batch_size=2, actions=False), policy.cfg)
    with torch.no_grad():
        text = policy.encode_text(*policy.tokenizer(obs.instruction))
        full = policy.encode_images(obs.images, text).kv[..., text.kv.shape[4]:, :]
        policy.cfg = dataclasses.replace(policy.cfg, prefix_pool=2)
        pooled = policy.encode_images(obs.images, text).kv[..., text.kv.shape[4]:, :]
    assert pooled.shape[4] == policy.cfg.body_image_tokens == 2 * 2 * 2
    torch.testing.assert_close(pooled, pool_matrix(2, 4, 2) @ full)


def test_blockwise_text_kv_ignore_images_bidirectional_do_not(tiny_cfg):
    """Mask semantics end to end: text K/V depend on images only in the bidirectional ablation."""
    batch_a, batch_b = make_batch(tiny_cfg, seed=0), make_batch(tiny_cfg, seed=0)
    batch_b["images"] = make_batch(tiny_cfg, seed=1)["images"]
    for prefix_mask, should_change in (("blockwise", False), ("bidirectional", True)):
        policy = MoTPolicy(PolicyConfig.preset("tiny", prefix_mask=prefix_mask))
        n_text = policy.tokenizer(batch_a["instruction"])[0].shape[1]
        _, img_a, _ = _prefix_parts(policy, batch_a)
        _, img_b, _ = _prefix_parts(policy, batch_b)
        text_kv_a, text_kv_b = img_a.kv[..., :n_text, :], img_b.kv[..., :n_text, :]
        # Layer 0's text keys come from embeddings alone; deeper layers show the mask's effect.
        changed = not torch.allclose(text_kv_a[1:], text_kv_b[1:], atol=1e-6)
        assert changed == should_change, prefix_mask


@pytest.mark.parametrize("prefix_mask", ["blockwise", "bidirectional"])
@pytest.mark.parametrize("routing", ["mot", "dense"])
@pytest.mark.parametrize("extra", [{}, {"image_token_stride": 16}], ids=["plain", "token_stride16"])
def test_cached_passes_equal_one_uncached_pass(prefix_mask, routing, extra):
    policy = randomize_body(MoTPolicy(PolicyConfig.preset("tiny", prefix_mask=prefix_mask, routing=routing, **extra)))
    cfg = policy.cfg
    batch = make_batch(cfg, batch_size=3, actions=False)
    obs = validate_batch(batch, cfg)
    ids, valid = policy.tokenizer(obs.instruction)
    assert not valid.all(), "the batch must contain padding for this test to cover the padding mask"
    x = torch.randn(3, cfg.horizon, cfg.action_dim)
    with torch.no_grad():
        prefix = policy.encode_observation(obs)
        for t in (1.0, 0.5, 0.1):
            tt = torch.full((3,), t)
            cached = policy.denoise(x, tt, prefix)
            uncached = policy.velocity_uncached(ids, valid, obs.images, policy.normalize_state(obs.state), x, tt)
            assert (cached - uncached).abs().max().item() <= 1e-5


def test_cached_sampling_equals_uncached_sampling(tiny_policy):
    cfg = tiny_policy.cfg
    batch = make_batch(cfg, actions=False)
    noise = torch.randn(2, cfg.horizon, cfg.action_dim)
    cached = tiny_policy.sample_actions(batch, noise=noise)
    obs = validate_batch(batch, cfg)
    ids, valid = tiny_policy.tokenizer(obs.instruction)
    state = tiny_policy.normalize_state(obs.state)
    with torch.no_grad():
        x = euler_sample(lambda x, t: tiny_policy.velocity_uncached(ids, valid, obs.images, state, x,
                                                                    torch.full((2,), t)), noise, 10)
    assert (cached - tiny_policy.unnormalize_actions(x, obs.state)).abs().max().item() <= 1e-5


def test_routing_isolation_body_weights_never_reach_text_or_image_kv(tiny_policy):
    batch = make_batch(tiny_policy.cfg, actions=False)
    text_a, images_a, full_a = _prefix_parts(tiny_policy, batch)
    with torch.no_grad():
        for layer in tiny_policy.layers:
            for p in layer["body"].parameters():
                p.add_(torch.randn_like(p) * 0.5)
    text_b, images_b, full_b = _prefix_parts(tiny_policy, batch)
    assert torch.equal(text_a.kv, text_b.kv)
    assert torch.equal(images_a.kv, images_b.kv)
    assert not torch.equal(full_a.kv[..., -1:, :], full_b.kv[..., -1:, :]), "the state token uses the body expert"


def test_instruction_changes_sampled_actions(tiny_policy):
    batch = make_batch(tiny_policy.cfg, batch_size=1, actions=False)
    other = dict(batch, instruction=["put the green cube on the red pad"])
    noise = torch.randn(1, tiny_policy.cfg.horizon, tiny_policy.cfg.action_dim)
    a = tiny_policy.sample_actions(batch, noise=noise)
    b = tiny_policy.sample_actions(other, noise=noise)
    assert (a - b).abs().max().item() > 1e-4
    assert torch.equal(a, tiny_policy.sample_actions(batch, noise=noise)), "same inputs, same noise -> same chunk"


def _frozen_snapshot(policy):
    return {n: p.detach().clone() for n, p in policy.named_parameters() if not p.requires_grad}


@pytest.mark.parametrize("stage", ["policy", "align"])
def test_frozen_parameters_get_no_gradient_and_stay_bit_identical(tiny_cfg, stage):
    policy = randomize_body(MoTPolicy(tiny_cfg))
    policy.set_stage(stage)
    frozen = _frozen_snapshot(policy)
    assert any(n.startswith("layers.0.language") for n in frozen) and any(n.startswith("trunk") for n in frozen)
    trainable = [p for p in policy.parameters() if p.requires_grad]
    before = [p.detach().clone() for p in trainable]
    opt = torch.optim.AdamW(trainable, lr=1e-2, weight_decay=0.1)
    policy.train()
    for step in range(3):
        batch = make_batch(tiny_cfg, seed=step)
        if stage == "align":  # a grounding-style loss on the image tokens' final states
            obs = validate_batch(batch, tiny_cfg)
            text = policy.encode_text(*policy.tokenizer(obs.instruction))
            _, image_h = policy.encode_images(obs.images, text, return_hidden=True)
            loss = image_h.pow(2).mean()
        else:
            loss = policy.compute_loss(batch)
        opt.zero_grad()
        loss.backward()
        for name, p in policy.named_parameters():
            if name in frozen:
                assert p.grad is None, f"{name} is frozen but received a gradient"
        opt.step()
    for name, p in policy.named_parameters():
        if name in frozen:
            assert torch.equal(p, frozen[name]), f"{name} changed although frozen"
    assert any(not torch.equal(a, b) for a, b in zip(before, trainable)), "nothing trained"
    # The trunk's BatchNorm statistics are frozen too (it ignores .train()).
    assert not policy.trunk.training


def test_policy_stage_prefix_runs_without_autograd(tiny_policy):
    assert not tiny_policy.prefix_trainable()
    tiny_policy.set_stage("policy", train_vision=True)
    assert tiny_policy.prefix_trainable()
    tiny_policy.set_stage("align")
    assert tiny_policy.prefix_trainable()
    assert not any(p.requires_grad for p in tiny_policy.layers[0]["body"].parameters())


def test_dense_routing_shares_one_trainable_expert(tiny_cfg):
    policy = MoTPolicy(PolicyConfig.preset("tiny", routing="dense"))
    assert set(policy.layers[0].keys()) == {"shared"}
    assert all(p.requires_grad for p in policy.layers[0]["shared"].parameters())
    assert not any(p.requires_grad for p in policy.text_embed.parameters())
    loss = policy.compute_loss(make_batch(tiny_cfg))
    loss.backward()
    assert policy.layers[0]["shared"].query.weight.grad is not None
    chunk = policy.sample_actions(make_batch(tiny_cfg, actions=False), num_steps=2)
    assert chunk.shape == (2, tiny_cfg.horizon, tiny_cfg.action_dim) and torch.isfinite(chunk).all()


def test_tiny_policy_overfits_a_small_set_of_chunks(tiny_cfg):
    """Flow matching on 4 fixed (observation, chunk) pairs: the loss on fixed noise/times falls >= 10x."""
    torch.manual_seed(0)
    policy = MoTPolicy(tiny_cfg)
    batch = make_batch(tiny_cfg, batch_size=4, seed=3)
    # Smooth, distinct chunks per sample (what demonstrations look like), in robot units.
    steps = np.linspace(0, 1, tiny_cfg.horizon, dtype=np.float32)[None, :, None]
    offsets = np.random.default_rng(0).uniform(-1, 1, (4, 1, tiny_cfg.action_dim)).astype(np.float32)
    batch["actions"] = offsets + steps * offsets[::-1]
    gen = torch.Generator().manual_seed(1)
    eval_noise = torch.randn(16, 4, tiny_cfg.horizon, tiny_cfg.action_dim, generator=gen)
    eval_time = torch.rand(16, 4, generator=gen) * 0.9 + 0.1

    def eval_loss() -> float:
        with torch.no_grad():
            return float(np.mean([policy.compute_loss(batch, eval_noise[i], eval_time[i]).item() for i in range(16)]))

    initial = eval_loss()
    opt = torch.optim.AdamW([p for p in policy.parameters() if p.requires_grad], lr=3e-3)
    policy.train()
    for _ in range(250):
        loss = policy.compute_loss(batch)
        opt.zero_grad()
        loss.backward()
        opt.step()
    final = eval_loss()
    assert final <= initial / 10, f"loss {initial:.4f} -> {final:.4f}"


def test_finer_image_tokens_see_each_cell_of_their_own():
    """image_token_stride 16: 4x the image tokens, and each token's features come from its own 16-pixel
    cell (stride-8 sub-cells as channels), plus the stride-32 features of the cell it lies in."""
    coarse = MoTPolicy(PolicyConfig.preset("tiny"))
    fine = MoTPolicy(PolicyConfig.preset("tiny", image_token_stride=16))
    assert fine.cfg.image_tokens == 4 * coarse.cfg.image_tokens
    assert fine.cfg.image_feature_dim == 40 * 4 + 112 + 320
    images = torch.zeros(1, 3, 64, 64)
    base = fine.trunk(images)
    assert base.shape == (1, fine.cfg.image_feature_dim, 4, 4)
    changed = images.clone()
    changed[..., 0:16, 48:64] = 3.0  # paint the top-right 16x16 cell only
    after = fine.trunk(changed)
    # stride-8 and -16 channels: the painted cell's token (row 0, column 3 of the 4x4 grid) changes about
    # as much as any (receptive fields overlap its neighbour below), the opposite corner far less
    local = (after - base)[0, :40 * 4 + 112].abs().amax(dim=0)
    assert local[0, 3] > 0.9 * local.max() and local[0, 3] > 10 * local[3, 0]
    # the stride-32 channels are shared by the 2x2 tokens of one 32-pixel cell
    top = after[0, 40 * 4 + 112:]
    assert torch.equal(top[:, 0::2, 0::2], top[:, 1::2, 1::2]) and torch.equal(top[:, 0::2, 1::2], top[:, 1::2, 0::2])
