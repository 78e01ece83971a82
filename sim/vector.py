"""Vectorised envs.

`gymnasium.vector.AsyncVectorEnv` with its default shared memory reads `Text` observations only once
(gymnasium issue #1164: the shared-memory view of non-Box spaces is built once at construction), so
`obs["instruction"]` would be stale there; images and state are fine and `info["instruction"]` is
always right.  `make_vec_env` therefore pickles observations instead (`shared_memory=False`), which
costs little at 128 px.

Workers start with the "spawn" method by default: a worker forked from a process that already holds an
EGL/OSMesa context (any env that has rendered) can deadlock on its first render.
"""

from __future__ import annotations

import functools

import gymnasium as gym


def _make(env_id: str, kwargs: dict) -> gym.Env:
    return gym.make(env_id, **kwargs)


def _factory(env_id: str, kwargs: dict):
    """A picklable env factory. It refers to this module's `_make` by name, so a spawned worker imports
    sim.vector, and with it the `sim` package, which registers the env ids before gym.make runs."""
    return functools.partial(_make, env_id, kwargs)


def make_vec_env(
    num_envs: int,
    env_id: str = "mot/Tabletop-v0",
    asynchronous: bool = True,
    context: str | None = "spawn",
    **env_kwargs,
):
    """`num_envs` copies of `env_id` (kwargs as for `gym.make`) in an Async- or SyncVectorEnv."""
    if int(num_envs) < 1:
        raise ValueError(f"num_envs: expected >= 1, got {num_envs!r}")
    fns = [_factory(env_id, dict(env_kwargs)) for _ in range(int(num_envs))]
    if asynchronous:
        return gym.vector.AsyncVectorEnv(fns, shared_memory=False, context=context)
    return gym.vector.SyncVectorEnv(fns)
