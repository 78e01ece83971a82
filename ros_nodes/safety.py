"""The safety layer: every joint command the stack publishes is produced by ``SafetyGuard``.

Pure numpy, no rclpy. Three independent pieces, each with its own tests:

- ``SafetyGuard``: clamps a planned chunk of joint positions to position limits, a maximum change per
  control step and a maximum velocity, and refuses any chunk with a NaN/inf (it never "repairs" a
  non-finite value: a model emitting one is broken, so we hold instead).
- ``Watchdog``: tracks when each required input last arrived; any one older than its limit means
  "stale" and the node must hold and stop planning.
- ``EStopLatch``: once tripped it stays tripped until ``reset()``; nothing else clears it, not even
  a restart when it is given a file to persist to.

The node wraps its trajectory publisher in ``ros_nodes.guarded_publisher.GuardedCommandPublisher``, which
only accepts chunks and holds that went through ``SafetyGuard``, so the guard cannot be bypassed.
"""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from policy.artifacts import atomic_write_json


@dataclass
class SafetyLimits:
    """Per-joint limits in robot units. ``max_step`` is per control step, ``max_velocity`` per second."""

    lower: np.ndarray  # (D,)
    upper: np.ndarray  # (D,)
    max_step: np.ndarray  # (D,) largest |q[k+1] - q[k]| between consecutive points
    max_velocity: np.ndarray  # (D,) largest |dq/dt|; with dt gives a second bound on the step
    dt: float  # control period (s)

    def __post_init__(self) -> None:
        self.lower = np.asarray(self.lower, dtype=np.float64).reshape(-1)
        self.upper = np.asarray(self.upper, dtype=np.float64).reshape(-1)
        dim = self.lower.size
        # A scalar step/velocity limit applies to every joint.
        self.max_step = np.broadcast_to(np.asarray(self.max_step, dtype=np.float64), (dim,)).copy()
        self.max_velocity = np.broadcast_to(np.asarray(self.max_velocity, dtype=np.float64), (dim,)).copy()
        if dim == 0:
            raise ValueError("lower: expected at least one joint, received none")
        if self.upper.size != dim:
            raise ValueError(f"upper: expected {dim} values (one per joint), received {self.upper.size}")
        for name in ("lower", "upper", "max_step", "max_velocity"):
            if not np.all(np.isfinite(getattr(self, name))):
                raise ValueError(f"{name}: expected finite values, received {getattr(self, name).tolist()}")
        if np.any(self.lower >= self.upper):
            raise ValueError(f"lower/upper: expected lower < upper per joint, received {self.lower.tolist()} / "
                             f"{self.upper.tolist()}")
        if np.any(self.max_step <= 0) or np.any(self.max_velocity <= 0):
            raise ValueError("max_step/max_velocity: expected > 0 per joint, received "
                             f"{self.max_step.tolist()} / {self.max_velocity.tolist()}")
        if not (np.isfinite(self.dt) and self.dt > 0):
            raise ValueError(f"dt: expected a positive control period, received {self.dt}")

    @property
    def dim(self) -> int:
        return self.lower.size

    @property
    def step_bound(self) -> np.ndarray:
        """(D,) the binding per-step bound: the tighter of max_step and max_velocity * dt."""
        return np.minimum(self.max_step, self.max_velocity * self.dt)


class UnsafeCommand(ValueError):
    """A chunk the guard refuses outright (non-finite values, wrong shape); the caller must hold."""


