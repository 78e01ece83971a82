"""policy_node under abuse: fuzzed messages, a camera that stops, the e-stop, dry-run.

A small "robot" in the test publishes camera frames and joint states at 10 Hz like sim_node would;
everything the node publishes on joint_trajectory is checked against the limits in launch/config/sim.yaml.
"""

import json
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import yaml
from diagnostic_msgs.msg import DiagnosticArray
from hypothesis import HealthCheck, given, settings, strategies as st
from rclpy.serialization import serialize_message
from sensor_msgs.msg import Image, JointState
from rcl_interfaces.srv import SetParameters
from std_msgs.msg import Bool, String
from trajectory_msgs.msg import JointTrajectory

from policy import MoTPolicy, PolicyConfig
from policy.checkpoint import save_checkpoint
from ros_nodes.ament import share_directory
from ros_nodes.convert import numpy_to_image, time_to_seconds
from ros_nodes.estop import reset_request
from ros_nodes.policy_node import PolicyNode

SIM_YAML = share_directory() / "config" / "sim.yaml"
PARAMS = yaml.safe_load(SIM_YAML.read_text())["policy_node"]["ros__parameters"]
JOINTS = PARAMS["joint_names"]
LOWER, UPPER = np.array(PARAMS["position_lower"]), np.array(PARAMS["position_upper"])
BOUND = np.minimum(np.array(PARAMS["max_step"]), np.array(PARAMS["max_velocity"]) / PARAMS["control_hz"])
DT = 1.0 / PARAMS["control_hz"]
HOME = np.array([0.0, 0.4, 1.5, 1.24, 0.0, 0.0, 0.08])


class FakeRobot:
    """Publishes frames on both cameras and a joint state every 0.1 s until told to stop a stream."""

    def __init__(self, ros):
        node = ros.node
        self.images = {c: node.create_publisher(Image, f"camera/{c}/image_raw", 10) for c in ("front", "wrist")}
        self.joints = node.create_publisher(JointState, "joint_states", 10)
        self.cameras_on = True
        self.last_image_time = 0.0
        self.frame = numpy_to_image(np.full((64, 64, 3), 128, np.uint8))
        self.position = HOME.copy()
        self.clock = node.get_clock()
        node.create_timer(DT, self.tick)

    def tick(self):
        stamp = self.clock.now().to_msg()
        if self.cameras_on:
            self.frame.header.stamp = stamp
            for publisher in self.images.values():
                publisher.publish(self.frame)
            self.last_image_time = time_to_seconds(stamp)
        joint_state = JointState(name=JOINTS, position=self.position.tolist())
        joint_state.header.stamp = stamp
        self.joints.publish(joint_state)


def start(ros, checkpoint, **overrides):
    """policy_node with sim.yaml (plus ``overrides``), a FakeRobot, and an instruction publisher.

    The e-stop latch and token files live in a fresh temporary directory (``node.state_dir``) unless
    given: a test never reads or writes the user's own latch.
    """
    state = Path(tempfile.mkdtemp(prefix="mot-policy-node-"))
    overrides = {"estop_latch_file": str(state / "estop.json"), "estop_token_file": str(state / "token"),
                 "lock_memory": "false", **overrides}
    args = ["--ros-args", "--params-file", str(SIM_YAML), "-p", f"checkpoint:={checkpoint}"]
    for key, value in overrides.items():
        args += ["-p", f"{key}:={value}"]
    node = ros.add(PolicyNode(cli_args=args, context=ros.context))
    node.state_dir = state
    robot = FakeRobot(ros)
    instruction = ros.node.create_publisher(String, "instruction", 10)
    ros.wait_subscribers(instruction)
    ros.wait_subscribers(robot.images["front"])
    return node, robot, instruction


def assert_safe(trajectories):
    for trajectory in trajectories:
        assert list(trajectory.joint_names) == JOINTS
        positions = np.array([p.positions for p in trajectory.points])
        assert np.all(np.isfinite(positions))
        assert np.all(positions >= LOWER - 1e-9) and np.all(positions <= UPPER + 1e-9), positions
        assert np.all(np.abs(np.diff(positions, axis=0)) <= BOUND + 1e-9)


def wait_for_every_hold(ros, node, trajectories):
    """Wait until every hold the node has published has reached our subscriber.

    Chunks published just before a latch can still be in flight when the test sees the mode change;
    one publisher -> one reliable reader keeps order, so once the latest hold has arrived, everything
    published before it has too.
    """
    ros.wait_for(lambda: sum(len(t.points) == 1 for t in trajectories) == node.controller.metrics.holds,
                 2, "every published hold")


def chunks(trajectories):
    return [t for t in trajectories if len(t.points) > 1]


# -- fuzzing ----------------------------------------------------------------------------------------
images = st.builds(
    lambda encoding, h, w, step, data: Image(encoding=encoding, height=h, width=w, step=step, data=data),
    st.sampled_from(["rgb8", "bgr8", "mono8", "16UC1", "", "RGB8", "yuv422"]), st.integers(0, 80),
    st.integers(0, 80), st.integers(0, 300), st.binary(max_size=4000))
