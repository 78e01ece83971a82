"""The policy as a robot runs it, in the simulator: re-plan every few actions (LeRobot's action queue).

`ChunkedPolicy` is the fn(obs, info) -> action that `mot eval` and `mot run` roll out: it samples a chunk,
executes its first `execute_steps` actions, then re-plans. A target_points policy points itself on every
plan (what a robot gets); `mot eval --sim-points` hands it the simulator's ground truth instead
(`SimTargetPoints`, what it trained on: an upper bound), optionally keeping some of its own points
(`point_slots`: which of its points costs success). Where it pointed, against the truth in the env's info,
goes into the episode's trace (training/episode_trace.py).
"""

from __future__ import annotations

import numpy as np

from policy.errors import InputError
from policy.runtime import PolicyRunner
from training.data import pixels_from_info, target_point_vector
from training.episode_trace import EpisodeTrace
from training.video import compose, mark_points


class SimTargetPoints:
    """Target points from the simulator's `info` (its ground truth): what a target_points policy trained on,
    and what `mot eval --sim-points` hands it instead of its own (an upper bound: perfect pointing)."""

    def __init__(self, cameras: list[str], rng_seed: int = 0):
        self.cameras = cameras
        self.rng = np.random.default_rng(rng_seed)  # the random pad point of a task without a pad

    def __call__(self, obs: dict, info: dict) -> np.ndarray:
        if not has_pixels(info):
            raise InputError("sim_points: expected an env whose info names the target and lists the objects' "
                             f"pixels (the MuJoCo tabletop), received info keys {sorted(info)}")
        return target_point_vector(*pixels_from_info(info, self.cameras), self.rng)


POINT_TARGETS = ("object", "pad")  # the target point vector: object (u, v) per camera, then pad (u, v) per camera


def point_slots(spec: str, cameras: list[str]) -> list[int]:
    """"pad:wrist,object" -> the indices of those points' u and v in the target point vector (`cameras` in the
    policy's order); a target without a camera names it in every camera."""
    slots: set[int] = set()
    for item in (part.strip() for part in spec.split(",")):
        target, _, camera = item.partition(":")
        if target not in POINT_TARGETS or (camera and camera not in cameras):
            raise InputError(f"own_points: expected comma-separated TARGET[:CAMERA], TARGET in {list(POINT_TARGETS)}, "
                             f"CAMERA in {cameras}, received {item!r}")
        for c, name in enumerate(cameras):
            if camera in ("", name):
                at = 2 * (POINT_TARGETS.index(target) * len(cameras) + c)
                slots.update((at, at + 1))
    return sorted(slots)


def has_pixels(info: dict) -> bool:
    """The env's info says where the instruction's object is in each camera (the tabletop sim's does)."""
    return {"target_object", "objects"} <= set(info)


class ChunkedPolicy:
    """fn(obs, info) -> action, re-planning every `execute_steps`; optionally records annotated frames (with the
    target points the body acts on marked, training/video.py `mark_points`).

    A target_points policy points itself (what a robot gets); `sim_points` hands it the simulator's truth
    instead, except at `own_slots` (`point_slots`), where it keeps its own points. `trace` follows the episode
    through the infos it is handed, and where the policy pointed (see `EpisodeTrace`)."""

    def __init__(self, runner: PolicyRunner, execute_steps: int, record: bool = False, rng_seed: int = 0,
                 sim_points: bool = False, own_slots: list[int] | None = None):
        if not 1 <= execute_steps <= runner.config.horizon:
            raise InputError(f"execute_steps: expected 1..{runner.config.horizon}, received {execute_steps}")
        if sim_points and runner.config.target_points is None:
            raise InputError("sim_points: expected a checkpoint with target points (mot train --target-points "
                             "model), this one has none")
        if own_slots and not sim_points:
            raise InputError("own_points: expected sim_points too (the points it keeps replace the simulator's)")
        self.runner, self.execute_steps = runner, execute_steps
        self.sim_points = SimTargetPoints(list(runner.config.cameras), rng_seed) if sim_points else None
        self.own_slots = list(own_slots or [])
        self.queue: list[np.ndarray] = []
        self.frames: list[np.ndarray] = [] if record else None
        self.rng = np.random.default_rng(rng_seed)  # sampling noise: reproducible episodes
        self.trace = EpisodeTrace()

    def __call__(self, obs: dict, info: dict) -> np.ndarray:
        self.trace.observe(info)
        if not self.queue:
            cfg = self.runner.config
            noise = self.rng.standard_normal((cfg.horizon, cfg.action_dim)).astype(np.float32)
            state = np.asarray(obs["state"], np.float32)
            points = self.sim_points(obs, info) if self.sim_points is not None else None
            if self.own_slots:  # one pass for the policy's own points (its chunk is dropped), then the mix
                self.runner.infer(obs["images"], state, obs["instruction"], noise=noise)
                points[self.own_slots] = self.runner.last_points[self.own_slots]
            chunk = self.runner.infer(obs["images"], state, obs["instruction"], noise=noise, points=points)
            # The policy's own points only: with --sim-points, last_points is the truth it was handed.
            if self.sim_points is None and self.runner.last_points is not None and has_pixels(info):
                self.trace_points(self.runner.last_points, info)
            if self.sim_points is None and self.runner.last_confidence is not None:
                self.trace_confidence(self.runner.last_confidence)
            self.queue = list(chunk[: self.execute_steps])
        if self.frames is not None:  # with the points the body acts on (its own, or the truth with sim_points)
            images = obs["images"]
            if self.runner.last_points is not None:
                images = mark_points(images, self.runner.last_points, tuple(self.runner.config.cameras))
            self.frames.append(compose(images, obs["instruction"], step=len(self.frames)))
        return self.queue.pop(0)

    def trace_points(self, points: np.ndarray, info: dict) -> None:
        """How far the policy's object point is from the truth per camera on this plan; on the first plan
        also the pad's, and which scene object the first camera's point is nearest to."""
        cfg, trace = self.runner.config, self.trace
        cameras = list(cfg.cameras)
        obj, pad = pixels_from_info(info, cameras)
        # target_point_vector: object (u, v) per camera, then pad (u, v) per camera; truth clipped as trained
        errs = np.linalg.norm(points[: 2 * len(cameras)].reshape(-1, 2) - np.clip(obj, 0, 1), axis=1) * cfg.image_size
        for camera, err in zip(cameras, errs):
            trace.point_errs_px.setdefault(camera, []).append(float(err))
        if trace.first_point_err_px is not None:
            return
        trace.first_point_err_px = float(errs[0])
        nearest = min(info["objects"], key=lambda o: np.linalg.norm(np.asarray(o["pixels"][cameras[0]]) - points[:2]))
        trace.first_point_on_target = nearest["name"] == info["target_object"]
        pad_at = 2 * len(cameras)
        if not np.isnan(pad).any():  # push / place
            trace.first_pad_point_err_px = float(np.linalg.norm(points[pad_at:pad_at + 2] - pad[0]) * cfg.image_size)

    def trace_confidence(self, confidence: np.ndarray) -> None:
        """The grounding head's confidence in its object point per camera on this plan (confidence: object per
        camera, then pad per camera; policy.grounding.point_confidence)."""
        for camera, value in zip(self.runner.config.cameras, confidence):
            self.trace.point_confidence.setdefault(camera, []).append(float(value))
