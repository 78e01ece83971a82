"""MoTPolicy: a Mixture-of-Transformers flow-matching policy.

Tokens are laid out by modality block, and each block routes to its own expert:

    [ text ........ | image (cams x grid^2) ... | state + points | action (horizon) ]
      language        vision  -> grounding head   body             body
      (frozen MiniLM) (init from MiniLM, "align") (trained in "policy")

A bigger language expert (all-mpnet-base-v2: config.vision_model) runs bridged: alone on the text, its chosen
layers projected to each MoT layer's text K/V (policy/language.py TextBridge) or its tokens looked up in a memory
of trained tokens' K/V (RetrievalBridge); the vision and body experts keep
MiniLM's shape, so the per-observation and per-step passes cost what they cost lined up.

The policy points, then acts: the grounding head reads the vision expert's final image tokens and says
where the instruction's object and pad are in each camera (policy/grounding.py); those target points join
the robot's state in the state token, in the same observation pass. The body attends to the image K/V
averaged over prefix_pool x prefix_pool cells (8x8 tokens to point with, 4x4 for the body to attend to).

All tokens share one attention per layer. The attention is block-causal over the modality blocks
(see `make_attn_mask`): a block sees itself and every block before it. That one rule gives the
whole caching scheme, because a block's K/V never depend on anything after it:

    encode_text(ids)               text K/V, once per instruction   (language expert only)
    observe(frames, state, text)   + image K/V (pooled) + target points + state K/V, once per observation
                                   (vision expert, grounding head, body expert on the state token)
    denoise(x_t, t, prefix)        action tokens only, every Euler step (body expert)

Each of those passes attends over [cached K/V | its own K/V]; its only mask is key padding of the
text. `velocity_uncached` runs the whole sequence at once with the explicit block mask; tests prove
both agree (prefix_pool 1). The three passes are also the three exported graphs (policy/export.py).

Flow matching follows pi0: x_t = t * noise + (1 - t) * actions, target u = noise - actions, and
sampling integrates from t = 1 (noise) to t = 0 (actions) with Euler steps.
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn

from policy.attention import (ACTION, IMAGE, STATE, TEXT, Prefix, attend, attention_bias, cat_tokens, euler_sample,
                              make_attn_mask, pool_matrix, posemb_sincos)
from policy.errors import InputError
from policy.config import PolicyConfig
from policy.experts import BertExpert, BodyExpert, merge_heads
from policy.grounding import GroundingHead, point_confidence, pointed_uv
from policy.inputs import Observation, validate_batch
from policy.language import (BertDims, BertEmbeddings, LanguageEncoder, RetrievalBridge, TextBridge, TextTokenizer,
                             bridge_taps, load_bert_weights, load_language_weights, resolve_language_model)
from policy.text import attention_dims
from policy.normalize import NormStats, to_absolute, to_relative
from policy.stages import TrainingStages
from policy.vision import EfficientNetTrunk, ImageTokenizer, preprocess_images

class MoTPolicy(TrainingStages, nn.Module):
    def __init__(self, cfg: PolicyConfig, norm_stats: NormStats | None = None):
        super().__init__()
        self.cfg = cfg
        self.language_folder = resolve_language_model(cfg.language_model)
        self.language_dims = BertDims.from_folder(self.language_folder, cfg.language_layers)
        # The MoT layers' shape (heads, head dim, depth: every K/V); bridged, the vision model's (config.vision_model).
        self.vision_folder = resolve_language_model(cfg.vision_model) if cfg.bridged else self.language_folder
        dims = attention_dims(cfg)
        self.dims = dims
        dense = cfg.routing == "dense"
        # Dense: one expert (the language model's shape) for every token, so the body is as wide.
        body_width = dims.width if dense else cfg.body_width
        cond_dim = body_width

        # Modality encoders.
        self.tokenizer = TextTokenizer(self.language_folder, cfg.max_text_tokens)
        if cfg.bridged:  # the language model alone on the text, then its layers' states -> each MoT layer's text K/V
            self.text_embed = None
            self.language = LanguageEncoder(self.language_folder, self.language_dims, cfg.max_text_tokens)
            self.text_bridge = RetrievalBridge(self.language_dims.width, dims.layers, dims.heads, dims.head_dim,
                                               cfg.bridge_memory, cfg.bridge_temperature) \
                if cfg.text_bridge == "retrieval" else TextBridge(self.language_dims.width, dims.heads, dims.head_dim,
                                                                  bridge_taps(self.language_dims.layers, dims.layers))
        else:
            self.text_embed = BertEmbeddings(dims)
        self.trunk = EfficientNetTrunk(cfg.image_size, strides=cfg.image_feature_strides,
                                       token_stride=cfg.image_token_stride)
        self.image_embed = ImageTokenizer(len(cfg.cameras), cfg.feature_grid, cfg.image_feature_dim,
                                          dims.width, dims.eps)
        self.state_in = nn.Linear(cfg.state_dim, body_width)
        self.action_in = nn.Linear(cfg.action_dim, body_width)
        self.action_pos = nn.Parameter(torch.randn(cfg.horizon, body_width) * 0.02)
        self.time_mlp = nn.Sequential(nn.Linear(cfg.time_embed_dim, cond_dim), nn.SiLU(), nn.Linear(cond_dim, cond_dim))
        # The state token's adaLN condition: a learned "no time" vector, so state K/V are t-independent.
        self.state_cond = nn.Parameter(torch.zeros(cond_dim))

        # MoT layers: one ModuleDict of experts per layer; `route` maps a modality to its expert.
        def bert() -> BertExpert:
            return BertExpert(dims.width, dims.heads, dims.intermediate, dims.eps)

        def body() -> BodyExpert:
            return BodyExpert(body_width, dims.heads, dims.head_dim, cfg.body_mlp_ratio, cond_dim)

        if dense:
            self.layers = nn.ModuleList([nn.ModuleDict({"shared": bert()}) for _ in range(dims.layers)])
            self.route = {"text": "shared", "image": "shared", "body": "shared"}
        elif cfg.bridged:  # no language expert in the MoT layers: text K/V come from the bridge
            self.layers = nn.ModuleList([nn.ModuleDict({"vision": bert(), "body": body()}) for _ in range(dims.layers)])
            self.route = {"text": None, "image": "vision", "body": "body"}
        else:
            self.layers = nn.ModuleList([
                nn.ModuleDict({"language": bert(), "vision": bert(), "body": body()}) for _ in range(dims.layers)])
            self.route = {"text": "language", "image": "vision", "body": "body"}
        self.action_norm = nn.LayerNorm(body_width, eps=1e-6)
        self.action_out = nn.Linear(body_width, cfg.action_dim)
        # Where the instruction's object and pad are, from the final image tokens (trained in "align").
        self.grounding = GroundingHead(dims.width)

        # Pretrained weights: language expert (and the dense shared expert) from the BERT folder;
        # the vision expert starts as a copy of the language expert (LMFusion), bridged as the vision model's layers.
        if cfg.bridged:
            load_language_weights(self.vision_folder, dims, None, [layer["vision"] for layer in self.layers])
        else:
            load_bert_weights(self.language_folder, self.text_embed, [layer[self.route["text"]] for layer in self.layers])
        if not dense and not cfg.bridged:
            for layer in self.layers:
                layer["vision"].load_state_dict(copy.deepcopy(layer["language"].state_dict()))

        # Normalisation statistics live in norm_stats.json, not in the weights (persistent=False).
        stats = norm_stats or NormStats.identity(cfg.state_dim, cfg.action_dim)
        for name in ("state_mean", "state_std", "action_mean", "action_std"):
            self.register_buffer(name, torch.zeros(0), persistent=False)
        # 1.0 where an action dimension is predicted relative to the state (config.delta_action_mask).
        self.register_buffer("delta_mask", torch.zeros(0), persistent=False)
        self.set_delta_action_mask(cfg.delta_action_mask)
        self.set_norm_stats(stats)
        self.set_stage("policy")

    # -- training stages and normalisation ---------------------------------------------------------
    def set_norm_stats(self, stats: NormStats) -> None:
        if stats.state_mean.shape != (self.cfg.state_dim,) or stats.action_mean.shape != (self.cfg.action_dim,):
            raise InputError(f"norm_stats: expected state ({self.cfg.state_dim},) and action ({self.cfg.action_dim},) "
                             f"vectors, received {stats.state_mean.shape} and {stats.action_mean.shape}")
        self.norm_stats = stats
        for name in ("state_mean", "state_std", "action_mean", "action_std"):
            setattr(self, name, torch.as_tensor(getattr(stats, name), dtype=torch.float32))

    def normalize_state(self, state: torch.Tensor) -> torch.Tensor:
        """The body's whole state (B, state_dim), target points included (training batches)."""
        return (state - self.state_mean) / self.state_std

    def normalize_robot_state(self, state: torch.Tensor) -> torch.Tensor:
        """The robot's state (B, robot_state_dim): what callers pass at inference."""
        r = self.cfg.robot_state_dim
        return (state - self.state_mean[:r]) / self.state_std[:r]

    def normalize_actions(self, actions: torch.Tensor, state: torch.Tensor) -> torch.Tensor:
        """Chunk (B, horizon, A) and state (B, S) in robot units -> the normalised chunk the model sees."""
        return (to_relative(actions, state, self.delta_mask) - self.action_mean) / self.action_std

    def unnormalize_actions(self, actions: torch.Tensor, state: torch.Tensor) -> torch.Tensor:
        return to_absolute(actions * self.action_std + self.action_mean, state, self.delta_mask)

    # -- the joint-attention core ------------------------------------------------------------------
    def _forward(self, segments: list[tuple[str, torch.Tensor, torch.Tensor | None]],
                 past: Prefix | None, new_valid: torch.Tensor, attn_mask: torch.Tensor | None = None,
                 kv_pool: torch.Tensor | None = None):
        """Runs contiguous modality segments through every MoT layer with one joint attention.

        segments: [(modality, h (B, L_i, D_expert), cond (B, L_i, C) or None)], in token order
        past:     cached K/V of earlier tokens (attended to, not recomputed), or None
        new_valid: (B, sum L_i) bool validity of the new tokens
        attn_mask: (B, 1, L_new, L_past + L_new) bool; default = key padding only, which is the exact
                   block-causal mask whenever the new tokens form one block (the cached passes)
        kv_pool:  (L_kept, L_new) or None: each layer keeps kv_pool @ its new K and V (the image pass: the pooled
                  grid the body attends to), so the full-resolution K/V are attended to but never stacked
        returns (hidden per segment, new kv (layers, 2, B, heads, L_new or L_kept, head_dim))
        """
        if attn_mask is None:
            keys_valid = new_valid if past is None else torch.cat([past.valid, new_valid], dim=1)
            attn_mask = keys_valid[:, None, None, :]  # (B, 1, 1, L_keys): broadcast over queries
        hs = [h for _, h, _ in segments]
        bias = attention_bias(attn_mask, hs[0].dtype)  # once for every layer (see attention_bias)
        new_kv = []
        for i, layer in enumerate(self.layers):
            experts = [layer[self.route[modality]] for modality, _, _ in segments]
            qkvc = [expert.qkv(h, cond) for expert, h, (_, _, cond) in zip(experts, hs, segments)]
            q, k, v = (cat_tokens([x[j] for x in qkvc]) for j in range(3))
            new_kv.append(torch.stack([k, v]) if kv_pool is None else torch.stack([kv_pool @ k, kv_pool @ v]))
            if past is not None:  # cached keys/values of earlier blocks come first in token order
                k = torch.cat([past.kv[i, 0], k], dim=2)
                v = torch.cat([past.kv[i, 1], v], dim=2)
            attn = merge_heads(attend(q, k, v, bias))
            outs = attn.split([h.shape[1] for h in hs], dim=1) if len(hs) > 1 else [attn]
            hs = [expert.finish(h, out, c[3]) for expert, h, out, c in zip(experts, hs, outs, qkvc)]
        return hs, torch.stack(new_kv)

    # -- token embeddings ---------------------------------------------------------------------------
    def embed_images(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 (B, cams, H, W, 3) -> image tokens (B, cams * grid^2, width). The trunk never trains."""
        with torch.no_grad():
            features = self.trunk(preprocess_images(images, self.cfg.image_size))
        return self.image_embed(features)

    def embed_state(self, state_norm: torch.Tensor):
        """state (B, S) normalised -> the state token (B, 1, D_body) and its adaLN condition (B, 1, C):
        a learned "no time" vector, so the state's K/V do not depend on the flow time."""
        h = self.state_in(state_norm)[:, None]
        return h, self.state_cond.expand(h.shape[0], 1, -1)

    def embed_actions(self, x_t: torch.Tensor, t: torch.Tensor):
        """noisy chunk (B, horizon, A), time (B,) -> tokens (B, horizon, D_body), condition (B, 1, C).

        The condition is one vector per sample, broadcast over the chunk: the adaLN projections then
        run once per sample instead of once per action token (same result, ~30 % fewer body FLOPs).
        """
        h = self.action_in(x_t) + self.action_pos[None]
        cond = self.time_mlp(posemb_sincos(t, self.cfg.time_embed_dim))[:, None]
        if self.cfg.routing == "dense":  # BERT experts take no condition: time joins the token instead
            return h + cond, None
        return h, cond

    # -- the cached passes (also the exported graphs) ---------------------------------------------
    def encode_text(self, token_ids: torch.Tensor, text_valid: torch.Tensor) -> Prefix:
        """token_ids (B, L) int64, text_valid (B, L) bool -> text K/V. Cache it per instruction."""
        if self.cfg.prefix_mask == "bidirectional":
            # Text attends to images in this ablation: nothing can be computed before the images arrive.
            empty = self.layers[0][self.route["text"]].key.weight.new_zeros(
                (len(self.layers), 2, token_ids.shape[0], self.dims.heads, 0, self.dims.head_dim))
            return Prefix(empty, text_valid[:, :0], token_ids, text_valid)
        if self.cfg.bridged:  # the pretrained encoder alone, then its chosen layers projected to each MoT layer's K/V
            with torch.no_grad():  # frozen, and run once per instruction: no graph through the language model
                states = self.language(token_ids, text_valid)
            return Prefix(self.text_bridge(states), text_valid)
        _, kv = self._forward([("text", self.text_embed(token_ids), None)], None, text_valid)
        return Prefix(kv, text_valid)

    def encode_images(self, images: torch.Tensor, text: Prefix, return_hidden: bool = False):
        """images uint8 (B, cams, H, W, 3) + text prefix -> the body's prefix: text + pooled image K/V.

        Blockwise: image tokens attend to cached text K/V and to each other (all cams x grid^2 of them).
        Bidirectional ablation: text and image tokens run together and attend to each other.
        return_hidden: also return the final image token states (B, cams * grid^2, width), the grounding head's input.
        """
        return self.encode_image_tokens(self.embed_images(images), text, return_hidden)

    def encode_image_tokens(self, tokens: torch.Tensor, text: Prefix, return_hidden: bool = False):
        """`encode_images` from image tokens (B, cams * grid^2, width) (the exported graph embeds its own)."""
        ones = torch.ones(tokens.shape[:2], dtype=torch.bool, device=tokens.device)
        if self.cfg.prefix_mask == "bidirectional":
            valid = torch.cat([text.text_valid, ones], dim=1)
            segments = [("text", self.text_embed(text.token_ids), None), ("image", tokens, None)]
            hs, kv = self._forward(segments, None, valid)
            n_text, pool = text.text_valid.shape[1], self.kv_pool(kv)
            image_kv = kv[..., n_text:, :] if pool is None else pool @ kv[..., n_text:, :]
            prefix = Prefix(torch.cat([kv[..., :n_text, :], image_kv], dim=4), valid[:, : n_text + self.cfg.body_image_tokens])
        else:
            hs, pooled = self._forward([("image", tokens, None)], text, ones, kv_pool=self.kv_pool(tokens))
            prefix = text.extend(pooled, ones[:, : pooled.shape[4]])
        return (prefix, hs[-1]) if return_hidden else prefix

    def kv_pool(self, like: torch.Tensor) -> torch.Tensor | None:
        """What the body attends to of the image K/V: kv_pool @ (..., cams * g^2, hd) -> (..., cams * (g/p)^2, hd),
        p = prefix_pool, each p x p block of a camera's cells averaged (attention.pool_matrix), in `like`'s dtype
        and device; None for p = 1. The image tokens themselves attend to every cell. Built from the config on
        every call: training sets prefix_pool after loading an align checkpoint."""
        pool = pool_matrix(len(self.cfg.cameras), self.cfg.feature_grid, self.cfg.prefix_pool)
        return None if pool is None else pool.to(dtype=like.dtype, device=like.device)

    def point(self, image_hidden: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Final image tokens (B, cams * grid^2, width) -> target points (B, 4 * cams) (u, v) in [0, 1], and
        their confidence (B, 2 * cams): the grounding head's top token per camera and target, with its offset."""
        scores, offsets, _ = self.grounding(image_hidden)
        cams = len(self.cfg.cameras)
        return pointed_uv(scores, offsets, cams, self.cfg.feature_grid), point_confidence(scores, cams)

    def observe(self, images: torch.Tensor, robot_state_norm: torch.Tensor, text: Prefix,
                points: torch.Tensor | None = None) -> tuple[Prefix, torch.Tensor | None, torch.Tensor | None]:
        """One observation pass: images uint8 (B, cams, H, W, 3), the robot's normalised state (B, S_robot),
        text prefix -> (full prefix for denoising, target points (B, 4 * cams) or None, confidence or None).

        Points, then act: with target_points, the grounding head points on the same image pass the body
        attends to, and the points (normalised like the rest of the state) join the state token. `points`
        (B, 4 * cams) replaces the head's (e.g. the simulator's truth in `mot eval --sim-points`)."""
        if self.cfg.target_points is None:
            return self.encode_state(robot_state_norm, self.encode_images(images, text)), None, None
        prefix, hidden = self.encode_images(images, text, return_hidden=True)
        predicted, confidence = self.point(hidden)
        points = predicted if points is None else points
        r = self.cfg.robot_state_dim
        points_norm = (points - self.state_mean[r:]) / self.state_std[r:]
        state_norm = torch.cat([robot_state_norm, points_norm.to(robot_state_norm.dtype)], dim=1)
        return self.encode_state(state_norm, prefix), points, confidence

    def encode_state(self, state_norm: torch.Tensor, prefix: Prefix) -> Prefix:
        """Normalised state (B, S) -> prefix with the state token's K/V appended.

        The state token attends to the whole observation prefix and to itself: one block, so key
        padding of the text is its only mask.
        """
        h, cond = self.embed_state(state_norm)
        ones = torch.ones(h.shape[:2], dtype=torch.bool, device=h.device)
        _, kv = self._forward([("body", h, cond)], prefix, ones)
        return prefix.extend(kv, ones)

    def denoise(self, x_t: torch.Tensor, t: torch.Tensor, prefix: Prefix) -> torch.Tensor:
        """One flow step: noisy normalised chunk (B, horizon, A), t (B,) -> velocity (B, horizon, A).

        Only the action tokens are computed; they attend to the cached prefix and to each other.
        """
        h, cond = self.embed_actions(x_t, t)
        ones = torch.ones(h.shape[:2], dtype=torch.bool, device=h.device)
        (h,), _ = self._forward([("body", h, cond)], prefix, ones)
        return self.action_out(self.action_norm(h))

    def velocity_uncached(self, token_ids: torch.Tensor, text_valid: torch.Tensor, images: torch.Tensor,
                          state_norm: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """The same velocity as the cached passes, from one pass over the whole sequence.

        The reference for cache tests and the "naive" benchmark (recomputes the prefix every step). The body
        attends to every image token here: with prefix_pool > 1 the cached passes differ by design.
        """
        image_h = self.embed_images(images)
        state_h, state_cond = self.embed_state(state_norm)
        action_h, action_cond = self.embed_actions(x_t, t)
        image_block = TEXT if self.cfg.prefix_mask == "bidirectional" else IMAGE
        n_text = token_ids.shape[1]
        lengths = [n_text, image_h.shape[1], 1, action_h.shape[1]]
        blocks = torch.repeat_interleave(torch.tensor([TEXT, image_block, STATE, ACTION]), torch.tensor(lengths))
        b = token_ids.shape[0]
        valid = torch.cat([text_valid, torch.ones(b, sum(lengths[1:]), dtype=torch.bool)], dim=1)
        segments = [("image", image_h, None), ("body", state_h, state_cond), ("body", action_h, action_cond)]
        mask = make_attn_mask(blocks, valid)
        if self.cfg.bridged:  # the text block comes from the language model alone: its K/V are the only past
            hs, _ = self._forward(segments, self.encode_text(token_ids, text_valid), valid[:, n_text:],
                                  mask[:, :, n_text:])
        else:
            hs, _ = self._forward([("text", self.text_embed(token_ids), None)] + segments, None, valid, mask)
        return self.action_out(self.action_norm(hs[-1]))

    # -- public API -----------------------------------------------------------------------------------
    def encode_observation(self, obs: Observation, text: Prefix | None = None,
                           points: torch.Tensor | None = None) -> Prefix:
        """Validated observation (the robot's state) -> full prefix (text + images + state) ready for denoising."""
        if text is None:
            text = self.encode_text(*self.tokenizer(obs.instruction))
        return self.observe(obs.images, self.normalize_robot_state(obs.state), text, points)[0]

    def compute_loss(self, batch: dict, noise: torch.Tensor | None = None,
                     time: torch.Tensor | None = None) -> torch.Tensor:
        """Flow-matching loss (scalar) on a batch with `actions` (see `flow_matching_loss`).

        When nothing in the text/image path trains (the "policy" stage), the prefix runs without
        autograd: a step costs little more than the body expert itself.
        """
        obs = validate_batch(batch, self.cfg, require_actions=True)
        with torch.set_grad_enabled(torch.is_grad_enabled() and self.prefix_trainable()):
            token_ids, text_valid = self.tokenizer(obs.instruction)
            text = self.encode_text(token_ids, text_valid)
            prefix = self.encode_images(obs.images, text)
        return self.flow_matching_loss(prefix, obs.state, obs.actions, noise, time)

    def flow_matching_loss(self, prefix: Prefix, state: torch.Tensor, actions: torch.Tensor,
                           noise: torch.Tensor | None = None, time: torch.Tensor | None = None) -> torch.Tensor:
        """The loss from a text + image prefix (computed here, or cached by training): state (B, S)
        and actions (B, horizon, A) in robot units. Only the body expert runs from here on."""
        actions = self.normalize_actions(actions, state)
        b = actions.shape[0]
        prefix = self.encode_state(self.normalize_state(state), prefix)
        if time is None:
            beta = torch.distributions.Beta(self.cfg.time_beta_alpha, self.cfg.time_beta_beta)
            time = beta.sample((b,)) * 0.999 + 0.001  # keep t away from 0, where x_t = actions exactly
        if noise is None:
            noise = torch.randn_like(actions)
        t = time[:, None, None]
        x_t = t * noise + (1 - t) * actions
        velocity = self.denoise(x_t, time, prefix)
        loss = F.mse_loss(velocity, noise - actions)
        return loss

    @torch.no_grad()
    def sample_actions(self, obs: dict, num_steps: int | None = None, noise: torch.Tensor | None = None,
                       points: torch.Tensor | None = None) -> torch.Tensor:
        """Observation dict (batch of B, the robot's state) -> action chunk (B, horizon, action_dim) in robot units."""
        o = validate_batch(obs, self.cfg)
        prefix = self.encode_observation(o, points=points)
        shape = (o.batch_size, self.cfg.horizon, self.cfg.action_dim)
        if noise is None:
            noise = torch.randn(shape)
        elif tuple(noise.shape) != shape:
            raise InputError(f"noise: expected shape {shape}, received {tuple(noise.shape)}")
        steps = self.cfg.num_inference_steps if num_steps is None else num_steps
        b = o.batch_size
        x = euler_sample(lambda x, t: self.denoise(x, torch.full((b,), t), prefix), noise.float(), steps)
        return self.unnormalize_actions(x, o.state)

    # Checkpoints: policy/checkpoint.py `save_checkpoint(policy, dir)` / `load_checkpoint(dir)` (a layer above).


__all__ = ["MoTPolicy", "Prefix", "make_attn_mask", "euler_sample", "posemb_sincos"]
