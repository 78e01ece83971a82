"""What the fuzz campaign (benchmarks/fuzz_policy_node.py) sends and what it checks.

- ``FuzzRunner``: the policy stand-in, fast and sometimes adversarial (NaN, huge values, wrong shapes,
  non-arrays, exceptions);
- ``strategies``: hypothesis event sequences -- camera frames (valid, garbage, stamped old / in the
  future / repeated / unset), joint states (valid, 1e6 rad, NaN, missing or extra joints, stale stamps,
  beyond the margin, jumps), instructions (text, random and non-UTF-8 bytes, oversized), e-stop
  messages, reset calls (right token, wrong token, none), control ticks and short pauses;
- ``Oracle``: what was sent, and the rules every published command must satisfy, knowing only that:

  - limits: every point finite and inside position_lower/upper;
  - velocity: every step inside a chunk within the step bound, and its first point within the bound
    of a recently reported (in-range) joint state or of the previous command;
  - e-stop: no chunk between an e-stop message and a successful reset;
  - stale: no chunk while any camera or the joint state has sent no fresh, well-stamped message for
    longer than its staleness limit (+ one control period, the documented reaction time);
  - implausible: no chunk within the suspicion period after an out-of-range joint state.
"""

from __future__ import annotations

import threading
from collections import Counter, deque

import numpy as np
from hypothesis import strategies as st

CAMERAS = ("front", "wrist")
SLACK_S = 0.05  # thread scheduling between the fuzzer and the worker thread


class FuzzRunner:
    """A policy stand-in: a short ramp from the observed state, or (rarely) something hostile; and, like a
    PolicyRunner of a policy that points, `last_points` / `last_confidence` (often hostile too: the node
    only reports them, so nothing it holds there may crash the worker or change a command)."""

    POINTS = (lambda r: r.random(8), lambda r: r.random(8), lambda r: np.full(8, np.nan), lambda r: r.random(5),
              lambda r: "not points", lambda r: None, lambda r: np.full((2, 4), np.inf), lambda r: [object()] * 8)
    CONFIDENCE = (lambda r: r.random(4), lambda r: r.random(4), lambda r: None, lambda r: r.random(3),
                  lambda r: np.full(4, np.nan), lambda r: {"front": 1.0})

    def __init__(self, rng: np.random.Generator) -> None:
        self.rng, self.calls = rng, 0
        self.lock = threading.Lock()
        self.last_points = self.last_confidence = None

    def infer(self, images, state, instruction):
        with self.lock:
            self.calls += 1
            roll = self.rng.random()
            self.last_points = self.POINTS[self.rng.integers(len(self.POINTS))](self.rng)
            self.last_confidence = self.CONFIDENCE[self.rng.integers(len(self.CONFIDENCE))](self.rng)
        horizon = 10
        if roll < 0.04:
            return np.full((horizon, state.size), np.nan)
        if roll < 0.08:
            return np.full((horizon, state.size), 1e9)
        if roll < 0.10:
            return np.zeros((horizon, state.size + 1))
        if roll < 0.12:
            return "not a chunk"
        if roll < 0.14:
            raise ValueError("images['front']: the stand-in refuses this observation")
        if roll < 0.15:
            raise RuntimeError("backend hiccup")
        steps = np.arange(1, horizon + 1)[:, None] * 0.3 * (self.rng.random(state.size) - 0.5)
        return state[None] + steps


