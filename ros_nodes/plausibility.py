"""Is an input believable? Pure checks that run before a message reaches the controller's state.

No rclpy: times are plain seconds (header stamps and the node clock, both converted by the caller),
so every rule here is unit-tested with numbers. Two independent checks:

- ``FreshnessGate``: per input (a camera, the joint state), the header stamp against the node clock.
  A message stamped more than ``max_age`` away from now (an old frame replayed, a lagging driver, a
  skewed clock), stamped at or before the last accepted one (out of order, or the same message again),
  unstamped where stamps are required, or whose content has not changed for longer than
  ``max_frozen_s`` (a camera driver re-publishing its last buffer with fresh stamps) is *rejected*.
  A rejected message does not feed the watchdog, so an input that only sends such messages goes
  stale and the node holds, exactly as if it had stopped.
- ``JointPlausibility``: a joint state outside the position limits by more than a margin, or one
  that moved further from the last accepted state than the arm can move in the time between their
  stamps, is a sensor or driver fault, not a position to plan from: it is rejected and the node holds.
  The first state after a reset must be confirmed by a second one that agrees with it, so a single
  glitch can never become the reference that every true state is then measured against.
"""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass, field

import numpy as np


@dataclass(frozen=True)
class Rejection:
    """Why an input was refused: ``kind`` is a short metric key, ``message`` names the values."""

    kind: str  # "unstamped" | "stamp_age" | "out_of_order" | "frozen" | "out_of_range" | "jump"
    message: str


def _positive_or_inf(name: str, value: float) -> float:
    value = float(value)
    if not (value > 0 or math.isinf(value)) or math.isnan(value):
        raise ValueError(f"{name}: expected a positive number of seconds (or inf), received {value}")
    return value


@dataclass
class FreshnessGate:
    """Header-stamp and frozen-content checks per input key; see the module docstring.

    max_age: largest |now - stamp| accepted (s). max_frozen_s: identical content for longer than this
    is frozen (0 turns the content check off: a simulator renders a still scene identically, a real
    camera's sensor noise never does). require_stamps: an unstamped message (stamp 0 or None) is
    rejected; when False it is accepted and only the content check applies to it.
    """

    max_age: float = 0.5
    max_frozen_s: float = 0.0
    require_stamps: bool = True
    _last_stamp: dict[str, float] = field(default_factory=dict)
    _content: dict[str, tuple[bytes, float]] = field(default_factory=dict)  # key -> (digest, unchanged since)

    def __post_init__(self) -> None:
        self.max_age = _positive_or_inf("max_input_age", self.max_age)
        if not (self.max_frozen_s >= 0) or math.isnan(self.max_frozen_s):
            raise ValueError(f"max_frozen_s: expected >= 0 seconds (0: off), received {self.max_frozen_s}")

    def check(self, key: str, stamp: float | None, now: float, digest: bytes | None = None) -> Rejection | None:
        """None: accept (and remember the stamp); a Rejection: drop the message."""
        stamped = stamp is not None and stamp > 0
        if stamped and not math.isfinite(stamp):
            return Rejection("stamp_age", f"{key}: header.stamp is not finite ({stamp})")
        if not stamped and self.require_stamps:
            return Rejection("unstamped", f"{key}: expected a header.stamp, received none (0)")
        if stamped:
            age = now - stamp
            if abs(age) > self.max_age:
                when = "old" if age > 0 else "in the future"
                return Rejection("stamp_age", f"{key}: stamped {abs(age):.3f} s {when}, expected within "
                                              f"max_input_age {self.max_age} s of the node clock")
            last = self._last_stamp.get(key)
            if last is not None and stamp <= last:
                return Rejection("out_of_order", f"{key}: stamp {stamp:.6f} is not after the last accepted "
                                                 f"{last:.6f} (out of order or repeated)")
        if digest is not None and self.max_frozen_s > 0:
            previous = self._content.get(key)
            if previous is None or previous[0] != digest:
                self._content[key] = (digest, now)
            elif now - previous[1] > self.max_frozen_s:
                return Rejection("frozen", f"{key}: identical content for {now - previous[1]:.2f} s "
                                           f"(> max_frozen_s {self.max_frozen_s}); the source looks frozen")
        if stamped:
            self._last_stamp[key] = stamp
        return None

    def forget(self, key: str | None = None) -> None:
        """Drop what is remembered (one key, or all): the next message is judged on its own."""
        for store in (self._last_stamp, self._content):
            if key is None:
                store.clear()
            else:
                store.pop(key, None)


