"""policy_node: camera frames + joint state + instruction -> safe JointTrajectory chunks.

Topics (names relative, so a namespace or remap moves them):

    sub  camera/<camera>/image_raw   sensor_msgs/Image          one per camera the checkpoint uses
    sub  joint_states                 sensor_msgs/JointState
    sub  instruction                  std_msgs/String            typed (`mot say`) or spoken (audio_node)
    sub  estop                        std_msgs/Bool              True latches the e-stop
    pub  joint_trajectory             trajectory_msgs/JointTrajectory   chunks and holds, always guarded
    pub  policy/status                std_msgs/String (JSON)     mode, e-stop, stale inputs, latency, and
                                                                 where the policy pointed ("pointing")
    pub  /diagnostics                 diagnostic_msgs/DiagnosticArray   the same, for ros2 tools (1 Hz)
    srv  policy/reset_estop           rcl_interfaces/SetParameters      the only way out of an e-stop:
                                      one string parameter ``token`` holding the operator's token

The node owns parameters, topics and threads only; ``ros_nodes.controller.PolicyController`` decides
what to do and ``ros_nodes.guarded_publisher.GuardedCommandPublisher`` (the only holder of the
trajectory publisher) guards it.
Inference runs on a dedicated worker thread, never on an executor thread, so callbacks and the
control tick stay on time while the model thinks. The worker never dies silently: an exception
outside the model, a dead thread or a hung inference call is a fault (hold, mode "fault", ERROR on
/diagnostics). ``close()`` (SIGINT/SIGTERM through ``run_node`` / `mot stack`) publishes a final hold.
With ``trusted_key`` (an ed25519 public key) the node does not start on a checkpoint that key did not sign.
The checkpoint directory is all the node needs: a policy trained with target points points at the
instruction's object and pad itself (its grounding head is part of the checkpoint, so the signature
covers it); the node reports those points and their confidence on policy/status and /diagnostics, and
they never change what is published or how it is guarded.
"""

from __future__ import annotations

import queue
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
from diagnostic_msgs.msg import DiagnosticArray
from rcl_interfaces.msg import SetParametersResult
from rcl_interfaces.srv import SetParameters
from rclpy.callback_groups import ReentrantCallbackGroup
from rclpy.duration import Duration
from rclpy.exceptions import ParameterUninitializedException
from rclpy.node import Node
from rclpy.parameter import Parameter
from sensor_msgs.msg import Image, JointState
from std_msgs.msg import Bool, String
from trajectory_msgs.msg import JointTrajectory

from policy.runtime import PolicyRunner
from policy.signing import key_id, resolve_trusted_key
from ros_nodes.common import (IMAGE_QOS, RELIABLE_QOS, check_cpu_dma_latency, check_nice, decode_string,
                               hold_cpu_dma_latency, json_string, lock_process_memory, now_s, run_node,
                               set_thread_nice, thread_ids)
from ros_nodes.controller import PolicyController
from ros_nodes.controller_config import ControllerConfig, Inference, Request
from ros_nodes.convert import (chunk_to_trajectory, fit_image, image_to_numpy, joint_state_to_vector,
                               seconds_to_time, time_to_seconds)
from ros_nodes.diagnostics import diagnostic_array, pointing_status
from ros_nodes.estop import ensure_token, token_file_warning, token_from_request, token_matches
from ros_nodes.guarded_publisher import Command, GuardedCommandPublisher
from ros_nodes.safety import EStopLatch, SafetyGuard, SafetyLimits

