"""PolicyController rules with plain numbers: time is passed in, inference is a plain function."""

import numpy as np
import pytest

from ros_nodes.controller import ControllerConfig, GuardedCommandPublisher, PolicyController, clean_instruction
from ros_nodes.safety import SafetyGuard, SafetyLimits

JOINTS = ("j0", "j1")
DT = 0.1
LIMITS = SafetyLimits(lower=[-1, -1], upper=[1, 1], max_step=[0.1], max_velocity=[10.0], dt=DT)


def make(horizon=8, replan=4, dry_run=False):
    sent = []
    publisher = GuardedCommandPublisher(SafetyGuard(LIMITS), sent.append, lambda m: None, dry_run=dry_run)
    controller = PolicyController(ControllerConfig(JOINTS, ("cam",), control_hz=1 / DT, replan_steps=replan,
                                                   blend_steps=2, stale_image_s=0.5, stale_joint_state_s=0.5),
                                  publisher, t0=0.0)
    return controller, sent


def feed(controller, now, state=(0.0, 0.0)):
    # Two joint states per frame, as a robot publishing them faster than its camera: the first state
    # after a reset (start, a new instruction) must be confirmed by a second before it is used.
    for t in (now - 1e-3, now):
        controller.on_joint_state(np.array(state, np.float32), t)
    return controller.on_image("cam", np.zeros((4, 4, 3), np.uint8), now)


def ramp(request, horizon=8):
    """A policy that moves joint 0 toward +0.5 in steps of 0.05 from the observed state."""
    return request.state[None] + np.outer(np.arange(1, horizon + 1) * 0.05, [1.0, 0.0])


def test_nothing_is_planned_without_an_instruction():
    controller, sent = make()
    assert feed(controller, 0.0) is None and controller.tick(0.05) is None and sent == []


def test_first_chunk_then_replan_when_half_is_left():
    controller, sent = make()
    controller.on_instruction("pick up the red cube", 0.0)
    request = feed(controller, 0.01)
    assert request is not None and request.instruction == "pick up the red cube"
    assert feed(controller, 0.02) is None  # one request in flight at a time
    controller.on_result(request, ramp(request), now=0.03)
    assert [c.kind for c in sent] == ["chunk"] and len(sent[0].points) == 8
    # Ticks 1..3: more than 4 points remain, no new request; at tick 4, 4 are left: the next frame plans.
    for t in (0.1, 0.2, 0.3):
        assert feed(controller, t) is None
    assert controller.tick(0.4) is None  # the tick never plans by itself
    assert feed(controller, 0.42) is not None
    assert controller.metrics.starved_ticks == 0


def test_instruction_change_drops_in_flight_results():
    controller, sent = make()
    controller.on_instruction("pick up the red cube", 0.0)
    first = feed(controller, 0.01)
    controller.on_result(first, ramp(first), 0.05)
    replan = feed(controller, 0.42)  # half the chunk left: a re-plan for the same instruction
    assert replan is not None
    assert controller.on_instruction("push the blue block", 0.6)[1] == "applied"
    controller.on_result(replan, ramp(replan), 0.65)
    assert len(sent) == 1 and controller.metrics.dropped_results == 1


def test_stale_camera_holds_within_one_control_period_and_resumes():
    controller, sent = make()
    controller.on_instruction("go", 0.0)
    request = feed(controller, 0.0)
    controller.on_result(request, ramp(request), 0.01)
    controller.on_joint_state(np.array([0.02, 0.0], np.float32), 0.5)
    # The camera's last frame was at 0.0; it is stale after 0.5 s. The tick at 0.6 must hold.
    controller.tick(0.5)
    controller.on_joint_state(np.array([0.02, 0.0], np.float32), 0.5)
    replan = controller._maybe_request(0.5)  # half the chunk is left: a re-plan is due (no new frame: stale soon)
    assert sent[-1].kind == "chunk" and replan is not None
    controller.on_joint_state(np.array([0.02, 0.0], np.float32), 0.55)
    controller.tick(0.6)
    assert sent[-1].kind == "hold" and controller.mode == "hold"
    assert np.allclose(sent[-1].points, [[0.02, 0.0]])  # held where the robot is
    controller.on_result(replan, ramp(replan), 0.65)  # the re-plan finishing after the hold is dropped
    assert sent[-1].kind == "hold" and controller.metrics.dropped_results == 1
    n = len(sent)
    controller.tick(0.7)
    assert len(sent) == n  # planning stopped: nothing new
    assert feed(controller, 0.75) is None  # the first fresh frame: still in hold until the tick sees it
    controller.tick(0.8)
    assert controller.mode == "running" and feed(controller, 0.82) is not None


