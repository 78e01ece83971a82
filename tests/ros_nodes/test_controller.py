"""PolicyController rules with plain numbers: time is passed in, inference is a plain function."""

import numpy as np
import pytest

from ros_nodes.controller import PolicyController
from ros_nodes.controller_config import ControllerConfig, clean_instruction
from ros_nodes.guarded_publisher import GuardedCommandPublisher
from ros_nodes.safety import EStopLatch, SafetyGuard, SafetyLimits

JOINTS = ("j0", "j1")
DT = 0.1
LIMITS = SafetyLimits(lower=[-1, -1], upper=[1, 1], max_step=[0.1], max_velocity=[10.0], dt=DT)


def make(horizon=8, replan=4, dry_run=False, estop=None, **config):
    sent = []
    publisher = GuardedCommandPublisher(SafetyGuard(LIMITS), sent.append, lambda m: None, dry_run=dry_run)
    controller = PolicyController(ControllerConfig(JOINTS, ("cam",), control_hz=1 / DT, replan_steps=replan,
                                                   blend_steps=2, stale_image_s=0.5, stale_joint_state_s=0.5,
                                                   **config),
                                  publisher, t0=0.0, estop=estop)
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


# -- issue 19: what a robot integrator measured ---------------------------------------------------------
STAMPED = dict(require_stamps=True, max_input_age=0.25)


def drive(controller, start, end, *, state=lambda t: (0.0, 0.0), stamp=lambda t: t, pixels=lambda t: int(t * 20) % 256,
          instruction=lambda t: None, inference_s=0.15):
    """Run the controller as the node would: a joint state every 0.05 s, a frame and a control tick every
    0.1 s, each inference result ``inference_s`` after its request (the ``ramp`` policy)."""
    in_flight = []
    for step in range(round(start / 0.05), round(end / 0.05)):
        t = step * 0.05
        for due, request in [job for job in in_flight if job[0] <= t + 1e-9]:
            in_flight.remove((due, request))
            controller.on_result(request, ramp(request), t, inference_s)
        if (text := instruction(t)) is not None:
            controller.on_instruction(text, t)
        controller.on_joint_state(np.array(state(t), np.float32), t, stamp(t))
        if step % 2 == 0:
            request = controller.on_image("cam", np.full((4, 4, 3), pixels(t), np.uint8), t, stamp(t))
            if request is not None:
                in_flight.append((t + inference_s, request))
            controller.tick(t)


def test_an_impossible_joint_state_is_rejected_and_held_not_driven_to():
    """1e6 rad on joint 0 for 4 s: rejected, one hold at the last believable state, no chunk, never
    a command toward the limit; planning resumes once the readings are believable again."""
    controller, sent = make(**STAMPED)
    controller.on_instruction("go", 0.0)
    drive(controller, 0.0, 2.0)
    assert sum(c.kind == "chunk" for c in sent) >= 3
    n = len(sent)
    drive(controller, 2.0, 6.0, state=lambda t: (1e6, 0.0))
    during = sent[n:]
    assert [c.kind for c in during] == ["hold"] and np.allclose(during[0].points, [[0.0, 0.0]])
    assert controller.mode == "hold" and controller.metrics.rejections["out_of_range"] == 80
    assert "outside the limits" in controller.status(6.0)["last_rejection"]["out_of_range"]
    drive(controller, 6.0, 8.0)
    assert controller.mode == "running" and any(c.kind == "chunk" for c in sent[n + 1:])


def test_a_joint_state_jump_holds():
    controller, sent = make(**STAMPED, joint_speed_limit=(2.0, 2.0))
    controller.on_instruction("go", 0.0)
    drive(controller, 0.0, 1.0)
    n = len(sent)
    drive(controller, 1.0, 1.05, state=lambda t: (0.9, 0.0))  # 0.9 rad in 0.05 s: faster than 2 rad/s
    assert [c.kind for c in sent[n:]] == ["hold"] and controller.metrics.rejections["jump"] == 1
    drive(controller, 1.05, 1.5)  # believable again, but not yet for a staleness period: still holding
    assert [c.kind for c in sent[n:]] == ["hold"] and controller.mode == "hold"
    drive(controller, 1.5, 2.5)
    assert controller.mode == "running"


def test_frames_stamped_in_the_past_hold_and_never_plan():
    controller, sent = make(**STAMPED)
    controller.on_instruction("go", 20.0)
    drive(controller, 20.0, 22.0, stamp=lambda t: t - 10.0)  # every input stamped 10 s ago
    assert sent == [] and controller.metrics.rejections["stamp_age"] == 60
    drive(controller, 22.0, 23.0)
    assert any(c.kind == "chunk" for c in sent)
    n = len(sent)
    drive(controller, 23.0, 24.5, stamp=lambda t: t - 10.0)
    assert [c.kind for c in sent[n:]] == ["hold"] and controller.mode == "hold"


def held_for_good(sent, n):
    """After index n: at most the chunks already planned, then one hold, then nothing but holds."""
    kinds = [c.kind for c in sent[n:]]
    return "hold" in kinds and "chunk" not in kinds[kinds.index("hold"):]