# Every parameter the node declares. A ``Parameter.Type`` means "required, no default": the node
# refuses to start without it, because a joint limit or a checkpoint has no safe default.
PARAMETERS: dict[str, Any] = {
    "checkpoint": "",  # checkpoint directory (policy.MoTPolicy.save); required unless a runner is passed in
    "backend": "torch",  # torch | onnxruntime | tensorrt
    # ed25519 public key PEM the checkpoint's manifest.sig must verify with (`mot pack --sign`); "": $MOT_TRUSTED_KEY,
    # else nothing is checked. A robot sets it: the node then refuses to start on an unsigned or mis-signed checkpoint.
    "trusted_key": "",
    "cameras": Parameter.Type.STRING_ARRAY,  # unset: the checkpoint's cameras
    "camera_topic": "camera/{camera}/image_raw",
    "image_size": 0,  # frames are resized to (image_size, image_size); 0: the checkpoint's size
    "joint_names": Parameter.Type.STRING_ARRAY,
    "position_lower": Parameter.Type.DOUBLE_ARRAY,
    "position_upper": Parameter.Type.DOUBLE_ARRAY,
    "max_step": [0.05],  # per control step; one value for all joints or one per joint
    "max_velocity": [1.0],  # per second; one value for all joints or one per joint
    "control_hz": 10.0,
    "replan_steps": -1,  # re-plan when this many planned points remain; -1: half the horizon
    "blend_steps": 2,
    "stale_image_s": 0.5,
    "stale_joint_state_s": 0.5,
    # Input plausibility (ros_nodes.plausibility): header stamps against this node's clock.
    "max_input_age": 0.25,  # an image / joint state stamped further than this from now is dropped (s)
    "require_stamps": True,  # drop unstamped images / joint states
    "max_frozen_s": 1.0,  # identical camera frames for longer than this: frozen camera (0: off)
    "joint_limit_margin": [0.05],  # a joint state this far outside position_lower/upper is a fault
    "joint_speed_limit": Parameter.Type.DOUBLE_ARRAY,  # fastest real motion per joint; unset: 2 x max_velocity
    "joint_jump_tolerance": [0.05],  # slack on top of speed x time between two joint states
    "max_instruction_chars": 256,
    "instruction_debounce_s": 0.5,  # a new instruction replaces the current one at most this often
    "inference_timeout_s": 5.0,  # an inference call that takes longer is a fault
    # E-stop: the latch survives a restart; the reset service needs the token in estop_token_file.
    "estop_latch_file": "~/.local/state/mot_policy/{node}.estop.json",  # "": in memory only (not for robots)
    "estop_token_file": "~/.config/mot_policy/estop_token",  # created (0600) if missing; "": resets refused
    "dry_run": False,
    "status_hz": 2.0,
    "diagnostics_hz": 1.0,
    "lock_memory": False,  # mlockall once loaded (no page-fault stalls); the launch YAMLs turn it on
    # Nice value of inference (the worker thread and the backend's pool): lower runs first when the cores are
    # contended (camera drivers, a simulator). 0: normal; negative needs CAP_SYS_NICE; the launch YAMLs use -10.
    "inference_nice": 0,
    # Linux PM QoS: the most (microseconds) an idle CPU may take to wake, held while the node runs; -1: the system's.
    # 0 keeps idle CPUs polling: in a VM a halted vCPU woke the loop up to 800 ms late (sim.yaml sets 0).
    "cpu_dma_latency_us": -1,
}
# Parameters of earlier versions, with why they went: set to anything but "", the node refuses to start (an
# operator who names one expects something this node no longer does); "" (an old YAML's default) is accepted.
RETIRED_PARAMETERS: dict[str, str] = {
    "points_from": "the checkpoint points itself (format mot-policy/2: its grounding head is in the checkpoint, "
                   "no align run or pointer beside it)",
}


def _read_parameters(node: Node) -> dict[str, Any]:
    values = {}
    for name, default in PARAMETERS.items():
        node.declare_parameter(name, default)
        try:
            values[name] = node.get_parameter(name).value
        except ParameterUninitializedException:
            values[name] = None
    for name, why in RETIRED_PARAMETERS.items():
        value = node.declare_parameter(name, "").value
        if value not in ("", None):
            raise ValueError(f"{name}: retired, {why}; expected it unset, received {value!r}")
    return values


def _stamp(msg) -> float | None:
    """header.stamp in seconds, None when unset (0)."""
    seconds = time_to_seconds(msg.header.stamp)
    return seconds if seconds > 0 else None


