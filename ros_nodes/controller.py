"""The policy node's logic without rclpy: input bookkeeping, when to plan, blending, holds, e-stop.

``PolicyController`` is driven by the node (callbacks, a control-rate tick, a worker thread that runs
inference) with times in seconds from the node's clock, so every rule here is tested with plain
numbers. Its only way out is ``GuardedCommandPublisher``, which runs ``SafetyGuard`` on every chunk
and hold before handing it to the real publisher: there is no other path to the command topic.

Modes::

    idle     no instruction yet (or the last one was refused)
    running  planning: a new chunk is requested whenever the executing plan has <= replan_steps left
    hold     a required input went stale: we held once at the current position and stopped planning;
             planning resumes by itself when every input is fresh again
    estop    latched by the e-stop topic or a spoken "stop"; only the reset service leaves it
    error    inference refused the current instruction/observation; waits for a new instruction
"""

from __future__ import annotations

import math
import threading
from collections import deque
from dataclasses import dataclass, field
from typing import Callable, Protocol

import numpy as np

from ros_nodes.chunking import Plan, align_chunk, blend
from ros_nodes.safety import EStopLatch, SafetyGuard, UnsafeCommand, Watchdog


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

    @property
    def dt(self) -> float:
        return 1.0 / self.control_hz


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


@dataclass
class Request:
    """One inference job, built under the lock from the latest inputs and run on the worker thread."""

    generation: int  # results from an older generation (instruction changed, hold, e-stop) are dropped
    observation_tick: int
    images: dict[str, np.ndarray]
    state: np.ndarray
    instruction: str
    image_time: float  # when the newest frame in ``images`` was received (latency is measured from it)


@dataclass
class Metrics:
    chunks: int = 0
    holds: int = 0
    late_chunks: int = 0  # inference finished after its whole chunk was in the past
    dropped_results: int = 0  # finished after an instruction change / hold / e-stop
    unsafe_chunks: int = 0  # refused by the guard (NaN/inf)
    starved_ticks: int = 0  # control ticks while running with no planned point left (missed cycles)
    rejected_messages: int = 0
    latencies: deque = field(default_factory=lambda: deque(maxlen=10_000))  # image received -> published (s)
    inference_times: deque = field(default_factory=lambda: deque(maxlen=10_000))

    def summary(self) -> dict:
        def stats(values) -> dict:
            if not values:
                return {"n": 0}
            v = np.asarray(values) * 1e3
            return {"n": int(v.size), "median_ms": round(float(np.median(v)), 2),
                    "p99_ms": round(float(np.percentile(v, 99)), 2), "max_ms": round(float(v.max()), 2)}
        return {"chunks": self.chunks, "holds": self.holds, "late_chunks": self.late_chunks,
                "dropped_results": self.dropped_results, "unsafe_chunks": self.unsafe_chunks,
                "starved_ticks": self.starved_ticks, "rejected_messages": self.rejected_messages,
                "latency": stats(self.latencies), "inference": stats(self.inference_times)}


