"""Input plausibility with plain numbers: header stamps, frozen frames, joint ranges and jumps."""

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from ros_nodes.plausibility import FreshnessGate, JointPlausibility, Verdict

LOWER, UPPER = np.array([-1.0, -2.0, 0.0]), np.array([1.0, 2.0, 0.08])


def joints(**kwargs):
    return JointPlausibility(LOWER, UPPER, **{"margin": [0.1, 0.1, 0.01], "max_speed": [2.0, 2.0, 0.2],
                                              "tolerance": 0.02, **kwargs})


def confirmed(check, q=(0.0, 0.0, 0.04), t=0.0):
    assert check.check(np.array(q), t)[0] is Verdict.WAIT
    assert check.check(np.array(q), t + 0.01)[0] is Verdict.ACCEPT
    return check


def test_a_reading_far_outside_the_limits_is_rejected_not_clamped():
    check = confirmed(joints())
    verdict, why = check.check(np.array([1e6, 0.0, 0.04]), 0.1)
    assert verdict is Verdict.REJECT and why.kind == "out_of_range" and "joint 0" in why.message
    # Inside the margin is a believable overshoot at a hard stop.
    assert check.check(np.array([1.05, 0.0, 0.04]), 1.0)[0] is Verdict.ACCEPT
    assert check.check(np.array([1.0, 0.0, 0.095]), 2.0)[0] is Verdict.REJECT  # gripper margin 0.01


def test_a_jump_faster_than_the_arm_can_move_is_rejected():
    check = confirmed(joints())
    verdict, why = check.check(np.array([0.5, 0.0, 0.04]), 0.11)  # 0.5 rad in 0.1 s: 5 rad/s > 2 rad/s
    assert verdict is Verdict.REJECT and why.kind == "jump"
    assert check.check(np.array([0.1, 0.0, 0.04]), 0.11)[0] is Verdict.ACCEPT  # 1 rad/s: fine
    # The reference is the last accepted state: a true position far away becomes believable once
    # enough time has passed for the arm to get there (the bound grows with the stamp difference).
    assert check.check(np.array([0.9, 0.0, 0.04]), 0.2)[0] is Verdict.REJECT
    assert check.check(np.array([0.9, 0.0, 0.04]), 0.6)[0] is Verdict.ACCEPT


def test_a_glitch_first_never_becomes_the_reference():
    check = joints()
    assert check.check(np.array([0.9, 1.9, 0.0]), 0.0)[0] is Verdict.WAIT  # a glitch arrives first
    assert check.check(np.array([0.0, 0.0, 0.04]), 0.01)[0] is Verdict.WAIT  # disagrees: a new candidate
    assert check.check(np.array([0.0, 0.0, 0.04]), 0.02)[0] is Verdict.ACCEPT
    check.reset()  # a sim that resets its scene: the next state starts afresh
    assert check.check(np.array([0.8, 0.0, 0.04]), 0.03)[0] is Verdict.WAIT


@settings(max_examples=300, deadline=None)
@given(q=st.lists(st.floats(allow_nan=True, allow_infinity=True), min_size=3, max_size=3),
       t=st.floats(0, 100))
def test_anything_accepted_is_inside_the_margin_and_finite(q, t):
    check = confirmed(joints())
    verdict, _ = check.check(np.array(q), 0.02 + t)
    if verdict is Verdict.ACCEPT:
        assert np.all(np.isfinite(q)) and np.all(np.array(q) >= LOWER - [0.1, 0.1, 0.01])
        assert np.all(np.array(q) <= UPPER + [0.1, 0.1, 0.01])


def test_limits_validate():
    with pytest.raises(ValueError, match="joint_limit_margin"):
        joints(margin=[0.1, 0.1])
    with pytest.raises(ValueError, match="joint_speed_limit"):
        joints(max_speed=0.0)


def test_frames_stamped_long_ago_or_in_the_future_are_stale_on_arrival():
    gate = FreshnessGate(max_age=0.25)
    assert gate.check("cam", 90.0, now=100.0).kind == "stamp_age"  # 10 s in the past
    assert "old" in gate.check("cam", 99.7, now=100.0).message
    assert "future" in gate.check("cam", 100.3, now=100.0).message
    assert gate.check("cam", 99.9, now=100.0) is None


def test_out_of_order_and_repeated_stamps_are_rejected():
    gate = FreshnessGate(max_age=1.0)
    assert gate.check("cam", 10.0, now=10.0) is None
    assert gate.check("cam", 10.0, now=10.1).kind == "out_of_order"  # the same message again
    assert gate.check("cam", 9.95, now=10.1).kind == "out_of_order"
    assert gate.check("joints", 9.95, now=10.1) is None  # per input
    assert gate.check("cam", 10.1, now=10.1) is None


def test_unstamped_messages_need_require_stamps_off():
    assert FreshnessGate(require_stamps=True).check("cam", None, now=1.0).kind == "unstamped"
    assert FreshnessGate(require_stamps=True).check("cam", 0.0, now=1.0).kind == "unstamped"
    assert FreshnessGate(require_stamps=False).check("cam", None, now=1.0) is None


def test_identical_content_for_longer_than_max_frozen_s_is_frozen():
    gate = FreshnessGate(max_age=1.0, max_frozen_s=0.5)
    for k in range(6):  # fresh stamps, same pixels: a driver re-sending its last buffer
        t = 1.0 + 0.1 * k
        assert gate.check("cam", t, now=t, digest=b"same") is None
    assert gate.check("cam", 1.7, now=1.7, digest=b"same").kind == "frozen"
    assert gate.check("cam", 1.8, now=1.8, digest=b"new") is None  # it moves again: fresh
    off = FreshnessGate(max_age=1.0, max_frozen_s=0.0)
    assert all(off.check("cam", 1.0 + k, now=1.0 + k, digest=b"same") is None for k in range(5))