class Oracle:
    """What the fuzzer sent, and the rules every published command must satisfy."""

    def __init__(self, p: dict, lower, upper, bound, dt) -> None:
        self.p, self.lower, self.upper, self.bound, self.dt = p, lower, upper, bound, dt
        self.fresh: dict[str, float] = {}  # input -> wall time of its last fresh, well-stamped message
        self.last_stamp: dict[str, float] = {}
        self.implausible_at = -1e9
        self.latched = False
        self.states: deque = deque(maxlen=200)  # in-range joint states recently sent
        self.previous: np.ndarray | None = None  # the last command's points
        self.unsafe: Counter = Counter()
        self.examples: list[str] = []
        self.published = Counter()
        self.lock = threading.Lock()

    def sent_fresh(self, key: str, stamp: float, now: float) -> bool:
        """Would a correct node accept this stamp? (fresh and after the last accepted one)."""
        ok = abs(now - stamp) <= self.p["max_input_age"] and stamp > self.last_stamp.get(key, 0.0)
        if ok:
            self.last_stamp[key] = stamp
        return ok

    def check(self, kind: str, points: np.ndarray, now: float) -> None:
        with self.lock:
            self.published[kind] += 1
            bad = []
            if not np.all(np.isfinite(points)) or np.any(points < self.lower - 1e-9) or np.any(points > self.upper + 1e-9):
                bad.append("joint_limits")
            if kind == "chunk":
                if np.any(np.abs(np.diff(points, axis=0)) > self.bound + 1e-9):
                    bad.append("velocity")
                references = [np.clip(s, self.lower, self.upper) for s in self.states]
                if self.previous is not None:
                    references += list(self.previous)
                if not any(np.all(np.abs(points[0] - r) <= self.bound + 1e-6) for r in references):
                    bad.append("velocity_first_point")
                if self.latched:
                    bad.append("while_estopped")
                limits = {**{f"camera/{c}": self.p["stale_image_s"] for c in CAMERAS},
                          "joint_states": self.p["stale_joint_state_s"]}
                if any(now - self.fresh.get(k, -1e9) > limit + self.dt + SLACK_S for k, limit in limits.items()):
                    bad.append("stale_inputs")
                if self.implausible_at < now < self.implausible_at + self.p["stale_joint_state_s"] - SLACK_S:
                    bad.append("implausible_inputs")
            self.previous = points
            for rule in bad:
                self.unsafe[rule] += 1
                if len(self.examples) < 10:
                    self.examples.append(f"{kind} at {now:.3f}: {rule}")


def strategies(joints, lower, upper):
    """Event sequences: half hostile bursts of every kind, half a robot working normally for a while."""
    image_kinds = st.sampled_from(["valid", "valid", "valid", "garbage", "old", "future", "repeat", "unstamped"])
    joint_kinds = st.sampled_from(["valid", "valid", "valid", "valid", "huge", "nan", "missing", "extra", "old",
                                   "beyond_margin", "jump"])
    text_kinds = st.one_of(st.sampled_from(["pick up the red cube", "push the blue block", "pick up the red cube",
                                            "stop", " ", ""]),
                           st.text(max_size=40), st.binary(min_size=1, max_size=40),
                           st.just(b"pick up \xff\xfe"), st.just("x" * 5000))
    valid_image = st.tuples(st.just("image"), st.sampled_from(CAMERAS), st.just("valid"), st.just(b""))
    valid_state = st.tuples(st.just("joint_state"), st.just("valid"), st.just([]))
    branches = {  # branch: how many of the equally likely one_of slots it gets
        valid_image: 8, valid_state: 6, st.tuples(st.just("tick")): 3, st.tuples(st.just("sleep"), st.floats(0.0, 0.03)): 3,
        st.tuples(st.just("image"), st.sampled_from(CAMERAS), image_kinds, st.binary(max_size=64)): 2,
        st.tuples(st.just("joint_state"), joint_kinds, st.lists(st.floats(allow_nan=True, allow_infinity=True),
                                                                min_size=len(joints), max_size=len(joints))): 2,
        st.tuples(st.just("instruction"), text_kinds): 2,
        st.tuples(st.just("estop"), st.sampled_from([True, False, False])): 1,
        st.tuples(st.just("reset"), st.sampled_from(["token", "token", "wrong", "none"])): 1}
    hostile = st.lists(st.one_of([b for b, n in branches.items() for _ in range(n)]), min_size=10, max_size=40)
    # Half the examples are a robot working normally for a while (reset, an instruction, then valid
    # frames and states), so that the node does plan and every rule is checked on real chunks too.
    start = st.tuples(st.tuples(st.just("reset"), st.just("token")),
                      st.tuples(st.just("instruction"), st.sampled_from(["pick up the red cube", "push the blue block"])))
    calm = st.tuples(start, st.lists(st.one_of(valid_image, valid_image, valid_state, st.tuples(st.just("tick")),
                                               st.tuples(st.just("sleep"), st.floats(0.0, 0.03))),
                                     min_size=40, max_size=120)).map(lambda t: [*t[0], *t[1]])
    return st.one_of(hostile, calm)