class PolicyNode(Node):
    def __init__(self, runner: Inference | None = None, **node_kwargs) -> None:
        super().__init__("policy_node", **node_kwargs)
        p = _read_parameters(self)
        self._nice = check_nice(p["inference_nice"])
        wake_latency = check_cpu_dma_latency(p["cpu_dma_latency_us"])
        before = thread_ids()
        if runner is None:
            runner = self._load_runner(p)
        self._backend_threads = thread_ids() - before  # the backend's pool threads, created with its sessions
        self.runner = runner
        if p["lock_memory"]:  # after loading: the weights and the backend's code are resident now
            lock_process_memory(self.get_logger().warning)
        # Released by close(), or by the kernel when the process ends however it ends.
        self._wake_latency = (hold_cpu_dma_latency(wake_latency, self.get_logger().warning)
                              if wake_latency >= 0 else None)
        self.cpu_dma_latency_us = wake_latency if self._wake_latency is not None else None  # held, if any
        model = getattr(runner, "config", None)
        cameras = tuple(p["cameras"] or (model.cameras if model else ()))
        joint_names = tuple(p["joint_names"] or ())
        for name in ("joint_names", "position_lower", "position_upper"):
            if not p[name]:
                raise ValueError(f"{name}: expected a non-empty list parameter (the safety layer needs it), received none")
        # The robot's state: the checkpoint's, less the target points the policy appends itself (PolicyRunner).
        state_dim = getattr(runner, "robot_state_dim", model.state_dim if model is not None else 0)
        if model is not None and not (state_dim == model.action_dim == len(joint_names)):
            raise ValueError(f"joint_names: expected {state_dim} names (the checkpoint's state/action dim), "
                             f"received {len(joint_names)}")
        if model is not None and set(cameras) != set(model.cameras):
            raise ValueError(f"cameras: expected the checkpoint's cameras {list(model.cameras)}, received {list(cameras)}")
        horizon = model.horizon if model else 10
        replan = p["replan_steps"] if p["replan_steps"] > 0 else max(1, horizon // 2)
        self.joint_names = joint_names
        self.image_size = p["image_size"] or (model.image_size if model else 0)
        self.config = ControllerConfig(
            joint_names=joint_names, cameras=cameras, control_hz=p["control_hz"], replan_steps=replan,
            blend_steps=p["blend_steps"], stale_image_s=p["stale_image_s"], stale_joint_state_s=p["stale_joint_state_s"],
            max_instruction_chars=p["max_instruction_chars"], max_input_age=p["max_input_age"],
            max_frozen_s=p["max_frozen_s"], require_stamps=p["require_stamps"],
            joint_limit_margin=tuple(p["joint_limit_margin"]), joint_speed_limit=tuple(p["joint_speed_limit"] or ()),
            joint_jump_tolerance=tuple(p["joint_jump_tolerance"]), instruction_debounce_s=p["instruction_debounce_s"],
            inference_timeout_s=p["inference_timeout_s"])
        limits = SafetyLimits(lower=p["position_lower"], upper=p["position_upper"], max_step=p["max_step"],
                              max_velocity=p["max_velocity"], dt=self.config.dt)
        if limits.dim != len(joint_names):
            raise ValueError(f"position_lower: expected {len(joint_names)} values (one per joint), received {limits.dim}")

        log = self.get_logger()
        # E-stop latch file ({node}: this node's fully qualified name, so two arms on one computer do
        # not share a latch) and the operator's token for the reset service.
        latch_file = p["estop_latch_file"].format(node=self.get_fully_qualified_name().strip("/").replace("/", "."))
        if not latch_file:
            log.warning("estop_latch_file is empty: the e-stop latch lives in memory and a restart clears it")
        estop = EStopLatch(latch_file or None)
        self._token: bytes | None = None
        if p["estop_token_file"]:
            self._token, created = ensure_token(p["estop_token_file"])
            if created:
                log.warning(f"created the e-stop reset token file {Path(p['estop_token_file']).expanduser()} (0600)")
            if warning := token_file_warning(p["estop_token_file"]):
                log.warning(warning)
        else:
            log.warning("estop_token_file is empty: policy/reset_estop refuses every call")

        # The trajectory publisher is captured by this closure and handed only to the guarded
        # publisher: no other code in the node can reach it (close() only waits for its acks).
        trajectory_pub = self.create_publisher(JointTrajectory, "joint_trajectory", RELIABLE_QOS)
        self._wait_for_commands_acked = trajectory_pub.wait_for_all_acked

        def publish(command: Command) -> None:
            trajectory_pub.publish(chunk_to_trajectory(command.points, joint_names, seconds_to_time(command.start_time),
                                                       self.config.dt))

        self.commands = GuardedCommandPublisher(SafetyGuard(limits), publish, log.info, dry_run=p["dry_run"])
        self.controller = PolicyController(self.config, self.commands, t0=now_s(self), log=log.warning, estop=estop)
        self._status_pub = self.create_publisher(String, "policy/status", RELIABLE_QOS)
        # Absolute: /diagnostics is one topic per robot, whatever namespace the node runs in.
        self._diagnostics_pub = self.create_publisher(DiagnosticArray, "/diagnostics", 10)
        self._reported_rejections = 0
        self._diagnostic_name = f"{self.get_name()}: policy"
        self._hardware_id = str(p["checkpoint"] or type(runner).__name__)
        self._cameras = tuple(model.cameras) if model is not None else cameras  # the order of the runner's points
        self._pointing: dict = {}  # where the policy pointed on its latest plan (set by the worker, read by timers)

        # One reentrant group: callbacks may overlap on the executor's threads; the controller's lock
        # serialises what must be serialised, and the slow work (inference) is not on these threads.
        group = ReentrantCallbackGroup()
        for camera in cameras:
            topic = p["camera_topic"].format(camera=camera)
            self.create_subscription(Image, topic, lambda msg, c=camera: self._on_image(c, msg), IMAGE_QOS,
                                     callback_group=group)
        self.create_subscription(JointState, "joint_states", self._on_joint_state, IMAGE_QOS, callback_group=group)
        # raw=True: we deserialize ourselves so non-UTF-8 bytes are a logged drop, not an executor crash
        # (nor, as rclpy would decode them, an instruction made of U+FFFD).
        self.create_subscription(String, "instruction", self._on_instruction, RELIABLE_QOS, callback_group=group,
                                 raw=True)
        self.create_subscription(Bool, "estop", self._on_estop, RELIABLE_QOS, callback_group=group)
        self.create_service(SetParameters, "policy/reset_estop", self._on_reset, callback_group=group)
        self.create_timer(self.config.dt, self._on_tick, callback_group=group)
        self.create_timer(1.0 / p["status_hz"], self._publish_status, callback_group=group)
        self.create_timer(1.0 / p["diagnostics_hz"], self._publish_diagnostics, callback_group=group)

        self._closing = False
        self._jobs: queue.Queue[Request | None] = queue.Queue()
        self._worker = threading.Thread(target=self._work, name="policy-inference", daemon=True)
        self._worker.start()
        self.get_logger().info(f"policy_node ready: cameras {list(cameras)}, joints {list(joint_names)}, "
                               f"{self.config.control_hz} Hz, replan at {replan} points left, dry_run={p['dry_run']}, "
                               f"e-stop latch {latch_file or '(memory)'}")

    def _load_runner(self, p: dict[str, Any]) -> PolicyRunner:
        """The checkpoint's runner; with a trusted key, only after its signature verified (else the node
        does not start: CheckpointError naming the checkpoint and the key)."""
        if not p["checkpoint"]:
            raise ValueError("checkpoint: expected a checkpoint directory parameter, received ''")
        trusted = resolve_trusted_key(p["trusted_key"] or None)  # "" -> $MOT_TRUSTED_KEY, unset -> None
        log = self.get_logger()
        if trusted is None:
            log.warning("trusted_key is empty (and $MOT_TRUSTED_KEY unset): the checkpoint's signature is not "
                        "checked; a robot must set trusted_key")
        checked = f", checking its signature with key {key_id(trusted)}" if trusted is not None else ""
        log.info(f"loading {p['checkpoint']} (backend {p['backend']}{checked})")
        return PolicyRunner.from_checkpoint(p["checkpoint"], backend=p["backend"], trusted_key=trusted)

    # -- callbacks: convert, validate, hand to the controller; a bad message is logged and dropped ----
    def _reject(self, what: str, exc: Exception) -> None:
        message = str(exc) if str(exc).startswith(what) else f"{what}: {exc}"
        self.controller.reject("malformed", message, now_s(self))

    def _on_image(self, camera: str, msg: Image) -> None:
        try:
            image = image_to_numpy(msg)
            if self.image_size:
                image = fit_image(image, self.image_size)
        except ValueError as exc:
            return self._reject(f"image from {camera}", exc)
        self._submit(self.controller.on_image(camera, image, now_s(self), _stamp(msg)))

    def _on_joint_state(self, msg: JointState) -> None:
        try:
            state = joint_state_to_vector(msg, self.joint_names)
        except ValueError as exc:
            return self._reject("joint state", exc)
        self.controller.on_joint_state(state, now_s(self), _stamp(msg))

    def _on_instruction(self, raw: bytes) -> None:
        try:
            text, outcome = self.controller.on_instruction(decode_string(raw), now_s(self))
        except (ValueError, TypeError) as exc:
            return self._reject("instruction", exc)
        self.get_logger().info(f"instruction {text!r}: {outcome}")

    def _on_estop(self, msg: Bool) -> None:
        if msg.data:
            self.controller.trip_estop("estop topic", now_s(self))
        else:
            self.get_logger().info("estop False ignored: the e-stop clears only through policy/reset_estop",
                                   throttle_duration_sec=5.0)

    def _on_reset(self, request: SetParameters.Request, response: SetParameters.Response) -> SetParameters.Response:
        token = token_from_request(request)
        if self._token is None:
            ok, reason = False, "refused: no estop_token_file is configured on the node"
        elif token is None:
            ok, reason = False, "refused: expected exactly one string parameter 'token'"
        elif not token_matches(self._token, token):
            ok, reason = False, "refused: wrong token"
        else:
            ok = self.controller.reset_estop(now_s(self))
            reason = "e-stop reset; send a new instruction" if ok else "e-stop was not latched"
        if not ok and reason.startswith("refused"):
            self.controller.metrics.refused_resets += 1
            self.get_logger().warning(f"policy/reset_estop {reason}")
        response.results = [SetParametersResult(successful=ok, reason=reason)]
        return response

    def _on_tick(self) -> None:
        now = now_s(self)
        if not self._worker.is_alive() and not self._closing:
            self.controller.on_fault("the inference worker thread has died", now)
        self.controller.tick(now)

    def _status(self) -> dict:
        status = self.controller.status(now_s(self))
        if self._pointing:
            status["pointing"] = self._pointing
        return status

    def _publish_status(self) -> None:
        self._status_pub.publish(json_string(self._status()))

    def _publish_diagnostics(self) -> None:
        status = self._status()
        new = status["rejected_messages"] - self._reported_rejections
        self._reported_rejections = status["rejected_messages"]
        self._diagnostics_pub.publish(diagnostic_array(self._diagnostic_name, self._hardware_id, status, new,
                                                       self.get_clock().now().to_msg()))

    # -- inference worker --------------------------------------------------------------------------
    def _submit(self, request: Request | None) -> None:
        if request is not None:
            self._jobs.put(request)

    def _work(self) -> None:
        if self._nice:  # this thread (and any thread it starts) and the backend's pool; a refusal is logged
            set_thread_nice({threading.get_native_id(), *self._backend_threads}, self._nice, self.get_logger().warning)
        while (request := self._jobs.get()) is not None:
            try:
                started = time.perf_counter()
                try:
                    chunk = self.runner.infer(request.images, request.state.astype(np.float32), request.instruction)
                except Exception as exc:  # a refused input or a broken backend: the controller holds
                    self.controller.on_failure(request, exc, now_s(self))
                    continue
                # Report only (never raises, whatever the runner holds): the chunk goes through the guard alone.
                self._pointing = pointing_status(self._cameras, getattr(self.runner, "last_points", None),
                                                 getattr(self.runner, "last_confidence", None))
                self.controller.on_result(request, chunk, now_s(self), time.perf_counter() - started)
            except Exception as exc:  # outside the model: a bug or a broken publisher, never silent
                if self._closing:
                    return
                try:
                    self.controller.on_fault(f"inference worker: {type(exc).__name__}: {exc}", now_s(self))
                except Exception as hold_error:  # the hold itself failed: the tick's fault check reports it
                    self.get_logger().error(f"inference worker: {exc!r}; the fault hold failed too: {hold_error!r}")

    def close(self) -> None:
        """Final hold, then stop the worker; the context must still be up (run_node / mot stack ensure it)."""
        if self._closing:
            return
        self._closing = True
        try:
            self.controller.shutdown(now_s(self))  # nothing the worker finishes after this is published
        except Exception as exc:
            self.get_logger().error(f"final hold failed: {exc!r}")
        self._jobs.put(None)
        self._worker.join(timeout=5.0)
        try:
            self._wait_for_commands_acked(Duration(seconds=1.0))  # the final hold reaches reliable readers
        except Exception:
            pass
        if self._wake_latency is not None:
            self._wake_latency.close()  # idle CPUs may halt again


def main(argv: list[str] | None = None) -> int:
    return run_node(PolicyNode, argv)


if __name__ == "__main__":
    raise SystemExit(main())