def test_estop_latches_until_reset():
    controller, sent = make()
    controller.on_instruction("go", 0.0)
    request = feed(controller, 0.0)
    controller.trip_estop("test", 0.05)
    controller.on_result(request, ramp(request), 0.06)
    assert [c.kind for c in sent] == ["hold"] and controller.mode == "estop"
    controller.on_instruction("go again", 0.1)  # a new instruction does not clear it
    assert feed(controller, 0.2) is None and controller.tick(0.2) is None and controller.mode == "estop"
    assert controller.reset_estop(0.3) and not controller.reset_estop(0.3)
    controller.tick(0.35)
    # The instruction given during the e-stop (and the one before it) was discarded: wait for a new one.
    assert controller.mode == "idle" and feed(controller, 0.36) is None
    assert controller.metrics.discarded_instructions == 1
    controller.on_instruction("go again", 0.4)
    assert feed(controller, 0.5) is not None


def test_non_finite_chunk_is_refused_with_a_hold():
    controller, sent = make()
    controller.on_instruction("go", 0.0)
    request = feed(controller, 0.0)
    chunk = ramp(request)
    chunk[3, 1] = np.nan
    controller.on_result(request, chunk, 0.01)
    assert [c.kind for c in sent] == ["hold"] and controller.metrics.unsafe_chunks == 1


def test_inference_error_stops_until_a_new_instruction():
    controller, sent = make()
    controller.on_instruction("x" * 200, 0.0)
    request = feed(controller, 0.0)
    controller.on_failure(request, ValueError("instruction: too many tokens"), 0.01)
    assert controller.mode == "error" and "too many tokens" in controller.status(0.01)["error"]
    assert feed(controller, 0.1) is None
    controller.on_instruction("go", 0.2)
    assert feed(controller, 0.25) is not None


def test_late_chunk_is_not_published():
    controller, sent = make()
    controller.on_instruction("go", 0.0)
    request = feed(controller, 0.0)
    controller.on_result(request, ramp(request), now=0.85)  # 8-point chunk, finished 8 ticks later
    assert sent == [] and controller.metrics.late_chunks == 1


def test_commands_are_guarded_and_dry_run_publishes_nothing():
    controller, sent = make()
    controller.on_instruction("go", 0.0)
    request = feed(controller, 0.0)
    controller.on_result(request, np.full((8, 2), 5.0), 0.01)  # far outside limits, huge steps
    points = sent[0].points
    assert np.all(np.abs(points) <= 1.0) and np.all(np.abs(np.diff(points, axis=0)) <= 0.1 + 1e-12)
    dry, dry_sent = make(dry_run=True)
    dry.on_instruction("go", 0.0)
    request = feed(dry, 0.0)
    dry.on_result(request, ramp(request), 0.01)
    assert dry_sent == [] and dry.metrics.chunks == 1


@pytest.mark.parametrize("text,match", [("", "empty"), ("   \n\t", "empty"), ("a" * 10_000, "at most")])
def test_bad_instructions(text, match):
    with pytest.raises(ValueError, match=match):
        clean_instruction(text, 256)


def test_instruction_control_characters_are_spaces():
    assert clean_instruction("  pick\x00up\x1b the cube \n", 256) == "pick up the cube"


def test_observation_error_holds_but_keeps_planning():
    controller, sent = make()
    controller.on_instruction("go", 0.0)
    request = feed(controller, 0.0)
    controller.on_failure(request, ValueError("images['cam']: expected (H, W, 3)"), 0.01)
    assert controller.mode == "running"
    assert feed(controller, 0.1) is not None