joint_states = st.builds(
    lambda names, positions: JointState(name=names, position=positions),
    st.lists(st.sampled_from(JOINTS + ["unknown", "elbow2", ""]), max_size=9),
    st.lists(st.floats(allow_nan=True, allow_infinity=True), max_size=9))
texts = st.one_of(st.just(""), st.just(" \t\n"), st.just("x" * 10_240), st.text(max_size=64),
                  st.binary(min_size=1, max_size=64))


def raw_string(payload: bytes) -> bytes:
    """A serialized std_msgs/String carrying arbitrary (possibly non-UTF-8) bytes."""
    placeholder = b"\x01" * len(payload)
    return serialize_message(String(data=placeholder.decode())).replace(placeholder, payload)


def test_fuzzed_inputs_never_crash_or_produce_unsafe_commands(ros, tiny_checkpoint):
    # Hypothesis generates examples in this process's main thread, holding the GIL nearly all the time, and a
    # torch forward takes the GIL back after every op: one inference then took over 5 s (the default
    # inference_timeout_s), and the node rightly faulted. Input fuzzing is what this test is about; the
    # timeout fault has its own test (test_controller.py).
    node, robot, instruction = start(ros, tiny_checkpoint, inference_timeout_s=60.0)
    trajectories = ros.collect(JointTrajectory, "joint_trajectory")
    statuses = ros.collect(String, "policy/status")
    camera = robot.images["front"]
    instruction.publish(String(data="pick up the red cube"))
    ros.wait_for(lambda: len(chunks(trajectories)) >= 1, 20, "a first chunk")

    @settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
    @given(image=images, joint_state=joint_states, text=texts)
    def fuzz(image, joint_state, text):
        camera.publish(image)
        robot.joints.publish(joint_state)
        instruction.publish(raw_string(text) if isinstance(text, bytes) else String(data=text))
        time.sleep(0.01)

    fuzz()
    instruction.publish(String(data="pick up the red cube"))
    before = len(chunks(trajectories))
    ros.wait_for(lambda: len(chunks(trajectories)) > before + 2, 20, "planning to go on after the fuzzing")
    assert node.controller.metrics.rejected_messages > 30
    n_status = len(statuses)
    ros.wait_for(lambda: len(statuses) > n_status, 5, "the node to keep reporting status")
    assert_safe(trajectories)


def test_stale_camera_holds_within_one_control_period(ros, tiny_checkpoint):
    node, robot, instruction = start(ros, tiny_checkpoint)
    trajectories = ros.collect(JointTrajectory, "joint_trajectory")
    instruction.publish(String(data="pick up the red cube"))
    ros.wait_for(lambda: len(chunks(trajectories)) >= 2, 20, "chunks")
    # Only holds after the camera stops count: on a loaded machine a transient stale input during
    # start-up can already have produced one (held at the last command, not the measured position).
    off = len(trajectories)
    robot.cameras_on = False
    ros.wait_for(lambda: any(len(t.points) == 1 for t in trajectories[off:]), 5, "a hold")
    hold = next(t for t in trajectories[off:] if len(t.points) == 1)
    stale_at = robot.last_image_time + PARAMS["stale_image_s"]
    # The hold is stamped when the node decides it; the watchdog runs every control period.
    assert time_to_seconds(hold.header.stamp) - stale_at <= DT + 0.03
    assert np.allclose(hold.points[0].positions, HOME)  # held at the measured position
    n = len(trajectories)
    time.sleep(0.5)
    assert len(trajectories) == n, "planning stopped while the camera is stale"
    robot.cameras_on = True
    ros.wait_for(lambda: len(chunks(trajectories[n:])) >= 1, 10, "planning to resume")
    assert_safe(trajectories)


def call_reset(ros, token=None, parameters=None):
    """Call policy/reset_estop with ``token`` (or raw ``parameters``) -> SetParametersResult."""
    client = ros.node.create_client(SetParameters, "policy/reset_estop")
    assert client.wait_for_service(timeout_sec=5)
    request = reset_request(token) if parameters is None else SetParameters.Request(parameters=parameters)
    done = threading.Event()
    future = client.call_async(request)
    future.add_done_callback(lambda f: done.set())
    assert done.wait(5)
    ros.node.destroy_client(client)
    return future.result().results[0]