class PolicyController:
    def __init__(self, config: ControllerConfig, publisher: GuardedCommandPublisher, t0: float,
                 log: Callable[[str], None] = lambda message: None) -> None:
        self.config = config
        self.publisher = publisher
        self.t0 = t0  # time of tick 0; every plan is indexed by ticks counted from here
        self.log = log
        self.metrics = Metrics()
        self.estop = EStopLatch()
        self.watchdog = Watchdog({**{self._camera_key(c): config.stale_image_s for c in config.cameras},
                                  "joint_states": config.stale_joint_state_s})
        # One re-entrant lock guards everything below: callbacks, the tick and the worker all take it.
        self._lock = threading.RLock()
        self._images: dict[str, tuple[np.ndarray, float]] = {}
        self._state: tuple[np.ndarray, float] | None = None
        self._instruction: tuple[str, float] | None = None
        self._plan: Plan | None = None
        self._in_flight: Request | None = None
        self._generation = 0
        self._last_tick: int | None = None
        self.mode = "idle"
        self.error = ""

    @staticmethod
    def _camera_key(name: str) -> str:
        return f"camera/{name}"

    # -- time on the tick grid -------------------------------------------------------------------
    def tick_of(self, now: float) -> int:
        # The epsilon keeps a timer that fires a hair early at t0 + n*dt on tick n, not n - 1.
        return math.floor((now - self.t0) / self.config.dt + 1e-6)

    def time_of(self, tick: int) -> float:
        return self.t0 + tick * self.config.dt

    # -- inputs (called from subscription callbacks, already converted and validated) -------------
    def on_image(self, camera: str, image: np.ndarray, now: float) -> Request | None:
        """Store a frame; returns a Request when this frame completes an observation that is due."""
        with self._lock:
            if camera not in self.config.cameras:
                return None
            self._images[camera] = (image, now)
            self.watchdog.feed(self._camera_key(camera), now)
            # Planning is triggered by a frame arriving, not only by the tick, so latency from
            # image to published chunk does not include waiting for the next tick.
            return self._maybe_request(now)

    def on_joint_state(self, state: np.ndarray, now: float) -> None:
        with self._lock:
            self._state = (state, now)
            self.watchdog.feed("joint_states", now)

    def on_instruction(self, text: str, now: float) -> str:
        """Accept a new instruction (raises ValueError for a bad one, leaving the current one)."""
        text = clean_instruction(text, self.config.max_instruction_chars)
        with self._lock:
            self._instruction = (text, now)
            # In-flight results were computed for the old instruction: drop them. The executing plan is
            # dropped too, because a new instruction may come with a new scene (the sim resets on it);
            # the next chunk starts from the measured joint state, rate-limited by the guard.
            self._generation += 1
            self._plan = None
            self.error = ""
            if self.mode in ("idle", "error"):
                self.mode = "running"
            return text

    def trip_estop(self, reason: str, now: float) -> None:
        """Latch the e-stop and hold at once (from any thread)."""
        with self._lock:
            if self.estop.trip(reason):
                self.log(f"E-STOP latched ({reason}); holding until the reset service is called")
                self._hold(now, "estop")
                self.mode = "estop"

    def reset_estop(self, now: float) -> bool:
        with self._lock:
            was = self.estop.reset()
            if was:
                self.mode = "running" if self._instruction else "idle"
                self.log("E-STOP reset; planning resumes when inputs are fresh")
            return was

    # -- the control tick -------------------------------------------------------------------------
    def tick(self, now: float) -> None:
        """Runs every control period: the watchdog and starvation accounting.

        It never starts inference itself: planning is triggered by the next camera frame once a
        re-plan is due (``on_image``), so every chunk is computed from a frame that is at most the
        inference time old, instead of one up to a whole camera period old. The watchdog bounds the
        wait: if no frame comes, the camera is stale and we hold.
        """
        with self._lock:
            tick = self.tick_of(now)
            self._last_tick = tick
            if self.mode in ("estop", "idle", "error"):
                return None
            stale = self.watchdog.stale(now)
            if stale:
                if self.mode == "running":
                    self.log(f"stale input(s) {stale}: holding and pausing planning")
                    self._hold(now, "stale")
                    self.mode = "hold"
                return None
            if self.mode == "hold":
                self.log("all inputs fresh again: planning resumes")
                self.mode = "running"
            if self._plan is not None and self._plan.remaining(tick) == 0:
                self.metrics.starved_ticks += 1
            return None

    def _maybe_request(self, now: float) -> Request | None:
        if self.mode != "running" or self._in_flight is not None or self.estop.tripped:
            return None
        if self._instruction is None or self._state is None or len(self._images) < len(self.config.cameras):
            return None
        tick = self.tick_of(now)
        if self._plan is not None and self._plan.remaining(tick) > self.config.replan_steps:
            return None
        if self.watchdog.stale(now):
            return None
        instruction, instruction_time = self._instruction
        # After a new instruction, wait for inputs that arrived after it: a sim resets its scene on
        # the instruction, and planning from the old scene's frame would be planning for the wrong world.
        newest_inputs = [t for _, t in self._images.values()] + [self._state[1]]
        if min(newest_inputs) < instruction_time:
            return None
        request = Request(generation=self._generation, observation_tick=round((now - self.t0) / self.config.dt),
                          images={c: self._images[c][0] for c in self.config.cameras},
                          state=self._state[0], instruction=instruction,
                          image_time=max(self._images[c][1] for c in self.config.cameras))
        self._in_flight = request
        return request

    # -- results from the worker thread ----------------------------------------------------------
    def on_result(self, request: Request, chunk: np.ndarray, now: float, inference_s: float = 0.0) -> None:
        with self._lock:
            self._in_flight = None
            self.metrics.inference_times.append(inference_s)
            if request.generation != self._generation or self.mode != "running" or self.estop.tripped:
                self.metrics.dropped_results += 1
                return
            publish_tick = self.tick_of(now)
            try:
                chunk = self.publisher.validate(chunk)
            except UnsafeCommand as exc:
                # A model that emits NaN/inf is broken for this observation: hold rather than repair.
                self.metrics.unsafe_chunks += 1
                self.log(f"refused chunk: {exc}; holding")
                self._hold(now, "unsafe chunk")
                return
            aligned = align_chunk(chunk, request.observation_tick, publish_tick)
            if aligned is None:
                self.metrics.late_chunks += 1
                return
            merged = blend(self._plan, aligned, self.config.blend_steps)
            # The guard rate-limits from the point the follower executes just before this chunk starts.
            current = self._plan.at(publish_tick - 1) if self._plan is not None else request.state
            safe = self.publisher.send_chunk(merged.points, self.time_of(publish_tick), current)
            self._plan = Plan(publish_tick, safe)
            self.metrics.chunks += 1
            self.metrics.latencies.append(max(0.0, now - request.image_time))

    def on_failure(self, request: Request, error: Exception, now: float) -> None:
        """Inference refused its input or failed. Always hold; then it depends on what was refused.

        An instruction the model cannot take (too many tokens) will fail again on every observation:
        stop planning until a new instruction arrives (mode "error"). Anything else (one odd frame,
        a backend hiccup) is specific to this observation: hold, and keep planning from the next one.
        """
        with self._lock:
            self._in_flight = None
            if request.generation != self._generation:
                return
            self.error = f"{type(error).__name__}: {error}"
            self._hold(now, "inference error")
            if str(error).startswith("instruction"):
                self.log(f"inference refused the instruction, waiting for a new one: {self.error}")
                self.mode = "error"
            else:
                self.log(f"inference failed for this observation, holding: {self.error}")

    # -- holds -------------------------------------------------------------------------------------
    def _hold(self, now: float, reason: str) -> None:
        """Publish one hold at the current position, forget the plan and drop in-flight results.

        "Current position" is the measured joint state when it is fresh, else the point the executing
        plan commands now. With neither (we never commanded and never saw the robot) there is nothing
        to hold and nothing is published.
        """
        self._generation += 1
        position = None
        if self._state is not None and self.watchdog.age("joint_states", now) <= self.config.stale_joint_state_s:
            position = self._state[0]
        elif self._plan is not None:
            position = self._plan.at(self.tick_of(now))
        self._plan = None
        if position is None:
            self.log(f"hold ({reason}): no known position to hold at; publishing nothing")
            return
        self.publisher.send_hold(position, now)
        self.metrics.holds += 1

    # -- introspection -------------------------------------------------------------------------------
    def status(self, now: float) -> dict:
        with self._lock:
            return {"mode": self.mode, "instruction": self._instruction[0] if self._instruction else "",
                    "estop": self.estop.tripped, "estop_reason": self.estop.reason, "error": self.error,
                    "stale": self.watchdog.stale(now), "dry_run": self.publisher.dry_run,
                    "planning": self._in_flight is not None, **self.metrics.summary()}