class SafetyGuard:
    """Turns a planned chunk into one that respects ``SafetyLimits``; see module docstring."""

    def __init__(self, limits: SafetyLimits) -> None:
        self.limits = limits

    def check_shape(self, points: np.ndarray) -> np.ndarray:
        try:
            points = np.asarray(points, dtype=np.float64)
        except (TypeError, ValueError) as exc:  # not numbers at all (a broken backend's output)
            raise UnsafeCommand(f"chunk: expected a numeric (T, {self.limits.dim}) array, received "
                                f"{type(points).__name__} ({exc})") from exc
        if points.ndim == 1:
            points = points[None]
        if points.ndim != 2 or points.shape[1] != self.limits.dim or points.shape[0] == 0:
            raise UnsafeCommand(f"chunk: expected (T>=1, {self.limits.dim}), received {points.shape}")
        if not np.all(np.isfinite(points)):
            raise UnsafeCommand("chunk: expected finite values, received NaN/inf")
        return points

    def hold(self, position: np.ndarray) -> np.ndarray:
        """A single-point hold (1, D) at ``position`` clamped into the limits."""
        position = self.check_shape(position)[0]
        return np.clip(position, self.limits.lower, self.limits.upper)[None]

    def apply(self, points: np.ndarray, start: np.ndarray) -> np.ndarray:
        """Chunk (T, D) -> safe chunk (T, D), rate-limited from ``start`` (the commanded position now).

        Order matters: each step is first limited relative to the previous *safe* point, then clamped
        to the position limits. Clamping last guarantees no published position is ever outside the
        limits; limiting relative to the previous safe point (not the raw plan) guarantees no step
        between published points exceeds the bound. Both hold for any input, which is what the
        property tests check. ``start`` itself is clamped first, so a robot reported slightly outside
        its limits is commanded back inside them (the one step that may exceed the bound, and only by
        the distance it was outside).
        """
        points = self.check_shape(points)
        start = self.check_shape(start)[0]
        lower, upper, bound = self.limits.lower, self.limits.upper, self.limits.step_bound
        previous = np.clip(start, lower, upper)
        safe = np.empty_like(points)
        for k, target in enumerate(points):
            previous = np.clip(previous + np.clip(target - previous, -bound, bound), lower, upper)
            safe[k] = previous
        return safe


@dataclass
class Watchdog:
    """Input freshness. ``limits`` maps an input name to its maximum age in seconds.

    Times come from the caller (the node's clock) so tests drive it with plain numbers.
    """

    limits: dict[str, float]
    _last: dict[str, float] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def __post_init__(self) -> None:
        for name, limit in self.limits.items():
            if not (np.isfinite(limit) and limit > 0):
                raise ValueError(f"watchdog limit for {name!r}: expected a positive number of seconds, received {limit}")

    def feed(self, name: str, now: float) -> None:
        with self._lock:
            self._last[name] = now

    def stale(self, now: float) -> list[str]:
        """Names of required inputs never seen or older than their limit (empty list: all fresh)."""
        with self._lock:
            return [name for name, limit in self.limits.items()
                    if name not in self._last or now - self._last[name] > limit]

    def age(self, name: str, now: float) -> float:
        with self._lock:
            return now - self._last[name] if name in self._last else float("inf")


class EStopLatch:
    """Thread-safe latch: ``trip()`` from any thread; only ``reset()`` (the service) clears it.

    With a ``path`` the latch survives a restart: every trip and reset is written there atomically
    (temp file + rename, ``policy.artifacts.atomic_write_json``) before the call returns, and a new
    latch reads it back. It fails closed: a latch file that exists but cannot be read or parsed
    counts as tripped. If writing fails (read-only disk) the latch still holds in memory and
    ``persist_error`` says why, so the node can report it.
    """

    def __init__(self, path: str | Path | None = None) -> None:
        self._tripped = False
        self._reason = ""
        self._lock = threading.Lock()
        self.path = Path(path).expanduser() if path else None
        self.persist_error = ""
        if self.path is not None and self.path.exists():
            try:
                record = json.loads(self.path.read_text())
                if not isinstance(record, dict) or not isinstance(record.get("latched"), bool):
                    raise ValueError(f"expected an object with a boolean 'latched', received {record!r:.80}")
                self._tripped = record["latched"]
                self._reason = str(record.get("reason", "")) if self._tripped else ""
            except (OSError, ValueError) as exc:  # unreadable, not JSON (JSONDecodeError is a ValueError)
                self._tripped, self._reason = True, f"latch file {self.path} unreadable ({exc}): latched to be safe"

    def _persist(self) -> None:
        if self.path is None:
            return
        try:
            atomic_write_json(self.path, {"latched": self._tripped, "reason": self._reason, "time": time.time()})
            self.persist_error = ""
        except OSError as exc:
            self.persist_error = f"cannot write {self.path}: {exc}"

    def trip(self, reason: str) -> bool:
        """Returns True if this call tripped it (it was clear before)."""
        with self._lock:
            newly = not self._tripped
            if newly:
                self._tripped, self._reason = True, reason
                self._persist()
            return newly

    def reset(self) -> bool:
        """Returns True if it was tripped."""
        with self._lock:
            was, self._tripped, self._reason = self._tripped, False, ""
            if was:
                self._persist()
            return was

    @property
    def tripped(self) -> bool:
        with self._lock:
            return self._tripped

    @property
    def reason(self) -> str:
        with self._lock:
            return self._reason
