"""Action chunks on the control-tick grid, and blending a new chunk into the one being executed.

Time is counted in integer control ticks (tick n happens at ``t0 + n * dt``): both the plan being
executed and a freshly inferred chunk are indexed by tick, so "which old point meets which new point"
is an integer subtraction, never a float comparison. Pure numpy.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Plan:
    """Joint targets ``points[k]`` (T, D) due at tick ``start_tick + k``; after the last, it holds."""

    start_tick: int
    points: np.ndarray

    def __post_init__(self) -> None:
        if self.points.ndim != 2 or len(self.points) == 0:
            raise ValueError(f"points: expected (T>=1, D), received {self.points.shape}")

    @property
    def end_tick(self) -> int:
        """The first tick with no point of its own (the plan holds its last point from here)."""
        return self.start_tick + len(self.points)

    def remaining(self, tick: int) -> int:
        """Points still due at or after ``tick`` (0: the follower is holding the last point)."""
        return max(0, self.end_tick - max(tick, self.start_tick))

    def at(self, tick: int) -> np.ndarray:
        """Target at ``tick``: clamped to the first point before the plan starts, the last after it ends."""
        return self.points[min(max(tick - self.start_tick, 0), len(self.points) - 1)]

    def from_tick(self, tick: int) -> np.ndarray:
        """Points due at ``tick`` and later (T', D); the held last point if the plan has run out."""
        offset = tick - self.start_tick
        if offset >= len(self.points):
            return self.points[-1:]
        return self.points[max(offset, 0):]


def align_chunk(chunk: np.ndarray, observation_tick: int, publish_tick: int) -> Plan | None:
    """A chunk inferred from an observation at ``observation_tick`` -> the part still in the future.

    Point 0 of a chunk is the action for the observation instant (the openpi / LeRobot convention),
    so by the time inference finishes the first ``publish_tick - observation_tick`` points are
    already in the past and are dropped. Returns None if the whole chunk is in the past (inference
    took longer than the horizon): the caller keeps its old plan and counts a late chunk.
    """
    late = publish_tick - observation_tick
    if late >= len(chunk):
        return None
    return Plan(publish_tick, np.asarray(chunk[max(late, 0):], dtype=np.float64))


def blend(old: Plan | None, new: Plan, blend_steps: int) -> Plan:
    """Cross-fade ``new`` into ``old`` over the first ``blend_steps`` ticks of ``new``.

    Point j of the result (tick ``new.start_tick + j``) is ``(1 - w_j) * old + w_j * new`` with
    ``w_j = (j + 1) / (blend_steps + 1)``: the weight ramps linearly, reaching 1 one tick after the
    window, so the first published point already moves toward the new plan but never jumps to it.
    Where the old plan has run out, its held last point stands in (the robot is sitting there).
    With no old plan (first chunk, or after a hold) the new chunk is returned unchanged: the safety
    guard's rate limit is what keeps that first transition smooth.
    """
    if old is None or blend_steps <= 0:
        return new
    points = new.points.copy()
    for j in range(min(blend_steps, len(points))):
        w = (j + 1) / (blend_steps + 1)
        points[j] = (1.0 - w) * old.at(new.start_tick + j) + w * new.points[j]
    return Plan(new.start_tick, points)
