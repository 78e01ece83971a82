"""What the policy node's controller knows about the world: the newest believable frame per camera and
joint state, and whether each is fresh enough to plan from.

Every message passes ``FreshnessGate`` (its header stamp against the node clock, frozen frames) and, for
joint states, ``JointPlausibility`` (range, speed) before it is stored or feeds the ``Watchdog``: a
refused message leaves the previous one in place and lets the input go stale. No lock of its own:
``PolicyController`` calls it under its lock. Times are seconds on the node clock.
"""

from __future__ import annotations

import hashlib
import math
from typing import Literal

import numpy as np

from ros_nodes.controller_config import ControllerConfig
from ros_nodes.plausibility import FreshnessGate, JointPlausibility, Rejection, Verdict
from ros_nodes.safety import SafetyLimits, Watchdog

JOINT_STATES = "joint_states"
# What became of a joint state: planned from / first after a reset, awaiting confirmation /
# badly stamped (dropped) / implausible (dropped, and joint states untrusted for a staleness period).
JointOutcome = Literal["accepted", "wait", "refused", "implausible"]


def camera_key(name: str) -> str:
    """A camera's input name (watchdog, gate, diagnostics): ``camera/<name>``."""
    return f"camera/{name}"


def _digest(image: np.ndarray) -> bytes:
    """A 16-byte fingerprint of a frame: frozen-camera detection compares these, not whole frames."""
    return hashlib.blake2b(np.ascontiguousarray(image).data, digest_size=16).digest()


class LatestInputs:
    def __init__(self, config: ControllerConfig, limits: SafetyLimits) -> None:
        self.cameras = config.cameras
        self.stale_joint_state_s = config.stale_joint_state_s
        self._fingerprint = config.max_frozen_s > 0  # hashing frames costs time: only when it is checked
        self.watchdog = Watchdog({**{camera_key(c): config.stale_image_s for c in config.cameras},
                                  JOINT_STATES: config.stale_joint_state_s})
        self.gate = FreshnessGate(max_age=config.max_input_age, max_frozen_s=config.max_frozen_s,
                                  require_stamps=config.require_stamps)
        speed = config.joint_speed_limit or 2.0 * limits.max_velocity
        self.joints = JointPlausibility(limits.lower, limits.upper, config.joint_limit_margin, speed,
                                        config.joint_jump_tolerance, config.joint_names)
        self.images: dict[str, tuple[np.ndarray, float]] = {}  # camera -> (frame, receive time)
        self.state: tuple[np.ndarray, float] | None = None  # (joint positions, receive time)
        self.delays: dict[str, float] = {}  # input -> receive time - header stamp of its last accepted message
        self.suspect_until = -math.inf  # joint states are not trusted before this (an implausible one came)

    def accept_image(self, camera: str, image: np.ndarray, now: float, stamp: float | None) -> Rejection | None:
        """Store a frame of a known camera, or say why it was refused (the previous frame stays)."""
        key = camera_key(camera)
        rejection = self.gate.check(key, stamp, now, _digest(image) if self._fingerprint else None)
        if rejection is not None:
            return rejection
        self.images[camera] = (image, now)
        self.delays[key] = now - stamp if stamp else 0.0
        self.watchdog.feed(key, now)
        return None

    def accept_joint_state(self, state: np.ndarray, now: float,
                           stamp: float | None) -> tuple[JointOutcome, Rejection | None]:
        """The stamp first, then plausibility; see ``JointOutcome``."""
        rejection = self.gate.check(JOINT_STATES, stamp, now)
        if rejection is not None:
            return "refused", rejection
        verdict, rejection = self.joints.check(state, stamp if stamp else now)
        if verdict is Verdict.REJECT:
            # Not a position to plan from, and maybe not where the arm is: joint states are not
            # trusted for one staleness period (the controller holds at the last believable one).
            self.suspect_until = now + self.stale_joint_state_s
            return "implausible", rejection
        if verdict is Verdict.WAIT:
            return "wait", None
        self.state = (state, now)
        self.delays[JOINT_STATES] = now - stamp if stamp else 0.0
        self.watchdog.feed(JOINT_STATES, now)
        return "accepted", None

    def restart_joint_checks(self) -> None:
        """A new scene may have moved the arm at once (a sim reset): the speed check starts afresh."""
        self.joints.reset()

    # -- what the controller asks ------------------------------------------------------------------
    def stale(self, now: float) -> list[str]:
        """Inputs that do not count as fresh now: watchdog-stale, or joint states under suspicion."""
        stale = self.watchdog.stale(now)
        if now < self.suspect_until and JOINT_STATES not in stale:
            stale.append(f"{JOINT_STATES} (implausible)")
        return stale

    def complete(self) -> bool:
        """A frame from every camera and a joint state have been accepted (not necessarily fresh)."""
        return self.state is not None and len(self.images) >= len(self.cameras)

    def oldest_time(self) -> float:
        """Receive time of the oldest of the latest frames and state (call only when ``complete()``)."""
        return min([t for _, t in self.images.values()] + [self.state[1]])

    def observation(self) -> tuple[dict[str, np.ndarray], np.ndarray, float]:
        """(frames by camera, joint state, receive time of the newest frame used)."""
        return ({c: self.images[c][0] for c in self.cameras}, self.state[0],
                max(self.images[c][1] for c in self.cameras))

    def fresh_state(self, now: float) -> np.ndarray | None:
        """The last believable joint state if it is not stale, else None."""
        if self.state is not None and self.watchdog.age(JOINT_STATES, now) <= self.stale_joint_state_s:
            return self.state[0]
        return None

    def ages(self, now: float) -> dict[str, float]:
        """Seconds since each required input's last accepted message (inf: never)."""
        return {name: self.watchdog.age(name, now) for name in self.watchdog.limits}
