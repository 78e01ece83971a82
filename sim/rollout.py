"""`rollout(env, policy_fn, seed)`: run one episode, return success, length and (optionally) frames."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import numpy as np


@dataclass
class RolloutResult:
    success: bool
    steps: int
    total_reward: float
    task: str
    instruction: str
    frames: list[np.ndarray] = field(default_factory=list)  # (H, W, 3) uint8 per step incl. the first, if recorded
    info: dict = field(default_factory=dict)  # the last info


def rollout(
    env,
    policy_fn: Callable[[dict, dict], np.ndarray],
    seed: int | None,
    options: dict | None = None,
    record: bool = False,
    max_steps: int | None = None,
) -> RolloutResult:
    """Reset `env` with `seed`/`options` and step `policy_fn(obs, info) -> action` until the episode ends.

    `record=True` stores `env.render()` frames (render_mode="rgb_array"), else the front camera of
    the observation when present.  `success` is true if any step reported `info["success"]`.
    """
    obs, info = env.reset(seed=seed, options=options)
    frames: list[np.ndarray] = []

    def grab(o):
        if not record:
            return
        frame = env.render() if getattr(env, "render_mode", None) == "rgb_array" else None
        if frame is None and "images" in o:
            frame = next(iter(o["images"].values()))
        if frame is not None:
            frames.append(np.asarray(frame).copy())

    grab(obs)
    ok = bool(info.get("success", False))
    total, steps = 0.0, 0
    while True:
        obs, reward, terminated, truncated, info = env.step(policy_fn(obs, info))
        steps += 1
        total += float(reward)
        ok = ok or bool(info.get("success", False))
        grab(obs)
        if terminated or truncated or (max_steps is not None and steps >= max_steps):
            break
    return RolloutResult(ok, steps, total, str(info.get("task")), str(info.get("instruction")), frames, info)
