"""The policy node's logic without rclpy: input bookkeeping, when to plan, blending, holds, e-stop.

``PolicyController`` is driven by the node (callbacks, a control-rate tick, a worker thread that runs
inference) with times in seconds from the node's clock, so every rule here is tested with plain
numbers. What it believes about the world lives in ``LatestInputs`` (ros_nodes/latest_inputs.py); its
numbers in ``ControllerConfig`` (ros_nodes/controller_config.py); its counters in ``Metrics``. Its only
way out is ``GuardedCommandPublisher`` (ros_nodes/guarded_publisher.py), which runs ``SafetyGuard`` on
every chunk and hold before handing it to the real publisher: there is no other path to the command topic.

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

import math
import threading
from typing import Callable

import numpy as np

from ros_nodes.chunking import Plan, align_chunk, blend
from ros_nodes.controller_config import ControllerConfig, Request, clean_instruction
from ros_nodes.guarded_publisher import GuardedCommandPublisher
from ros_nodes.latest_inputs import LatestInputs
from ros_nodes.metrics import Metrics
from ros_nodes.safety import EStopLatch, UnsafeCommand


class PolicyController:
    def __init__(self, config: ControllerConfig, publisher: GuardedCommandPublisher, t0: float,
                 log: Callable[[str], None] = lambda message: None, estop: EStopLatch | None = None) -> None:
        self.config = config
        self.publisher = publisher
        self.t0 = t0  # time of tick 0; every plan is indexed by ticks counted from here
        self.log = log
        self.metrics = Metrics()
        self.estop = estop if estop is not None else EStopLatch()
        # One re-entrant lock guards everything below (the inputs too): callbacks, the tick and the
        # worker all take it.
        self._lock = threading.RLock()
        self.inputs = LatestInputs(config, publisher.limits)
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
        self._last_rejection: dict[str, tuple[float, str]] = {}  # kind -> (time, message), for logs/diagnostics
        self.mode = "estop" if self.estop.tripped else "idle"
        self.error = ""
        self.fault = ""
        if self.estop.tripped:
            self.log(f"E-STOP latched at start ({self.estop.reason}); holding until the reset service is called")

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
            rejection = self.inputs.accept_image(camera, image, now, stamp)
            if rejection is not None:
                self.reject(rejection.kind, rejection.message, now)
                return None
            # Planning is triggered by a frame arriving, not only by the tick, so latency from
            # image to published chunk does not include waiting for the next tick.
            return self._maybe_request(now)

    def on_joint_state(self, state: np.ndarray, now: float, stamp: float | None = None) -> None:
        with self._lock:
            outcome, rejection = self.inputs.accept_joint_state(state, now, stamp)
            if rejection is not None:
                self.reject(rejection.kind, rejection.message, now)
            if outcome == "implausible" and self.mode == "running":
                # Maybe not where the arm is: hold at the last believable state (joint states are
                # untrusted, hence stale, for one staleness period).
                self.log(f"implausible joint state ({rejection.message}): holding")
                self._hold(now, "implausible joint state")
                self.mode = "hold"

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
        self.inputs.restart_joint_checks()
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
            return self.inputs.stale(now)

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
        if self._instruction is None or not self.inputs.complete():
            return None
        tick = self.tick_of(now)
        if self._plan is not None and self._plan.remaining(tick) > self.config.replan_steps:
            return None
        if self.stale(now):
            return None
        instruction, instruction_time = self._instruction
        # After a new instruction, wait for inputs that arrived after it: a sim resets its scene on
        # the instruction, and planning from the old scene's frame would be planning for the wrong world.
        if self.inputs.oldest_time() < instruction_time:
            return None
        images, state, image_time = self.inputs.observation()
        request = Request(generation=self._generation, observation_tick=round((now - self.t0) / self.config.dt),
                          images=images, state=state, instruction=instruction, image_time=image_time)
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
        position = self.inputs.fresh_state(now)
        if position is None and self._plan is not None:
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
            return self.inputs.ages(now)

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
                    "stamp_delay_s": {k: round(v, 4) for k, v in self.inputs.delays.items()},
                    "last_rejection": {k: m for k, (_, m) in sorted(self._last_rejection.items())},
                    **self.metrics.summary()}
