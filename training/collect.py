"""`mot collect`: scripted-expert demonstrations to disk (resumable, atomic, parallel).

    mot collect --tasks all --episodes 400 --out data/demos --workers 2

Episode i uses seed `--seed + i` and task family `tasks[i % len(tasks)]`, so the same command always
describes the same set of episodes; re-running it resumes (finished and dropped seeds are skipped).
Failed expert episodes are dropped and counted, never stored.

`--action-noise SIGMA` (DART, Laskey et al. 2017): the env executes the expert's command plus Gaussian
noise of std SIGMA on every dimension but the last (the gripper, by the action contract), while the
stored action stays the expert's clean command. The demonstrations then visit states a little off the
expert's path, labelled with how the expert gets back: exactly where a cloned policy's own errors take it.
The noise of episode i is seeded by its seed, so a dataset stays reproducible.

Any gymnasium env that follows the observation contract of DESIGN.md can be collected from:
`--env module:factory` (factory(task=, split=, image_size=) -> env) and `--expert module:callable`
(callable(env) -> fn(obs, info) -> action). The dataset records the env's control rate as `fps` (its
`metadata["render_fps"]`, else `1 / env.dt`) and per-frame timestamps (step / fps); the names of the
state and action dimensions come from the env's `joint_names` attribute (the sim's `JOINT_NAMES`).

Workers die with their parent: each sets PR_SET_PDEATHSIG (SIGKILL) on Linux and watches its parent's
pid elsewhere, so a `kill -9` of `mot collect` leaves no worker writing episodes. What they had written
but the manifest does not list is not part of the dataset (the manifest is the single truth) and is
written again on resume.
"""

from __future__ import annotations

import ctypes
import importlib
import os
import signal
import sys
import threading
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from multiprocessing import get_context
from pathlib import Path
from typing import Literal

import gymnasium as gym
import numpy as np
from tqdm import tqdm

import sim  # registers the tabletop envs (in spawned workers too: they import this module)
from policy.errors import InputError
from policy.options import parse
from training.data import (
    GROUNDING_KEYS,
    Episode,
    SceneTrack,
    atomic_write_bytes,
    describe_episode,
    encode_frame,
    episode_entry,
    episode_filename,
    episode_to_bytes,
    load_manifest,
    new_manifest,
    save_manifest,
)

DEFAULT_ENV = "training.collect:tabletop_env"
DEFAULT_EXPERT = "sim:make_expert"
MAX_STEPS = 1000  # hard cap for envs without a time limit


def tabletop_env(task: str, split: str, image_size: int):
    return gym.make("mot/Tabletop-v0", task=task, split=split, image_size=image_size, render_mode="rgb_array")


def load_callable(spec: str):
    module, _, name = spec.partition(":")
    if not module or not name:
        raise ValueError(f"expected 'module:callable', received {spec!r}")
    return getattr(importlib.import_module(module), name)


def task_families(env_spec: str) -> list[str]:
    """`--tasks all`: the sim's families, or the factory's TASK_FAMILIES attribute for another env."""
    if env_spec == DEFAULT_ENV:
        return list(sim.TASK_FAMILIES)
    return list(getattr(load_callable(env_spec), "TASK_FAMILIES", ["default"]))


def env_fps(env) -> float | None:
    """The env's control rate: gymnasium's metadata["render_fps"], else 1 / env.dt; None when it has neither."""
    fps = (getattr(env, "metadata", None) or {}).get("render_fps")
    if not fps:
        dt = getattr(env.unwrapped, "dt", None)
        fps = 1.0 / dt if dt else None
    return float(fps) if fps else None


def env_joint_names(env_spec: str, env) -> list[str] | None:
    """Names of the state/action dimensions: the env's `joint_names`, the sim's JOINT_NAMES for the default env."""
    names = getattr(env.unwrapped, "joint_names", None)
    if names is None and env_spec == DEFAULT_ENV:
        names = sim.JOINT_NAMES
    return [str(n) for n in names] if names is not None else None


_ENVS: dict = {}  # per worker process: (env_spec, task, split, image_size) -> env, reused across episodes


