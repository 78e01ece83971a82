import numpy as np
import pytest
from hypothesis import given, settings, strategies as st
from hypothesis.extra.numpy import arrays

from ros_nodes.safety import EStopLatch, SafetyGuard, SafetyLimits, UnsafeCommand, Watchdog

LIMITS = SafetyLimits(lower=[-1.0, -2.0, 0.0], upper=[1.0, 2.0, 0.08], max_step=[0.2, 0.5, 0.04],
                      max_velocity=[1.0, 10.0, 1.0], dt=0.1)
GUARD = SafetyGuard(LIMITS)
finite = st.floats(-1e6, 1e6, allow_nan=False)


@settings(max_examples=300, deadline=None)
@given(points=arrays(np.float64, st.tuples(st.integers(1, 12), st.just(3)), elements=finite),
       start=arrays(np.float64, (3,), elements=st.floats(-5, 5)))
def test_guarded_chunk_is_inside_limits_and_rate_limited(points, start):
    safe = GUARD.apply(points, start)
    assert safe.shape == points.shape
    assert np.all(safe >= LIMITS.lower) and np.all(safe <= LIMITS.upper)
    previous = np.clip(start, LIMITS.lower, LIMITS.upper)  # a start outside the limits is brought inside first
    steps = np.abs(np.diff(np.vstack([previous, safe]), axis=0))
    assert np.all(steps <= LIMITS.step_bound + 1e-12)


def test_step_bound_is_the_tighter_of_step_and_velocity():
    assert np.allclose(LIMITS.step_bound, [0.1, 0.5, 0.04])


def test_a_feasible_chunk_passes_unchanged():
    points = np.array([[0.05, 0.1, 0.02], [0.1, 0.3, 0.04]])
    assert np.allclose(GUARD.apply(points, np.zeros(3)), points)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_chunks_are_refused_not_repaired(bad):
    points = np.zeros((4, 3))
    points[2, 1] = bad
    with pytest.raises(UnsafeCommand, match="finite"):
        GUARD.apply(points, np.zeros(3))
    with pytest.raises(UnsafeCommand):
        GUARD.apply(np.zeros((4, 3)), np.array([0.0, bad, 0.0]))


def test_wrong_shapes_are_refused():
    for shape in [(4, 2), (0, 3), (2, 3, 1)]:
        with pytest.raises(UnsafeCommand):
            GUARD.apply(np.zeros(shape), np.zeros(3))
    for garbage in ["not a chunk", None, [[1, "a", 2]], {"a": 1}]:  # a broken backend's output
        with pytest.raises(UnsafeCommand):
            GUARD.apply(garbage, np.zeros(3))


def test_hold_is_clamped():
    assert GUARD.hold(np.array([5.0, -5.0, 0.05])).tolist() == [[1.0, -2.0, 0.05]]


@pytest.mark.parametrize("kwargs,match", [
    (dict(upper=[1.0, 2.0]), "upper"), (dict(lower=[2.0, -2.0, 0.0]), "lower < upper"),
    (dict(max_step=[0.0]), "max_step"), (dict(dt=0.0), "dt"), (dict(max_velocity=[np.nan]), "finite")])
def test_limits_validate(kwargs, match):
    base = dict(lower=[-1.0, -2.0, 0.0], upper=[1.0, 2.0, 0.08], max_step=[0.2], max_velocity=[1.0], dt=0.1)
    with pytest.raises(ValueError, match=match):
        SafetyLimits(**{**base, **kwargs})


def test_watchdog():
    dog = Watchdog({"camera": 0.5, "joints": 0.2})
    assert dog.stale(0.0) == ["camera", "joints"]  # never seen counts as stale
    dog.feed("camera", 1.0)
    dog.feed("joints", 1.0)
    assert dog.stale(1.2) == []
    assert dog.stale(1.3) == ["joints"]
    assert dog.stale(1.6) == ["camera", "joints"]


def test_estop_latch():
    latch = EStopLatch()
    assert latch.trip("a") and not latch.trip("b")
    assert latch.tripped and latch.reason == "a"
    assert latch.reset() and not latch.tripped and not latch.reset()
