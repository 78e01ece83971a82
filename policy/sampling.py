"""The Euler sampler of flow matching, shared by MoTPolicy (torch tensors) and PolicyRunner (numpy arrays).

No torch here: the onnxruntime and TensorRT runtimes integrate the flow with it on numpy arrays.
"""

from __future__ import annotations

from typing import Callable, TypeVar

from policy.errors import InputError

X = TypeVar("X")


def euler_sample(denoise: Callable[[X, float], X], noise: X, num_steps: int) -> X:
    """Integrates dx/dt = v(x, t) from t = 1 (noise) to t = 0 (actions) in `num_steps` Euler steps.

    denoise(x, t) -> v: x and v are (B, horizon, A) torch tensors or numpy arrays alike; t is a float.
    """
    if num_steps < 1:
        raise InputError(f"num_steps: expected >= 1, received {num_steps}")
    dt = -1.0 / num_steps
    x = noise
    for i in range(num_steps):
        x = x + dt * denoise(x, 1.0 + i * dt)
    return x


__all__ = ["euler_sample"]