def test_frozen_frames_hold():
    controller, sent = make(**STAMPED, max_frozen_s=0.5)
    controller.on_instruction("go", 0.0)
    drive(controller, 0.0, 1.0)
    n = len(sent)
    drive(controller, 1.0, 3.0, pixels=lambda t: 7)  # fresh stamps, identical frames: a frozen driver
    assert held_for_good(sent, n) and controller.mode == "hold" and controller.metrics.rejections["frozen"] > 0
    # It held within max_frozen_s + stale_image_s (+ a tick) of the last changing frame.
    assert next(c for c in sent[n:] if c.kind == "hold").start_time <= 1.0 + 0.5 + 0.5 + 0.1 + 1e-9
    drive(controller, 3.0, 4.0)
    n = len(sent)
    drive(controller, 4.0, 5.5, stamp=lambda t: 4.0)  # a frozen stamp: every frame is "the same message"
    assert held_for_good(sent, n) and controller.metrics.rejections["out_of_order"] > 0


def test_an_instruction_flood_still_plans():
    """5 Hz instructions for 8 s (two texts alternating): latest wins, chunks keep coming."""
    controller, sent = make(**STAMPED)
    texts = ["pick up the red cube", "push the blue block"]
    drive(controller, 0.0, 8.0, instruction=lambda t: texts[round(t / 0.2) % 2] if round(t / 0.05) % 4 == 0 else None,
          inference_s=0.3)
    assert sum(c.kind == "chunk" for c in sent) >= 8
    assert controller.metrics.superseded_instructions > 10


def test_a_repeated_instruction_changes_nothing():
    controller, sent = make(**STAMPED)
    drive(controller, 0.0, 4.0, instruction=lambda t: "go" if round(t / 0.05) % 4 == 0 else None)
    assert controller.metrics.repeated_instructions == 19 and controller.metrics.dropped_results == 0
    assert sum(c.kind == "chunk" for c in sent) >= 5


def test_a_restart_while_latched_stays_latched(tmp_path):
    path = tmp_path / "estop.json"
    controller, sent = make(estop=EStopLatch(path))
    controller.on_instruction("go", 0.0)
    controller.trip_estop("estop topic", 0.1)
    restarted, sent = make(estop=EStopLatch(path))  # a new process reads the latch back
    assert restarted.mode == "estop" and restarted.estop.reason == "estop topic"
    assert restarted.on_instruction("go", 0.2)[1] == "discarded (e-stop latched)"
    assert feed(restarted, 0.3) is None and sent == []
    assert restarted.reset_estop(0.4) and not make(estop=EStopLatch(path))[0].estop.tripped


@pytest.mark.parametrize("content", ["{not json", '{"latched": "no"}', "[]"])
def test_an_unreadable_latch_file_counts_as_latched(tmp_path, content):
    path = tmp_path / "estop.json"
    path.write_text(content)
    latch = EStopLatch(path)
    assert latch.tripped and "unreadable" in latch.reason


def test_a_latch_that_cannot_be_written_still_latches_and_says_so(tmp_path):
    (tmp_path / "a_file").write_text("")
    latch = EStopLatch(tmp_path / "a_file" / "estop.json")  # its directory cannot exist
    assert latch.trip("test") and latch.tripped and "cannot write" in latch.persist_error


def test_a_worker_fault_holds_and_stays_until_restart():
    controller, sent = make()
    controller.on_instruction("go", 0.0)
    request = feed(controller, 0.0)
    controller.on_result(request, ramp(request), 0.01)
    controller.on_fault("inference worker: RuntimeError: boom", 0.2)
    assert sent[-1].kind == "hold" and controller.mode == "fault"
    assert controller.status(0.2)["fault"] == "inference worker: RuntimeError: boom"
    assert controller.on_instruction("go again", 0.3)[1] == "discarded (fault)"
    controller.tick(0.4)
    assert feed(controller, 0.5) is None and sent[-1].kind == "hold"


def test_a_hung_inference_is_a_fault():
    controller, sent = make(inference_timeout_s=1.0)
    controller.on_instruction("go", 0.0)
    request = feed(controller, 0.0)
    for t in np.arange(0.1, 1.0, 0.1):
        feed(controller, t)
        controller.tick(t)
    assert controller.mode == "running"
    feed(controller, 1.1)
    controller.tick(1.1)
    assert controller.mode == "fault" and "has not returned" in controller.fault and sent[-1].kind == "hold"
    controller.on_result(request, ramp(request), 1.2)  # it returns after all: dropped
    assert [c.kind for c in sent] == ["hold"]


def test_shutdown_publishes_a_final_hold_and_nothing_after():
    controller, sent = make()
    controller.on_instruction("go", 0.0)
    request = feed(controller, 0.0)
    controller.on_result(request, ramp(request), 0.01)
    replan = feed(controller, 0.42)
    controller.shutdown(0.45)
    assert [c.kind for c in sent] == ["chunk", "hold"] and controller.mode == "stopped"
    controller.on_result(replan, ramp(replan), 0.5)
    controller.trip_estop("late", 0.6)
    assert [c.kind for c in sent] == ["chunk", "hold"]
