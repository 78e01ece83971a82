"""What the policy node's controller is configured with, and what it exchanges with a policy.

``ControllerConfig`` holds every rule's numbers (validated, times in seconds); ``Inference`` is what the
controller needs from a policy (``policy.runtime.PolicyRunner`` satisfies it); a ``Request`` is one
inference job, built from the latest inputs. No rclpy: the node fills these from its parameters.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Protocol

import numpy as np


class Inference(Protocol):
    """What the node needs from a policy: ``policy.runtime.PolicyRunner`` satisfies it."""

    def infer(self, images: dict[str, np.ndarray], state: np.ndarray, instruction: str) -> np.ndarray: ...


def clean_instruction(text: str, max_chars: int) -> str:
    """Strip and validate a typed or transcribed instruction; raises ValueError naming the problem."""
    if not isinstance(text, str):
        raise TypeError(f"instruction: expected str, received {type(text).__name__}")
    # Control characters (a stray NUL or escape from a terminal) are never part of a command.
    text = " ".join("".join(ch if ch.isprintable() else " " for ch in text).split())
    if not text:
        raise ValueError("instruction: expected non-empty text, received an empty/blank string")
    if len(text) > max_chars:
        raise ValueError(f"instruction: expected at most {max_chars} characters, received {len(text)}")
    return text


@dataclass
class ControllerConfig:
    joint_names: tuple[str, ...]
    cameras: tuple[str, ...]
    control_hz: float = 10.0
    replan_steps: int = 4  # request a new chunk when the executing plan has this many points left
    blend_steps: int = 2  # ticks over which a new chunk cross-fades into the old one
    stale_image_s: float = 0.5
    stale_joint_state_s: float = 0.5
    max_instruction_chars: int = 256
    # Input plausibility (ros_nodes.plausibility). The node's defaults are stricter (stamps required).
    max_input_age: float = 0.5  # largest |node clock - header.stamp| of an accepted image / joint state (s)
    max_frozen_s: float = 0.0  # identical camera frames for longer than this are frozen (0: off)
    require_stamps: bool = False  # reject unstamped images / joint states
    joint_limit_margin: float | tuple[float, ...] = 0.05  # a reading this far outside the limits is a fault
    joint_speed_limit: tuple[float, ...] = ()  # fastest real joint motion (units/s); (): 2 x max_velocity
    joint_jump_tolerance: float | tuple[float, ...] = 0.05  # slack on top of speed * dt
    instruction_debounce_s: float = 0.5  # an instruction stays at least this long before the next replaces it
    inference_timeout_s: float = 5.0  # one inference call longer than this is a fault

    def __post_init__(self) -> None:
        self.joint_names, self.cameras = tuple(self.joint_names), tuple(self.cameras)
        if not self.joint_names or len(set(self.joint_names)) != len(self.joint_names):
            raise ValueError(f"joint_names: expected unique non-empty names, received {list(self.joint_names)}")
        if not self.cameras or len(set(self.cameras)) != len(self.cameras):
            raise ValueError(f"cameras: expected unique non-empty names, received {list(self.cameras)}")
        if not (math.isfinite(self.control_hz) and self.control_hz > 0):
            raise ValueError(f"control_hz: expected > 0, received {self.control_hz}")
        if self.replan_steps < 1 or self.blend_steps < 0:
            raise ValueError(f"replan_steps/blend_steps: expected >= 1 / >= 0, received "
                             f"{self.replan_steps}/{self.blend_steps}")
        if self.max_instruction_chars < 1:
            raise ValueError(f"max_instruction_chars: expected >= 1, received {self.max_instruction_chars}")
        for name in ("instruction_debounce_s",):
            if not (math.isfinite(getattr(self, name)) and getattr(self, name) >= 0):
                raise ValueError(f"{name}: expected >= 0 seconds, received {getattr(self, name)}")
        if not (self.inference_timeout_s > 0):
            raise ValueError(f"inference_timeout_s: expected > 0 seconds, received {self.inference_timeout_s}")

    @property
    def dt(self) -> float:
        return 1.0 / self.control_hz


@dataclass
class Request:
    """One inference job, built under the lock from the latest inputs and run on the worker thread."""

    generation: int  # results from an older generation (instruction changed, hold, e-stop) are dropped
    observation_tick: int
    images: dict[str, np.ndarray]
    state: np.ndarray
    instruction: str
    image_time: float  # when the newest frame in ``images`` was received (latency is measured from it)