def run_episode(env_spec: str, expert_spec: str, task: str, split: str, image_size: int, seed: int,
                action_noise: float = 0.0) -> Episode | None:
    """One expert episode; None when the expert failed (dropped). `action_noise`: see the module docstring."""
    key = (env_spec, task, split, image_size)
    if key not in _ENVS:
        _ENVS[key] = load_callable(env_spec)(task=task, split=split, image_size=image_size)
    env = _ENVS[key]
    obs, info = env.reset(seed=seed)
    expert = load_callable(expert_spec)(env)
    grounding = {k: np.asarray(info[k], np.float32) if info.get(k) is not None else np.full(3, np.nan, np.float32)
                 for k in GROUNDING_KEYS}
    states, actions, frames, infos = [], [], {cam: [] for cam in obs["images"]}, []
    success = bool(info.get("success", False))
    noise_rng = np.random.default_rng([seed, 0xDA27])  # its own stream: the scene's rng stays untouched
    for _ in range(MAX_STEPS):
        action = np.asarray(expert(obs, info), np.float32)
        infos.append(info)  # describes the scene in this frame (reset's info, then each step's)
        states.append(np.asarray(obs["state"], np.float32))
        actions.append(action)
        for cam, img in obs["images"].items():
            frames[cam].append(encode_frame(img))
        obs, _, terminated, truncated, info = env.step(perturb(action, action_noise, noise_rng, env.action_space))
        success = success or bool(info.get("success", False))
        if terminated or truncated:
            break
    if not success:
        return None
    fps = env_fps(env)
    timestamps = np.arange(len(states), dtype=np.float64) / fps if fps else None
    return Episode(np.stack(states), np.stack(actions), frames, str(info.get("instruction", obs.get("instruction"))),
                   str(info.get("task", task)), seed, grounding, SceneTrack.from_infos(infos), timestamps)


def perturb(action: np.ndarray, sigma: float, rng: np.random.Generator, space) -> np.ndarray:
    """The executed command: `action` plus N(0, sigma^2) on all but the last (gripper) dimension, kept in `space`."""
    if sigma <= 0:
        return action
    noisy = action.copy()
    noisy[:-1] += rng.normal(0.0, sigma, action.shape[0] - 1).astype(action.dtype)
    return np.clip(noisy, space.low, space.high).astype(action.dtype)


# -- workers die with their parent -------------------------------------------------------------------
PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


def _exit_when_orphaned(parent: int, period_s: float = 0.5) -> None:
    """Fallback where PR_SET_PDEATHSIG does not exist: leave as soon as the parent is gone (re-parented)."""
    while True:
        if os.getppid() != parent:
            os._exit(1)
        time.sleep(period_s)


def _worker_init(parent: int) -> None:
    """Pool initializer: this worker is killed when its parent dies, however it dies (kill -9 included).

    PR_SET_PDEATHSIG asks the kernel for SIGKILL when the parent exits; set only now, it misses a parent
    that died during our start-up, hence the pid check right after it. Elsewhere (no prctl) a daemon thread
    polls the parent pid."""
    armed = False
    if sys.platform.startswith("linux"):
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            armed = libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) == 0
        except (OSError, AttributeError):
            armed = False
    if os.getppid() != parent:
        os._exit(1)
    if not armed:
        threading.Thread(target=_exit_when_orphaned, args=(parent,), name="orphan-watch", daemon=True).start()


def _collect_one(args: tuple) -> tuple[int, dict | None, dict]:
    """Worker: run + write one episode atomically; returns (seed, manifest entry or None if dropped, the
    dataset facts this episode shows: cameras, image shapes, state/action sizes and names, fps)."""
    env_spec, expert_spec, task, split, image_size, seed, out_dir, action_noise = args
    ep = run_episode(env_spec, expert_spec, task, split, image_size, seed, action_noise)
    if ep is None:
        return seed, None, {}
    data = episode_to_bytes(ep)
    name = episode_filename(seed)
    atomic_write_bytes(Path(out_dir) / name, data)
    env = _ENVS[(env_spec, task, split, image_size)]
    facts: dict = {"fps": env_fps(env)}
    names = env_joint_names(env_spec, env)
    describe_episode(facts, ep, names if names and len(names) == ep.states.shape[1] else None,
                     names if names and len(names) == ep.actions.shape[1] else None)
    return seed, episode_entry(ep, name, data), facts


