"""Shared test setup: headless MuJoCo rendering and deterministic torch threads."""

import os

os.environ.setdefault("MUJOCO_GL", "egl")
os.environ.setdefault("PYOPENGL_PLATFORM", "egl")

import pytest  # noqa: E402


@pytest.fixture(autouse=True)
def _torch_seed():
    """Every test starts from the same torch RNG state (tests stay independent of order)."""
    try:
        import torch
    except ImportError:  # sim tests run without torch
        yield
        return
    torch.manual_seed(0)
    yield
