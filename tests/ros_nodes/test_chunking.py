import numpy as np
from hypothesis import given, settings, strategies as st

from ros_nodes.chunking import Plan, align_chunk, blend


def test_plan_indexing():
    plan = Plan(10, np.arange(4.0)[:, None])
    assert plan.remaining(9) == 4 and plan.remaining(12) == 2 and plan.remaining(20) == 0
    assert plan.at(5)[0] == 0.0 and plan.at(12)[0] == 2.0 and plan.at(99)[0] == 3.0
    assert plan.from_tick(12)[:, 0].tolist() == [2.0, 3.0] and plan.from_tick(99)[:, 0].tolist() == [3.0]


def test_align_drops_the_past_and_refuses_a_stale_chunk():
    chunk = np.arange(8.0)[:, None]
    aligned = align_chunk(chunk, observation_tick=100, publish_tick=103)
    assert aligned.start_tick == 103 and aligned.points[:, 0].tolist() == [3, 4, 5, 6, 7]
    assert align_chunk(chunk, observation_tick=100, publish_tick=108) is None


def test_blend_ramps_from_old_to_new():
    old = Plan(0, np.zeros((10, 1)))
    new = Plan(4, np.ones((6, 1)))
    merged = blend(old, new, blend_steps=3)
    assert np.allclose(merged.points[:, 0], [0.25, 0.5, 0.75, 1, 1, 1])
    assert blend(None, new, 3) is new


@settings(max_examples=200, deadline=None)
@given(old_value=st.floats(-1, 1), new_value=st.floats(-1, 1), steps=st.integers(1, 5), offset=st.integers(0, 12))
def test_blend_boundary_jump_is_a_fraction_of_the_gap(old_value, new_value, steps, offset):
    """The first blended point moves at most 1/(steps+1) of the old-new gap: no jump at the boundary."""
    old = Plan(0, np.full((8, 1), old_value))
    new = Plan(offset, np.full((6, 1), new_value))
    merged = blend(old, new, steps)
    gap = abs(new_value - old_value)
    assert abs(merged.points[0, 0] - old.at(offset - 1)[0]) <= gap / (steps + 1) + 1e-9
    increments = np.abs(np.diff(np.concatenate([[old.at(offset - 1)[0]], merged.points[:, 0]])))
    assert np.all(increments <= gap / (steps + 1) + 1e-9)
