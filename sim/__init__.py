"""MuJoCo tabletop suite: language-conditioned tasks, scripted experts, fast offscreen rendering.

    import sim, gymnasium as gym
    env = gym.make("mot/Tabletop-v0", task="pick", render_mode="rgb_array")      # or task="multi"
    env = gym.make("mot/TabletopMulti-v0", split="heldout")
    obs, info = env.reset(seed=0, options={"instruction": "put the red cube on the blue pad"})
    expert = sim.make_expert(env)
    result = sim.rollout(env, expert, seed=0)

No torch here: the contract with `policy/` is plain numpy dicts (see DESIGN.md).
"""

from __future__ import annotations

import os

# Offscreen rendering without a display: EGL unless the user chose otherwise.  Must run before mujoco
# is imported (mujoco picks its GL backend at import time).
os.environ.setdefault("MUJOCO_GL", "egl")
if os.environ["MUJOCO_GL"] in ("egl", "osmesa"):
    os.environ.setdefault("PYOPENGL_PLATFORM", os.environ["MUJOCO_GL"])

import gymnasium  # noqa: E402

from sim.experts import ExpertConfig, ScriptedExpert, make_expert  # noqa: E402
from sim.language import (  # noqa: E402
    COLORS,
    PALETTE,
    SPLITS,
    TASK_FAMILIES,
    TaskSpec,
    generate_instruction,
    parse_instruction,
)
from sim.robot import ACTION_HIGH, ACTION_LOW, CONTROL_HZ, JOINT_NAMES  # noqa: E402
from sim.rollout import RolloutResult, rollout  # noqa: E402
from sim.tabletop_env import CAMERAS, TabletopConfig, TabletopEnv, default_config  # noqa: E402
from sim.vector import make_vec_env  # noqa: E402

ENV_ID = "mot/Tabletop-v0"
MULTI_ENV_ID = "mot/TabletopMulti-v0"


def _register() -> None:
    if ENV_ID not in gymnasium.registry:
        gymnasium.register(id=ENV_ID, entry_point="sim.tabletop_env:TabletopEnv", disable_env_checker=True)
    if MULTI_ENV_ID not in gymnasium.registry:
        gymnasium.register(
            id=MULTI_ENV_ID, entry_point="sim.tabletop_env:TabletopEnv", kwargs={"task": "multi"},
            disable_env_checker=True,
        )


_register()

__all__ = [
    "ACTION_HIGH", "ACTION_LOW", "CAMERAS", "COLORS", "CONTROL_HZ", "ENV_ID", "ExpertConfig", "JOINT_NAMES",
    "MULTI_ENV_ID", "PALETTE", "RolloutResult", "SPLITS", "ScriptedExpert", "TASK_FAMILIES", "TabletopConfig",
    "TabletopEnv", "TaskSpec", "default_config", "generate_instruction", "make_expert", "make_vec_env",
    "parse_instruction", "rollout",
]