class Verdict(enum.Enum):
    ACCEPT = "accept"
    WAIT = "wait"  # believable but unconfirmed (first state after a reset): neither used nor a fault
    REJECT = "reject"


def _per_joint(name: str, value, dim: int) -> np.ndarray:
    array = np.asarray(value, dtype=np.float64).reshape(-1)
    if array.size == 1:
        array = np.full(dim, array[0])
    if array.size != dim:
        raise ValueError(f"{name}: expected 1 or {dim} values (one per joint), received {array.size}")
    if not np.all(np.isfinite(array)) or np.any(array < 0):
        raise ValueError(f"{name}: expected finite values >= 0, received {array.tolist()}")
    return array


class JointPlausibility:
    """Range and speed checks on measured joint positions; see the module docstring.

    lower/upper: the position limits (D,); margin: how far outside them a reading may be (encoders
    overshoot a little at a hard stop); max_speed: the fastest the arm can really move (units/s);
    tolerance: slack added to ``max_speed * dt`` (encoder noise, stamp jitter).
    """

    def __init__(self, lower, upper, margin, max_speed, tolerance, names: tuple[str, ...] = ()) -> None:
        self.lower = np.asarray(lower, dtype=np.float64).reshape(-1)
        self.upper = np.asarray(upper, dtype=np.float64).reshape(-1)
        dim = self.lower.size
        self.margin = _per_joint("joint_limit_margin", margin, dim)
        self.max_speed = _per_joint("joint_speed_limit", max_speed, dim)
        self.tolerance = _per_joint("joint_jump_tolerance", tolerance, dim)
        if np.any(self.max_speed <= 0):
            raise ValueError(f"joint_speed_limit: expected > 0 per joint, received {self.max_speed.tolist()}")
        self.names = tuple(names) or tuple(f"joint {i}" for i in range(dim))
        self._reference: tuple[np.ndarray, float] | None = None  # the last accepted state and its time
        self._candidate: tuple[np.ndarray, float] | None = None  # an unconfirmed first state

    def reset(self) -> None:
        """Forget the reference (a sim that resets its scene moves the arm instantly)."""
        self._reference = self._candidate = None

    def _jump(self, q: np.ndarray, t: float, reference: tuple[np.ndarray, float]) -> int | None:
        q_ref, t_ref = reference
        bound = self.max_speed * max(t - t_ref, 0.0) + self.tolerance
        over = np.flatnonzero(np.abs(q - q_ref) > bound)
        return int(over[0]) if over.size else None

    def check(self, q: np.ndarray, t: float) -> tuple[Verdict, Rejection | None]:
        """A measured state (D,) at time ``t`` (its stamp) -> (verdict, why when rejected)."""
        q = np.asarray(q, dtype=np.float64).reshape(-1)
        if q.size != self.lower.size or not np.all(np.isfinite(q)):
            return Verdict.REJECT, Rejection("out_of_range", f"joint_state: expected {self.lower.size} finite "
                                                             f"values, received {q.tolist()}")
        outside = np.flatnonzero((q < self.lower - self.margin) | (q > self.upper + self.margin))
        if outside.size:
            j = int(outside[0])
            return Verdict.REJECT, Rejection(
                "out_of_range", f"joint_state.position[{self.names[j]}] = {q[j]:.6g}: outside the limits "
                                f"[{self.lower[j]:.4g}, {self.upper[j]:.4g}] by more than the margin {self.margin[j]:.4g}")
        if self._reference is not None:
            j = self._jump(q, t, self._reference)
            if j is not None:
                q_ref, t_ref = self._reference
                return Verdict.REJECT, Rejection(
                    "jump", f"joint_state.position[{self.names[j]}] jumped {q_ref[j]:.4g} -> {q[j]:.4g} in "
                            f"{max(t - t_ref, 0.0):.3f} s; the arm cannot move faster than {self.max_speed[j]:.4g}/s")
            self._reference = (q.copy(), t)
            return Verdict.ACCEPT, None
        # No reference yet: the first believable state must be confirmed by the next one.
        if self._candidate is not None and self._jump(q, t, self._candidate) is None:
            self._reference, self._candidate = (q.copy(), t), None
            return Verdict.ACCEPT, None
        self._candidate = (q.copy(), t)
        return Verdict.WAIT, None
