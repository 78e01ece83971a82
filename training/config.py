"""`TrainConfig`: every option of `mot train`, validated; the CLI (tyro) and recipe files set these fields.

Each field's docstring is its `--help` text. What a new policy looks like comes from the preset (and, for
an --init run, from the checkpoint it starts from); these fields say how to train it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

from policy.checkpoint import STORAGE_DTYPES
from policy.errors import InputError


@dataclass
class TrainConfig:
    stage: Literal["align", "policy"]
    """align: the vision expert and a grounding head learn to find what the words name; policy: the body
    expert learns flow matching over action chunks (language and vision frozen)"""
    data: str
    """dataset directory (from `mot collect`)"""
    out: str
    """run directory: checkpoint/, train_state.pt, metrics.csv, loss.png, tensorboard/, result.json"""
    preset: Literal["tiny", "small"] = "small"
    """model size of a new policy (tiny: tests)"""
    init: str | None = None
    """policy checkpoint to start from (the align stage's checkpoint, for --stage policy)"""
    routing: Literal["mot", "dense"] = "mot"
    """ablation: dense = every modality shares one expert (the MoT-vs-dense comparison)"""
    prefix_mask: Literal["blockwise", "bidirectional"] = "blockwise"
    """ablation: bidirectional = text and images attend to each other (nothing cacheable per instruction)"""
    train_vision: bool = False
    """ablation: also train the vision expert in the policy stage"""
    image_token_stride: Literal[16, 32] | None = None
    """new policy: pixels per image-token side (16: 8x8 tokens per camera at 128 px; default: the preset's)"""
    prefix_pool: int | None = None
    """the body attends to the image K/V averaged over PREFIX_POOL x PREFIX_POOL cells (2: an 8x8 grid becomes
    4x4); default: the preset's for a new policy, the --init checkpoint's otherwise (the body's choice: it may
    change when the body starts training)"""
    referents: float = 0.5
    """align: chance per sample that the instruction becomes a referring expression for a random object of
    the scene (needs per-frame scene tracks)"""
    only_bridge: bool = False
    """align, bridged --init policy (`mot bridge-language`): train its text bridge alone, so the image K/V its
    body was trained on change only through the words they attend to"""
    pad_referents: float = 0.0
    """align: share of those referring expressions that name a pad of the scene too"""
    target_points: Literal["model"] | None = None
    """policy: the body's state also carries where the instruction's object and pad appear in each camera:
    trained on the simulator's ground truth, computed by the policy's own grounding head at inference"""
    delta_actions: Literal["on", "off"] | None = None
    """joint targets relative to the measured joints (on) or absolute (off); default: the preset's for a new
    policy, the --init checkpoint's otherwise"""
    steps: int = 2000
    """optimizer steps in all (a resumed run continues up to this)"""
    batch_size: int = 32
    """samples per step and process"""
    lr: float = 3e-4
    """peak learning rate (AdamW)"""
    weight_decay: float = 1e-4
    """AdamW weight decay"""
    warmup: int = 100
    """linear warmup steps, then cosine decay"""
    min_lr_ratio: float = 0.1
    """the cosine decays to lr * min_lr_ratio"""
    grad_clip: float = 1.0
    """gradient-norm clip"""
    ema: float = 0.0
    """EMA decay of the weights the checkpoint stores (0: off; e.g. 0.999)"""
    log_every: int = 25
    """steps between rows of metrics.csv / TensorBoard scalars"""
    eval_every: int = 250
    """steps between held-out evaluations"""
    ckpt_every: int = 250
    """steps between checkpoints (what a resumed run loses at most)"""
    holdout_fraction: float = 0.1
    """share of episodes held out for evaluation"""
    precision: Literal["float32", "bfloat16", "auto"] = "float32"
    """bfloat16: the forward runs under bfloat16 autocast (matmuls and convolutions in bfloat16, weights, optimizer
    and held-out evaluation in float32): 1.6x faster align steps on a CPU with AVX512-BF16 or AMX, refused on
    one without (emulated bfloat16 is slower than float32); the policy stage's small body matmuls gain nothing.
    auto: bfloat16 where the CPU has it natively, else float32 (result.json says which ran)"""
    save_dtype: Literal["float32", "float16", "bfloat16", "int8"] = "float32"
    """storage dtype of OUT/checkpoint (the training state stays float32)"""
    cache_prefix: bool = True
    """policy stage: compute the frozen text/image K/V once (training/prefix_cache.py)"""
    prefix_cache_dir: str | None = None
    """policy stage: where the prefix cache is kept (default OUT/prefix_cache); runs on the same data and
    align checkpoint share it"""
    seed: int = 0
    """seed of the weights, the held-out split and every batch"""
    resume: bool = False
    """continue from OUT/train_state.pt if it exists"""
    stop_at: int | None = None
    """leave after this step (checkpointed), as a kill would; --resume continues"""

    def __post_init__(self) -> None:
        if self.stage not in ("align", "policy"):
            raise InputError(f"stage: expected 'align' or 'policy', received {self.stage!r}")
        for name in ("data", "out"):
            if not str(getattr(self, name)).strip():
                raise InputError(f"{name}: expected a directory, received an empty string")
        for name in ("steps", "batch_size", "log_every", "eval_every", "ckpt_every"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise InputError(f"{name}: expected an int > 0, received {value!r}")
        if self.warmup < 0:
            raise InputError(f"warmup: expected >= 0 steps, received {self.warmup}")
        if self.stop_at is not None and self.stop_at <= 0:
            raise InputError(f"stop_at: expected a step > 0 or None, received {self.stop_at}")
        for name in ("lr", "grad_clip"):
            value = getattr(self, name)
            if not math.isfinite(value) or value <= 0:
                raise InputError(f"{name}: expected a finite number > 0, received {value}")
        if not math.isfinite(self.weight_decay) or self.weight_decay < 0:
            raise InputError(f"weight_decay: expected a finite number >= 0, received {self.weight_decay}")
        for name in ("referents", "pad_referents", "min_lr_ratio"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise InputError(f"{name}: expected a number in [0, 1], received {getattr(self, name)}")
        if not 0.0 <= self.holdout_fraction < 1.0:
            raise InputError(f"holdout_fraction: expected a share in [0, 1), received {self.holdout_fraction}")
        if not 0.0 <= self.ema < 1.0:
            raise InputError(f"ema: expected a decay in [0, 1), received {self.ema}")
        if self.save_dtype not in STORAGE_DTYPES:
            raise InputError(f"save_dtype: expected one of {sorted(STORAGE_DTYPES)}, received {self.save_dtype!r}")
        if self.precision not in ("float32", "bfloat16", "auto"):
            raise InputError(f"precision: expected 'float32', 'bfloat16' or 'auto', received {self.precision!r}")
        if self.delta_actions not in (None, "on", "off"):
            raise InputError(f"delta_actions: expected 'on', 'off' or None, received {self.delta_actions!r}")
        if self.target_points not in (None, "model"):
            raise InputError(f"target_points: expected 'model' or None, received {self.target_points!r}")
        if self.prefix_pool is not None and (isinstance(self.prefix_pool, bool) or not isinstance(self.prefix_pool, int)
                                             or self.prefix_pool < 1):
            raise InputError(f"prefix_pool: expected a positive int or None, received {self.prefix_pool!r}")
        if self.target_points is not None and self.stage != "policy":
            raise InputError("target_points: expected stage 'policy' (it widens the body's state), "
                             f"received stage {self.stage!r}")
        if self.image_token_stride not in (None, 16, 32):
            raise InputError(f"image_token_stride: expected 16, 32 or None, received {self.image_token_stride!r}")


# Fields of runs from before the experiment-only options were removed (git tag experiments-2026-11), with
# the value that meant "off": a train_state.pt that holds them at that value resumes, any other is refused.
RETIRED_FIELDS = {"body_grounding": 0.0, "goal_token": False, "point_cameras": None, "point_noise": 0.0,
                  "train_points_from": None, "pointed_share": 0.5, "early_fraction": 0.0, "early_window": 3}
