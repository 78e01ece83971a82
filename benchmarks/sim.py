"""Simulation throughput and scripted-expert success.  Prints JSON with --json.

    python benchmarks/sim.py --json [--episodes 200] [--steps 300] [--image-size 128]

Figures (one process, one core, same run):
  mj_step_per_s                 raw `mj_step` on an episode's scene
  env_steps_per_s_state_only    `env.step` at 10 Hz with render_mode=None
  env_steps_per_s_images        `env.step` rendering both cameras at image_size
  bare_bound_steps_per_s        the floor: substeps of physics + two bare renders, no env code
  images_to_bound_ratio         env_steps_per_s_images / bare_bound_steps_per_s (target >= 0.7)
  expert_success                per family: success rate over `episodes` seeded episodes
"""

from __future__ import annotations

import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402

import sim  # noqa: E402  (sets MUJOCO_GL before mujoco is imported)
import mujoco  # noqa: E402
from dataclasses import dataclass  # noqa: E402
from typing import Literal  # noqa: E402

from policy.options import parse  # noqa: E402
from training.cli import run_command  # noqa: E402


def _rate(fn, n: int) -> float:
    fn()  # warm-up
    t = time.perf_counter()
    for _ in range(n):
        fn()
    return n / (time.perf_counter() - t)


def measure_throughput(steps: int, image_size: int, rounds: int = 3) -> dict:
    """Best of `rounds` interleaved measurements (the machine is shared; interleaving keeps the
    env-with-images figure and its bare bound comparable)."""
    env = sim.TabletopEnv(task="pick", max_episode_steps=10**9)
    env.reset(seed=0)
    hold = np.concatenate([env.arm_qpos(), [0.08]]).astype(np.float32)
    out: dict = {}
    m, d = env.model, env.data
    out["mj_step_per_s"] = max(_rate(lambda: mujoco.mj_step(m, d), steps * 20) for _ in range(rounds))
    env.reset(seed=0)
    out["env_steps_per_s_state_only"] = max(_rate(lambda: env.step(hold), steps) for _ in range(rounds))
    env.close()

    env = sim.TabletopEnv(task="pick", render_mode="rgb_array", image_size=image_size, max_episode_steps=10**9)
    env.reset(seed=0)
    # the bare bound: same model, same data, same renderer, none of the env's code
    renderer, m, d, n_sub = env._renderer, env.model, env.data, env.n_substeps

    def bare():
        mujoco.mj_step(m, d, n_sub)
        for cam in ("front", "wrist"):
            renderer.update_scene(d, camera=cam)
            renderer.render()

    with_images, bound = [], []
    for _ in range(rounds):
        with_images.append(_rate(lambda: env.step(hold), steps))
        bound.append(_rate(bare, steps))
    env.close()
    out["env_steps_per_s_images"] = max(with_images)
    out["bare_bound_steps_per_s"] = max(bound)
    out["images_to_bound_ratio"] = out["env_steps_per_s_images"] / out["bare_bound_steps_per_s"]
    out["substeps_per_env_step"] = n_sub
    return out


def measure_experts(episodes: int, split: str) -> dict:
    res = {}
    for task in sim.TASK_FAMILIES:
        env = sim.TabletopEnv(task=task, split=split)
        expert = sim.make_expert(env)
        t = time.perf_counter()
        rs = [sim.rollout(env, expert, seed=s) for s in range(episodes)]
        res[task] = {
            "success_rate": float(np.mean([r.success for r in rs])),
            "episodes": episodes,
            "mean_steps": float(np.mean([r.steps for r in rs])),
            "failed_seeds": [s for s, r in enumerate(rs) if not r.success][:20],
            "wall_s": time.perf_counter() - t,
        }
        env.close()
    return res


@dataclass
class SimBenchConfig:
    json: bool = False
    """print one JSON object"""
    episodes: int = 200
    """expert episodes per family"""
    steps: int = 300
    """env steps per throughput figure"""
    image_size: int = 128
    """camera frame size, px"""
    split: Literal["train", "heldout"] = "train"
    """which scenes and instructions"""


def main(argv: list[str] | None = None) -> int:
    args = parse(SimBenchConfig, argv, "mot bench sim", __doc__.split("\n\n")[0])

    result = {
        "mujoco": mujoco.__version__,
        "mujoco_gl": os.environ.get("MUJOCO_GL"),
        "image_size": args.image_size,
        "control_hz": sim.CONTROL_HZ,
        **measure_throughput(args.steps, args.image_size),
    }
    if args.episodes > 0:
        result["expert_success"] = measure_experts(args.episodes, args.split)
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        for k, v in result.items():
            print(f"{k}: {v}")
    return 0


if __name__ == "__main__":  # as a script too: a mistake is one line and exit 2, as under `mot bench`
    sys.exit(run_command("bench sim", main, sys.argv[1:]))
