"""sim_node: the MuJoCo tabletop env as a robot, so the same graph runs in development and on hardware.

    pub  camera/<camera>/image_raw   sensor_msgs/Image (rgb8)   every control tick
    pub  joint_states                 sensor_msgs/JointState     every control tick
    pub  status                       std_msgs/String (JSON)     episode, step, instruction, done, success
    sub  instruction                  std_msgs/String            starts an episode whose scene matches it
    sub  joint_trajectory             trajectory_msgs/JointTrajectory   followed like a position controller
    srv  sim/reset                    std_srvs/Trigger           ends the episode, back to idle

Trajectory following mirrors ros2_control's JointTrajectoryController in the one way that matters
here: a new trajectory replaces the old one, points are due at ``header.stamp + time_from_start``
and are interpolated linearly between; before the first point the previous target holds, after the
last point its position holds; an empty trajectory means "hold where you are".
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
from rclpy.node import Node
from sensor_msgs.msg import Image, JointState
from std_msgs.msg import String
from std_srvs.srv import Trigger
from trajectory_msgs.msg import JointTrajectory

import sim  # registers mot/Tabletop-v0
from ros_nodes.common import (IMAGE_QOS, RELIABLE_QOS, decode_string, json_string, lock_process_memory, now_s,
                               run_node)
from ros_nodes.controller_config import clean_instruction
from ros_nodes.convert import numpy_to_image, seconds_to_time, time_to_seconds, trajectory_to_arrays, vector_to_joint_state

PARAMETERS: dict[str, Any] = {
    "task": "pick",  # gymnasium task (sim's task names)
    "image_size": 128,
    "seed": 0,  # episode e resets with seed + e
    "max_episode_steps": 0,  # 0: the env's own limit
    "control_hz": 0.0,  # 0: sim.CONTROL_HZ
    "camera_topic": "camera/{camera}/image_raw",
    "max_instruction_chars": 256,
    "lock_memory": False,  # mlockall (no page-fault stalls in the frames it publishes); YAML turns it on
}


@dataclass
class TrajectoryFollower:
    """Target joint positions over time from the latest JointTrajectory (pure; times in seconds)."""

    lower: np.ndarray
    upper: np.ndarray
    _start: float = 0.0
    _times: np.ndarray | None = None
    _points: np.ndarray | None = None
    _hold: np.ndarray | None = None

    def replace(self, start: float, times: np.ndarray, points: np.ndarray, current: np.ndarray) -> None:
        # The target at the moment of replacement holds until the new trajectory's first point is due.
        self._hold = self.target(start, current)
        self._start, self._times, self._points = start, times, points

    def stop(self, position: np.ndarray) -> None:
        self._times = self._points = None
        self._hold = np.asarray(position, dtype=np.float64).copy()

    def target(self, now: float, current: np.ndarray) -> np.ndarray:
        if self._points is None or len(self._points) == 0:
            target = self._hold if self._hold is not None else current
        else:
            t = now - self._start
            if t < self._times[0]:
                target = self._hold if self._hold is not None else self._points[0]
            else:
                target = np.array([np.interp(t, self._times, self._points[:, j]) for j in range(self._points.shape[1])])
        return np.clip(np.asarray(target, dtype=np.float64), self.lower, self.upper)


class SimNode(Node):
    """The env lives on one dedicated thread, which creates, steps and renders it.

    MuJoCo's EGL/OSMesa rendering context is bound to the thread that created it; an executor's
    worker threads change from callback to callback, so stepping from a timer callback fails with
    EGL_BAD_ACCESS. Callbacks therefore only queue an episode start or swap the trajectory (under a
    lock); the sim thread does everything that touches MuJoCo, at the control rate.
    """

    def __init__(self, **node_kwargs) -> None:
        super().__init__("sim_node", **node_kwargs)
        for name, default in PARAMETERS.items():
            self.declare_parameter(name, default)
        self.p = p = {name: self.get_parameter(name).value for name in PARAMETERS}
        if p["lock_memory"]:
            lock_process_memory(self.get_logger().warning)

        self.joint_names = tuple(sim.JOINT_NAMES)
        self.dt = 1.0 / (p["control_hz"] or sim.CONTROL_HZ)
        self.follower = TrajectoryFollower(np.asarray(sim.ACTION_LOW, np.float64), np.asarray(sim.ACTION_HIGH, np.float64))
        self._lock = threading.Lock()  # follower, episode state and the pending instruction
        self._pending: str | None = None
        self.episode, self.step_count, self.mode = 0, 0, "idle"  # idle | running | done
        self.instruction, self.success, self.reason = "", False, ""
        self.obs: dict | None = None

        self._joint_pub = self.create_publisher(JointState, "joint_states", RELIABLE_QOS)
        self._status_pub = self.create_publisher(String, "status", RELIABLE_QOS)
        self._image_pubs: dict = {}
        self._stop = threading.Event()
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="sim", daemon=True)
        self._thread.start()
        self._ready.wait()
        if self._error is not None:
            raise RuntimeError(f"sim_node: cannot create the env: {self._error}") from self._error

        self.create_subscription(String, "instruction", self._on_instruction, RELIABLE_QOS, raw=True)
        self.create_subscription(JointTrajectory, "joint_trajectory", self._on_trajectory, RELIABLE_QOS)
        self.create_service(Trigger, "sim/reset", self._on_reset)
        self.get_logger().info(f"sim_node ready: task {p['task']}, cameras {list(self._image_pubs)}, "
                               f"{1 / self.dt:.1f} Hz; waiting for an instruction")

    @property
    def state(self) -> np.ndarray:
        return np.asarray(self.obs["state"], dtype=np.float64)

    # -- callbacks (executor threads): never touch the env ---------------------------------------
    def _on_instruction(self, raw: bytes) -> None:
        try:
            text = clean_instruction(decode_string(raw), self.p["max_instruction_chars"])
        except (ValueError, TypeError) as exc:
            self.get_logger().warning(f"dropped instruction: {exc}")
            return
        with self._lock:
            self._pending = text  # the sim thread starts the episode at its next step

    def _on_trajectory(self, msg: JointTrajectory) -> None:
        try:
            times, points = trajectory_to_arrays(msg, self.joint_names)
        except ValueError as exc:
            self.get_logger().warning(f"dropped trajectory: {exc}", throttle_duration_sec=1.0)
            return
        with self._lock:
            if len(points) == 0:
                self.follower.stop(self.state)
                return
            stamp = time_to_seconds(msg.header.stamp)
            self.follower.replace(stamp if stamp > 0 else now_s(self), times, points, self.state)

    def _on_reset(self, request: Trigger.Request, response: Trigger.Response) -> Trigger.Response:
        with self._lock:
            self.mode, self.reason, self._pending = "idle", "reset", None
            self.follower.stop(self.state)
        response.success, response.message = True, "sim idle; send an instruction to start an episode"
        return response

    # -- the sim thread ------------------------------------------------------------------------------
    def _run(self) -> None:
        try:
            # The env class directly (not gymnasium.make): make() would wrap it in a TimeLimit and keep
            # the env's own per-task cap, so a longer max_episode_steps could never take effect.
            steps = self.p["max_episode_steps"] if self.p["max_episode_steps"] > 0 else None
            env = sim.TabletopEnv(task=self.p["task"], render_mode="rgb_array", image_size=self.p["image_size"],
                                  max_episode_steps=steps)
            self.obs, _ = env.reset(seed=self.p["seed"])  # something to publish before the first instruction
            self._image_pubs = {camera: self.create_publisher(Image, self.p["camera_topic"].format(camera=camera),
                                                              IMAGE_QOS) for camera in self.obs["images"]}
        except Exception as exc:
            self._error = exc
            self._ready.set()
            return
        self._ready.set()
        deadline = time.monotonic()
        try:
            while not self._stop.is_set():
                try:
                    self._step(env)
                except Exception as exc:  # a sim error is logged; the node keeps publishing its last state
                    self.get_logger().error(f"sim step failed: {exc}", throttle_duration_sec=5.0)
                deadline += self.dt
                delay = deadline - time.monotonic()
                if delay < -self.dt:  # fell more than a period behind (a slow machine): do not try to catch up
                    deadline = time.monotonic()
                self._stop.wait(max(0.0, delay))
        finally:
            env.close()

    def _step(self, env) -> None:
        now = now_s(self)
        with self._lock:
            pending, self._pending = self._pending, None
        if pending is not None:
            self._start_episode(env, pending)
        with self._lock:
            if self.mode == "running":
                action = self.follower.target(now, self.state).astype(np.float32)
                self.obs, _, terminated, truncated, info = env.step(action)
                self.step_count += 1
                if info.get("success") or terminated or truncated:
                    self.success = bool(info.get("success", False))
                    self.reason = "success" if self.success else ("terminated" if terminated else "timeout")
                    self.mode = "done"
                    self.follower.stop(self.state)
                    self.get_logger().info(f"episode {self.episode} done after {self.step_count} steps: {self.reason}")
            obs, status = self.obs, self._status()
        stamp = seconds_to_time(now)
        for camera, publisher in self._image_pubs.items():
            publisher.publish(numpy_to_image(obs["images"][camera], stamp, frame_id=camera))
        self._joint_pub.publish(vector_to_joint_state(obs["state"], self.joint_names, stamp))
        self._status_pub.publish(json_string(status))

    def _start_episode(self, env, text: str) -> None:
        try:
            obs, _ = env.reset(seed=self.p["seed"] + self.episode + 1, options={"instruction": text})
        except ValueError as exc:  # an instruction the sim cannot build a scene for ("cannot ground ...")
            self.get_logger().warning(f"sim cannot set up {text!r}: {exc}; staying {self.mode}")
            return
        with self._lock:
            self.obs, self.episode = obs, self.episode + 1
            self.instruction, self.step_count, self.success, self.reason = text, 0, False, ""
            self.follower.stop(self.state)
            self.mode = "running"
        self.get_logger().info(f"episode {self.episode}: {text!r}")

    def _status(self) -> dict:
        return {"episode": self.episode, "instruction": self.instruction, "step": self.step_count, "mode": self.mode,
                "done": self.mode == "done", "success": self.success, "reason": self.reason}

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5.0)


def main(argv: list[str] | None = None) -> int:
    return run_node(SimNode, argv)


if __name__ == "__main__":
    raise SystemExit(main())