def test_estop_reset_needs_the_token_and_then_waits_for_a_new_instruction(ros, tiny_checkpoint):
    node, robot, instruction = start(ros, tiny_checkpoint)
    trajectories = ros.collect(JointTrajectory, "joint_trajectory")
    estop = ros.node.create_publisher(Bool, "estop", 10)
    ros.wait_subscribers(estop)
    instruction.publish(String(data="pick up the red cube"))
    ros.wait_for(lambda: len(chunks(trajectories)) >= 1, 20, "chunks")
    estop.publish(Bool(data=True))
    ros.wait_for(lambda: node.controller.mode == "estop", 2, "the latch")
    wait_for_every_hold(ros, node, trajectories)
    n = len(trajectories)
    estop.publish(Bool(data=False))  # does not clear it
    instruction.publish(String(data="push the blue block"))  # neither does a new instruction: it is discarded
    ros.wait_for(lambda: node.controller.metrics.discarded_instructions == 1, 5, "the instruction to be discarded")
    # Anyone on the domain may call the service; without the operator's token it refuses.
    assert not call_reset(ros, parameters=[]).successful
    refused = call_reset(ros, "not-the-token-0123456789")
    assert not refused.successful and "wrong token" in refused.reason
    assert node.controller.mode == "estop" and node.controller.metrics.refused_resets == 2
    assert all(len(t.points) == 1 for t in trajectories[n - 1:]), "only holds while latched"
    token = (node.state_dir / "token").read_text().strip()
    assert call_reset(ros, token).successful
    assert node.controller.mode == "idle"
    n = len(trajectories)
    time.sleep(1.0)  # the instruction that arrived during the e-stop is not executed
    assert chunks(trajectories[n:]) == [] and node.controller.mode == "idle"
    instruction.publish(String(data="pick up the red cube"))
    ros.wait_for(lambda: len(chunks(trajectories[n:])) >= 1, 10, "planning after a new instruction")
    assert_safe(trajectories)


def test_a_restart_while_latched_stays_latched(ros, tiny_checkpoint):
    node, robot, instruction = start(ros, tiny_checkpoint)
    estop = ros.node.create_publisher(Bool, "estop", 10)
    ros.wait_subscribers(estop)
    estop.publish(Bool(data=True))
    ros.wait_for(lambda: node.controller.mode == "estop", 5, "the latch")
    files = {"estop_latch_file": str(node.state_dir / "estop.json"), "estop_token_file": str(node.state_dir / "token")}
    ros.retire(node)  # the process would exit here; the latch is on disk
    restarted, _, instruction = start(ros, tiny_checkpoint, **files)
    trajectories = ros.collect(JointTrajectory, "joint_trajectory")
    assert restarted.controller.mode == "estop" and restarted.controller.estop.reason == "estop topic"
    instruction.publish(String(data="pick up the red cube"))
    ros.wait_for(lambda: restarted.controller.metrics.discarded_instructions == 1, 5, "the instruction discarded")
    time.sleep(0.5)
    assert chunks(trajectories) == []


def test_dry_run_publishes_no_command(ros, tiny_checkpoint):
    node, robot, instruction = start(ros, tiny_checkpoint, dry_run="true")
    trajectories = ros.collect(JointTrajectory, "joint_trajectory")
    instruction.publish(String(data="pick up the red cube"))
    ros.wait_for(lambda: node.controller.metrics.chunks >= 3, 20, "planned (logged) chunks")
    robot.cameras_on = False
    ros.wait_for(lambda: node.controller.mode == "hold", 5, "a (logged) hold")
    assert trajectories == []


@pytest.fixture(scope="module")
def pointing_checkpoint(tmp_path_factory):
    """A tiny checkpoint that points, then acts: its target points come from its own grounding head."""
    policy = MoTPolicy(PolicyConfig.preset("tiny"))
    policy.set_target_points("model")
    return save_checkpoint(policy, tmp_path_factory.mktemp("ckpt") / "pointing")


def test_a_target_points_checkpoint_plans_with_no_pointer_parameter(ros, pointing_checkpoint):
    """The checkpoint alone: the node hands the runner the robot's 7 joints, the policy points itself, and
    where it pointed (with its confidence) is reported on policy/status and /diagnostics."""
    node, robot, instruction = start(ros, pointing_checkpoint)
    assert node.runner.robot_state_dim == 7 and node.runner.config.state_dim == 15
    trajectories = ros.collect(JointTrajectory, "joint_trajectory")
    statuses = ros.collect(String, "policy/status")
    reports = ros.collect(DiagnosticArray, "/diagnostics")
    instruction.publish(String(data="put the red cube on the blue pad"))
    ros.wait_for(lambda: len(chunks(trajectories)) >= 2, 30, "planned chunks")
    assert node.runner.last_points.shape == (8,)
    ros.wait_for(lambda: any("pointing" in json.loads(m.data) for m in statuses), 5, "a status with the points")
    pointing = next(json.loads(m.data)["pointing"] for m in reversed(statuses) if "pointing" in json.loads(m.data))
    assert set(pointing) == {"front", "wrist"}
    for point in pointing.values():
        assert all(0.0 <= x <= 1.0 for x in point["object_uv"] + point["pad_uv"])
        assert 0.0 < point["object_confidence"] <= 1.0 and 0.0 < point["pad_confidence"] <= 1.0
    ros.wait_for(lambda: any(kv.key == "pointing/front/object_uv" for r in reports for s in r.status for kv in s.values),
                 5, "/diagnostics with the points")
    assert_safe(trajectories)


def test_the_retired_points_from_parameter_stops_the_node_at_start(ros, pointing_checkpoint, tmp_path):
    trajectories = ros.collect(JointTrajectory, "joint_trajectory")
    with pytest.raises(ValueError, match=r"points_from: retired, the checkpoint points itself .* received '/runs/align'"):
        start(ros, pointing_checkpoint, points_from="/runs/align")
    assert trajectories == []
