"""The only route from the policy node's controller to the command topic: the safety guard, then publish.

``GuardedCommandPublisher`` runs ``SafetyGuard`` on every chunk and hold before handing the resulting
``Command`` to the real publisher (or, in dry-run, only logging it). The node gives the trajectory
publisher to nothing else, so the guard cannot be bypassed.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

from ros_nodes.safety import SafetyGuard, SafetyLimits


@dataclass
class Command:
    """A safe command on its way to the publisher: ``points[k]`` is due at ``start_time + k * dt``."""

    kind: str  # "chunk" | "hold"
    start_time: float
    points: np.ndarray  # (T, D), already through SafetyGuard


class GuardedCommandPublisher:
    """The only route to the command topic: guard first, then publish (or, in dry-run, only log)."""

    def __init__(self, guard: SafetyGuard, publish: Callable[[Command], None], log: Callable[[str], None],
                 dry_run: bool = False) -> None:
        self._guard, self._publish, self._log, self.dry_run = guard, publish, log, dry_run

    def send_chunk(self, points: np.ndarray, start_time: float, current: np.ndarray) -> np.ndarray:
        """Guard ``points`` (rate-limited from ``current``) and publish; returns the safe points.

        Raises ``UnsafeCommand`` (nothing published) for a non-finite or misshapen chunk.
        """
        safe = self._guard.apply(points, current)
        self._emit(Command("chunk", start_time, safe))
        return safe

    @property
    def limits(self) -> SafetyLimits:
        return self._guard.limits

    def validate(self, points: np.ndarray) -> np.ndarray:
        """Shape and finiteness check only (raises ``UnsafeCommand``); nothing is published."""
        return self._guard.check_shape(points)

    def send_hold(self, position: np.ndarray, time: float) -> np.ndarray:
        safe = self._guard.hold(position)
        self._emit(Command("hold", time, safe))
        return safe

    def _emit(self, command: Command) -> None:
        if self.dry_run:
            self._log(f"dry_run: would publish {command.kind} of {len(command.points)} point(s), first "
                      f"{np.round(command.points[0], 4).tolist()}")
            return
        self._publish(command)