def collect(out: Path, episodes: int, tasks: list[str], split: str = "train", workers: int = 1, seed: int = 0,
            image_size: int = 128, env_spec: str = DEFAULT_ENV, expert_spec: str = DEFAULT_EXPERT,
            progress: bool = True, action_noise: float = 0.0) -> dict:
    """Collects (or resumes) the dataset in `out`; returns the manifest."""
    if not (np.isfinite(action_noise) and action_noise >= 0):
        raise InputError(f"action_noise: expected a finite std >= 0, received {action_noise!r}")
    out.mkdir(parents=True, exist_ok=True)
    if (out / "manifest.json").exists():
        manifest = load_manifest(out)
        manifest.setdefault("action_noise", 0.0)  # datasets from before the option are noise-free
        for field, value in (("env", env_spec), ("expert", expert_spec), ("image_size", image_size), ("split", split),
                             ("action_noise", action_noise)):
            if manifest[field] != value:
                raise InputError(f"collect: {out} holds a dataset with {field}={manifest[field]!r}, "
                                 f"this command asks for {value!r}; use another --out")
    else:
        manifest = new_manifest(env_spec, expert_spec, [], image_size, split)
        manifest["action_noise"] = action_noise
    done = set(manifest["episodes"]) | set(manifest["dropped"])
    todo = [(env_spec, expert_spec, tasks[i % len(tasks)], split, image_size, seed + i, str(out), action_noise)
            for i in range(episodes) if str(seed + i) not in done]
    bar = tqdm(total=episodes, initial=episodes - len(todo), desc="collect", unit="ep", disable=not progress)

    def record(seed_: int, entry: dict | None, facts: dict, task: str) -> None:
        if entry is None:
            manifest["dropped"][str(seed_)] = task
        else:
            if manifest.get("fps") is None:  # the env decides its rate, cameras and sizes: the first episode tells
                manifest["fps"] = facts.get("fps")
            elif facts.get("fps") is not None and facts["fps"] != manifest["fps"]:
                raise InputError(f"collect: {out} holds a dataset with fps={manifest['fps']}, this env runs at "
                                 f"{facts['fps']}; use another --out")
            for key, value in facts.items():
                if key == "cameras" and not manifest.get("cameras"):
                    manifest["cameras"] = value
                manifest.setdefault(key, value)
            manifest["episodes"][str(seed_)] = entry
        save_manifest(out, manifest)  # after every episode: a kill loses at most the episodes in flight
        bar.update(1)
        bar.set_postfix(kept=len(manifest["episodes"]), dropped=len(manifest["dropped"]))

    if workers <= 1:
        for job in todo:
            record(*_collect_one(job), job[2])
    else:
        # spawn: each worker owns its MuJoCo/EGL context (fork would share one GL state). The initializer
        # ties each worker's life to this process (see _worker_init).
        with ProcessPoolExecutor(workers, mp_context=get_context("spawn"), initializer=_worker_init,
                                 initargs=(os.getpid(),)) as pool:
            for job, (seed_, entry, facts) in zip(todo, pool.map(_collect_one, todo)):
                record(seed_, entry, facts, job[2])
    bar.close()
    save_manifest(out, manifest)
    return manifest


@dataclass
class CollectConfig:
    """Scripted-expert demonstrations to disk (resumable, atomic, parallel)."""

    episodes: int
    """episodes to attempt (dropped ones included); episode i uses seed SEED + i"""
    out: Path
    """dataset directory (created; an existing one is resumed)"""
    tasks: str = "all"
    """comma-separated task families, or 'all'"""
    workers: int = 2
    """worker processes (spawned; each dies with this process)"""
    split: Literal["train", "heldout"] = "train"
    """which scenes and instructions the env draws"""
    seed: int = 0
    """episode i uses seed SEED + i"""
    image_size: int = 128
    """camera frame size, px (square), passed to the env factory"""
    env: str = DEFAULT_ENV
    """module:factory(task=, split=, image_size=) -> gymnasium env"""
    expert: str = DEFAULT_EXPERT
    """module:callable(env) -> fn(obs, info) -> action"""
    action_noise: float = 0.0
    """DART: std of Gaussian noise added to the executed joint targets (not to the stored actions; the last,
    gripper, dimension is never perturbed)"""

    def __post_init__(self):
        for name in ("episodes", "workers", "image_size"):
            if getattr(self, name) < 1:
                raise InputError(f"{name}: expected an int >= 1, received {getattr(self, name)}")
        if not (np.isfinite(self.action_noise) and self.action_noise >= 0):
            raise InputError(f"action_noise: expected a finite std >= 0, received {self.action_noise!r}")


def main(argv: list[str] | None = None) -> int:
    args = parse(CollectConfig, argv, "mot collect", "Scripted-expert demonstrations to disk (resumable, parallel).")
    tasks = task_families(args.env) if args.tasks == "all" else [t.strip() for t in args.tasks.split(",") if t.strip()]
    manifest = collect(args.out, args.episodes, tasks, args.split, args.workers, args.seed, args.image_size,
                       args.env, args.expert, action_noise=args.action_noise)
    print(f"collected {len(manifest['episodes'])} episodes ({len(manifest['dropped'])} dropped: expert failed) "
          f"in {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
