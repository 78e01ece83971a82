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
    hold     (also) a joint state was implausible: held at the last believable one, resumes once
             joint states are believable again for a staleness period
    estop    latched by the e-stop topic or a spoken "stop"; only the reset service (with the
             operator's token) leaves it, to idle: instructions given before or during it are dropped
    error    inference refused the current instruction; waits for a new instruction
    fault    the inference worker died or hung, or failed outside the model: held; restart the node
    stopped  the node is shutting down: one final hold, nothing after it
"""

from __future__ import annotations

import hashlib
import math
import threading
from collections import Counter, deque
from dataclasses import dataclass, field
from typing import Callable, Protocol

import numpy as np

from ros_nodes.chunking import Plan, align_chunk, blend
from ros_nodes.plausibility import FreshnessGate, JointPlausibility, Verdict
from ros_nodes.safety import EStopLatch, SafetyGuard, SafetyLimits, UnsafeCommand, Watchdog


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
    rejected_messages: int = 0  # every message refused, whatever the reason (sum of ``rejections``)
    rejections: Counter = field(default_factory=Counter)  # kind -> count: malformed, stamp_age, jump, ...
    discarded_instructions: int = 0  # arrived while the e-stop was latched (or in a fault)
    repeated_instructions: int = 0  # identical to the current/pending one: nothing to change
    superseded_instructions: int = 0  # pending, replaced by a newer one before being applied (debounce)
    refused_resets: int = 0  # reset calls without the operator's token
    faults: int = 0
    latencies: deque = field(default_factory=lambda: deque(maxlen=10_000))  # image received -> published (s)
    inference_times: deque = field(default_factory=lambda: deque(maxlen=10_000))

    def summary(self) -> dict:
        def stats(values) -> dict:
            if not values:
                return {"n": 0}
            v = np.asarray(values) * 1e3
            return {"n": int(v.size), "median_ms": round(float(np.median(v)), 2),
                    "p99_ms": round(float(np.percentile(v, 99)), 2), "max_ms": round(float(v.max()), 2),
                    "last_ms": round(float(v[-1]), 2)}
        return {"chunks": self.chunks, "holds": self.holds, "late_chunks": self.late_chunks,
                "dropped_results": self.dropped_results, "unsafe_chunks": self.unsafe_chunks,
                "starved_ticks": self.starved_ticks, "rejected_messages": self.rejected_messages,
                "rejections": dict(sorted(self.rejections.items())),
                "discarded_instructions": self.discarded_instructions,
                "repeated_instructions": self.repeated_instructions,
                "superseded_instructions": self.superseded_instructions,
                "refused_resets": self.refused_resets, "faults": self.faults,
                "latency": stats(self.latencies), "inference": stats(self.inference_times)}


def _digest(image: np.ndarray) -> bytes:
    """A 16-byte fingerprint of a frame: frozen-camera detection compares these, not whole frames."""
    return hashlib.blake2b(np.ascontiguousarray(image).data, digest_size=16).digest()


class PolicyController:
    def __init__(self, config: ControllerConfig, publisher: GuardedCommandPublisher, t0: float,
                 log: Callable[[str], None] = lambda message: None, estop: EStopLatch | None = None) -> None:
        self.config = config
        self.publisher = publisher
        self.t0 = t0  # time of tick 0; every plan is indexed by ticks counted from here
        self.log = log
        self.metrics = Metrics()
        self.estop = estop if estop is not None else EStopLatch()
        self.watchdog = Watchdog({**{self._camera_key(c): config.stale_image_s for c in config.cameras},
                                  "joint_states": config.stale_joint_state_s})
        self.inputs = FreshnessGate(max_age=config.max_input_age, max_frozen_s=config.max_frozen_s,
                                    require_stamps=config.require_stamps)
        limits = publisher.limits
        speed = config.joint_speed_limit or 2.0 * limits.max_velocity
        self.joints = JointPlausibility(limits.lower, limits.upper, config.joint_limit_margin, speed,
                                        config.joint_jump_tolerance, config.joint_names)
        # One re-entrant lock guards everything below: callbacks, the tick and the worker all take it.
        self._lock = threading.RLock()
        self._images: dict[str, tuple[np.ndarray, float]] = {}
        self._delays: dict[str, float] = {}  # input -> receive time - header stamp of its last accepted message
        self._state: tuple[np.ndarray, float] | None = None
        self._instruction: tuple[str, float] | None = None  # (text, time it was applied)
        self._pending: tuple[str, float] | None = None  # the latest instruction not applied yet (debounce)
        self._applied_at = -math.inf
        self._last_heard = -math.inf  # when the last instruction message (any text) arrived
        self._planned = False  # a chunk was published for the current instruction
        self._plan: Plan | None = None
        self._in_flight: Request | None = None
        self._in_flight_since = 0.0
        self._generation = 0
        self._last_tick: int | None = None
        self._suspect_until = -math.inf  # joint states are not trusted before this (an implausible one came)
        self._last_rejection: dict[str, tuple[float, str]] = {}  # kind -> (time, message), for logs/diagnostics
        self.mode = "estop" if self.estop.tripped else "idle"
        self.error = ""
        self.fault = ""
        if self.estop.tripped:
            self.log(f"E-STOP latched at start ({self.estop.reason}); holding until the reset service is called")

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
    def reject(self, kind: str, message: str, now: float) -> None:
        """Count and (at most once a second per kind) log a refused message."""
        with self._lock:
            self.metrics.rejected_messages += 1
            self.metrics.rejections[kind] += 1
            last = self._last_rejection.get(kind)
            self._last_rejection[kind] = (now, message)
            if last is None or now - last[0] >= 1.0:
                self.log(f"dropped {kind} message: {message}")

    def on_image(self, camera: str, image: np.ndarray, now: float, stamp: float | None = None) -> Request | None:
        """Store a frame; returns a Request when this frame completes an observation that is due."""
        with self._lock:
            if camera not in self.config.cameras:
                return None
            key = self._camera_key(camera)
            digest = _digest(image) if self.config.max_frozen_s > 0 else None
            rejection = self.inputs.check(key, stamp, now, digest)
            if rejection is not None:
                self.reject(rejection.kind, rejection.message, now)
                return None
            self._images[camera] = (image, now)
            self._delays[key] = now - stamp if stamp else 0.0
            self.watchdog.feed(key, now)
            # Planning is triggered by a frame arriving, not only by the tick, so latency from
            # image to published chunk does not include waiting for the next tick.
            return self._maybe_request(now)

    def on_joint_state(self, state: np.ndarray, now: float, stamp: float | None = None) -> None:
        with self._lock:
            rejection = self.inputs.check("joint_states", stamp, now)
            if rejection is not None:
                return self.reject(rejection.kind, rejection.message, now)
            verdict, rejection = self.joints.check(state, stamp if stamp else now)
            if verdict is Verdict.REJECT:
                self.reject(rejection.kind, rejection.message, now)
                # Not a position to plan from, and maybe not where the arm is: stop acting on joint
                # states for one staleness period and hold at the last believable one.
                self._suspect_until = now + self.config.stale_joint_state_s
                if self.mode == "running":
                    self.log(f"implausible joint state ({rejection.message}): holding")
                    self._hold(now, "implausible joint state")
                    self.mode = "hold"
                return None
            if verdict is Verdict.WAIT:
                return None
            self._state = (state, now)
            self._delays["joint_states"] = now - stamp if stamp else 0.0
            self.watchdog.feed("joint_states", now)

    def on_instruction(self, text: str, now: float) -> tuple[str, str]:
        """Take a new instruction -> (cleaned text, what happened: applied | pending | repeated | discarded).

        Raises ValueError for a bad one, leaving the current one. Latest wins: an instruction that
        arrives less than ``instruction_debounce_s`` after the last applied one, or while the current
        one is still waiting for its first chunk, waits (replacing any older waiting one) and is
        applied as soon as both have passed, so a stream of instructions can never starve planning.
        The current instruction repeated within ``instruction_debounce_s`` of the previous message is
        a repeat and changes nothing.
        """
        text = clean_instruction(text, self.config.max_instruction_chars)
        with self._lock:
            if self.estop.tripped or self.mode in ("fault", "stopped"):
                # Discarded, not queued: after a reset the robot waits for an instruction given after it.
                self.metrics.discarded_instructions += 1
                why = "e-stop latched" if self.estop.tripped else self.mode
                self.log(f"instruction {text!r} discarded ({why})")
                return text, f"discarded ({why})"
            current = self._instruction[0] if self._instruction else None
            heard_before, self._last_heard = self._last_heard, now
            if self._pending is not None and text == self._pending[0]:
                self.metrics.repeated_instructions += 1
                return text, "pending"
            if text == current and (self._pending is not None
                                    or now - heard_before < self.config.instruction_debounce_s):
                # A publisher repeating the current instruction (a UI at 5 Hz) changes nothing; a pending
                # different one is cancelled, since the latest word is the current instruction again.
                # The same text again after a quiet spell is a new command (a new episode): re-applied.
                if self._pending is not None:
                    self.metrics.superseded_instructions += 1
                    self._pending = None
                self.metrics.repeated_instructions += 1
                return text, "repeated"
            if self._pending is not None:
                self.metrics.superseded_instructions += 1
            self._pending = (text, now)
            return text, "applied" if self._apply_pending(now) else "pending"

    def _apply_pending(self, now: float) -> bool:
        if self._pending is None or self.estop.tripped or self.mode in ("fault", "stopped"):
            return False
        if self.mode in ("running", "hold"):  # the current instruction is live: give it its time
            if now - self._applied_at < self.config.instruction_debounce_s:
                return False
            if self._in_flight is not None and self._in_flight.generation == self._generation and not self._planned:
                return False  # the current instruction's first chunk is being computed: let it land first
        self._instruction, self._pending = (self._pending[0], now), None
        self._applied_at, self._planned = now, False
        # In-flight results were computed for the old instruction: drop them. The executing plan is
        # dropped too, because a new instruction may come with a new scene (the sim resets on it);
        # the next chunk starts from the measured joint state, rate-limited by the guard. For the
        # same reason the joint-state jump check starts afresh (a reset sim moves the arm instantly).
        self._generation += 1
        self._plan = None
        self.error = ""
        self.joints.reset()
        if self.mode in ("idle", "error"):
            self.mode = "running"
        return True

    def trip_estop(self, reason: str, now: float) -> None:
        """Latch the e-stop and hold at once (from any thread); forget the instruction."""
        with self._lock:
            newly = self.estop.trip(reason)
            if newly or self.mode != "estop":
                if self.estop.persist_error:
                    self.log(f"E-STOP NOT PERSISTED: {self.estop.persist_error}")
                self.log(f"E-STOP latched ({reason}); holding until the reset service is called")
                if self.mode not in ("fault", "stopped"):
                    self._hold(now, "estop")
                    self.mode = "estop"
                self._instruction = self._pending = None

    def reset_estop(self, now: float) -> bool:
        """Clear the latch (the node checks the operator's token first); the robot then waits for a new
        instruction: nothing given before or during the e-stop is executed."""
        with self._lock:
            was = self.estop.reset()
            if was:
                self._instruction = self._pending = None
                if self.mode == "estop":
                    self.mode = "idle"
                self.log("E-STOP reset; waiting for a new instruction")
            return was

    def on_fault(self, reason: str, now: float) -> None:
        """Something outside the model failed (the worker died, an inference hung): hold and stay held.

        Unlike mode "error" (the model refused an instruction), a fault is not cleared by a new
        instruction: the node must be restarted."""
        with self._lock:
            if self.mode in ("fault", "stopped"):
                return
            self.fault = self.error = reason
            self.metrics.faults += 1
            self.log(f"FAULT: {reason}; holding until the node is restarted")
            self._hold(now, "fault")
            self.mode = "fault"
            self._instruction = self._pending = None

    def shutdown(self, now: float) -> None:
        """The node is stopping: one final hold, and nothing is published after it."""
        with self._lock:
            if self.mode == "stopped":
                return
            self._hold(now, "shutdown")
            self.mode = "stopped"
            self._pending = None

    # -- the control tick -------------------------------------------------------------------------
    def stale(self, now: float) -> list[str]:
        """Inputs that do not count as fresh now: watchdog-stale, or joint states under suspicion."""
        with self._lock:
            stale = self.watchdog.stale(now)
            if now < self._suspect_until and "joint_states" not in stale:
                stale.append("joint_states (implausible)")
            return stale

    def tick(self, now: float) -> None:
        """Runs every control period: faults, debounced instructions, the watchdog, starvation.

        It never starts inference itself: planning is triggered by the next camera frame once a
        re-plan is due (``on_image``), so every chunk is computed from a frame that is at most the
        inference time old, instead of one up to a whole camera period old. The watchdog bounds the
        wait: if no frame comes, the camera is stale and we hold.
        """
        with self._lock:
            tick = self.tick_of(now)
            self._last_tick = tick
            if self._in_flight is not None and now - self._in_flight_since > self.config.inference_timeout_s:
                self.on_fault(f"inference has not returned after {now - self._in_flight_since:.1f} s "
                              f"(inference_timeout_s {self.config.inference_timeout_s})", now)
            self._apply_pending(now)
            if self.mode in ("estop", "idle", "error", "fault", "stopped"):
                return None
            stale = self.stale(now)
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
        self._apply_pending(now)
        if self.mode != "running" or self._in_flight is not None or self.estop.tripped:
            return None
        if self._instruction is None or self._state is None or len(self._images) < len(self.config.cameras):
            return None
        tick = self.tick_of(now)
        if self._plan is not None and self._plan.remaining(tick) > self.config.replan_steps:
            return None
        if self.stale(now):
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
        self._in_flight, self._in_flight_since = request, now
        return request

    # -- results from the worker thread ----------------------------------------------------------
    def on_result(self, request: Request, chunk: np.ndarray, now: float, inference_s: float = 0.0) -> None:
        with self._lock:
            try:
                self._on_result(request, chunk, now, inference_s)
            finally:
                self._apply_pending(now)

    def _on_result(self, request: Request, chunk: np.ndarray, now: float, inference_s: float) -> None:
        if self._in_flight is request:
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
        self._planned = True
        self.metrics.chunks += 1
        self.metrics.latencies.append(max(0.0, now - request.image_time))

    def on_failure(self, request: Request, error: Exception, now: float) -> None:
        """Inference refused its input or failed. Always hold; then it depends on what was refused.

        An instruction the model cannot take (too many tokens) will fail again on every observation:
        stop planning until a new instruction arrives (mode "error"). Anything else (one odd frame,
        a backend hiccup) is specific to this observation: hold, and keep planning from the next one.
        """
        with self._lock:
            if self._in_flight is request:
                self._in_flight = None
            try:
                if request.generation != self._generation or self.mode in ("fault", "stopped"):
                    return
                self.error = f"{type(error).__name__}: {error}"
                self._hold(now, "inference error")
                if str(error).startswith("instruction"):
                    self.log(f"inference refused the instruction, waiting for a new one: {self.error}")
                    self.mode = "error"
                else:
                    self.log(f"inference failed for this observation, holding: {self.error}")
            finally:
                self._apply_pending(now)

    # -- holds -------------------------------------------------------------------------------------
    def _hold(self, now: float, reason: str) -> None:
        """Publish one hold at the current position, forget the plan and drop in-flight results.

        "Current position" is the last believable measured joint state when it is fresh, else the
        point the executing plan commands now. With neither (we never commanded and never saw the
        robot) there is nothing to hold and nothing is published.
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
    def input_ages(self, now: float) -> dict[str, float]:
        """Seconds since each required input's last accepted message (inf: never)."""
        with self._lock:
            return {name: self.watchdog.age(name, now) for name in self.watchdog.limits}

    def status(self, now: float) -> dict:
        with self._lock:
            return {"mode": self.mode, "instruction": self._instruction[0] if self._instruction else "",
                    "pending_instruction": self._pending[0] if self._pending else "",
                    "estop": self.estop.tripped, "estop_reason": self.estop.reason,
                    "estop_persisted": self.estop.path is not None and not self.estop.persist_error,
                    "estop_persist_error": self.estop.persist_error,
                    "error": self.error, "fault": self.fault, "stale": self.stale(now),
                    "dry_run": self.publisher.dry_run, "planning": self._in_flight is not None,
                    "input_age_s": {k: (round(v, 4) if math.isfinite(v) else None)
                                    for k, v in self.input_ages(now).items()},
                    "stamp_delay_s": {k: round(v, 4) for k, v in self._delays.items()},
                    "last_rejection": {k: m for k, (_, m) in sorted(self._last_rejection.items())},
                    **self.metrics.summary()}
