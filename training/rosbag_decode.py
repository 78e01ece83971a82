"""ROS 2 bag messages -> numbers on the control clock: decoding messages and aligning their streams.

Decoding: images (sensor_msgs/Image rgb8/bgr8/rgba8/bgra8/mono8, CompressedImage) -> (H, W, 3) uint8 RGB
or our JPEG frame bytes; JointState / JointTrajectory / Float64MultiArray -> float64 joint vectors in the
dataset's joint order (`ordered_joints`); a JointTrajectory is kept as (start_ns, times_s (K,), points (K, D)).

Alignment: every message is placed at its header stamp (the bag's receive time where it has no header
or a zero stamp). The control clock ticks at `fps` from the first moment every camera and the state have
spoken; at each tick every stream contributes its newest message at or before the tick (a zero-order
hold, as a controller sees the world). The action at a tick is the command in force then: the newest
trajectory evaluated at the tick (its points are due at header.stamp + time_from_start, linearly
interpolated, clamped to its first and last point, as sim_node follows it), or the newest joint target;
before any command (or after an empty trajectory) the robot holds, and the action is the state.

Episodes: ticks before the first instruction are dropped; a new episode starts when the instruction's
text changes, at every message on the episode topic, and after a gap (`control_ticks`, `episode_rows`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

import cv2
import numpy as np

from policy.errors import DatasetError
from training.episodes import encode_frame

IMAGE_TYPES = ("sensor_msgs/msg/Image", "sensor_msgs/msg/CompressedImage")
ACTION_TYPES = ("trajectory_msgs/msg/JointTrajectory", "sensor_msgs/msg/JointState", "std_msgs/msg/Float64MultiArray",
                "std_msgs/msg/Float32MultiArray")


# -- decoding messages ------------------------------------------------------------------------------
def stamp_ns(msg, log_ns: int) -> int:
    """When a message happened (ns): its header stamp, else (no header, or a zero stamp) the bag's receive time."""
    header = getattr(msg, "header", None)
    if header is not None:
        ns = int(header.stamp.sec) * 1_000_000_000 + int(header.stamp.nanosec)
        if ns > 0:
            return ns
    return int(log_ns)


def decode_image(msg, msgtype: str) -> np.ndarray:
    """sensor_msgs/Image (rgb8, bgr8, rgba8, bgra8, mono8) or CompressedImage -> (H, W, 3) uint8 RGB."""
    if msgtype.endswith("CompressedImage"):
        img = cv2.imdecode(np.frombuffer(bytes(msg.data), np.uint8), cv2.IMREAD_COLOR)
        if img is None:
            raise DatasetError(f"image: expected a decodable {msg.format!r} CompressedImage, received undecodable bytes")
        return cv2.cvtColor(img, cv2.COLOR_BGR2RGB)
    channels = {"rgb8": 3, "bgr8": 3, "rgba8": 4, "bgra8": 4, "mono8": 1}.get(msg.encoding.lower())
    if channels is None:
        raise DatasetError(f"image.encoding: expected one of rgb8, bgr8, rgba8, bgra8, mono8, received {msg.encoding!r}")
    h, w, step = int(msg.height), int(msg.width), int(msg.step)
    data = np.frombuffer(bytes(msg.data), np.uint8)
    if step < w * channels or data.size != h * step:
        raise DatasetError(f"image.data: expected height*step = {h * step} bytes with step >= {w * channels}, "
                           f"received {data.size} bytes, step {step}")
    px = data.reshape(h, step)[:, : w * channels].reshape(h, w, channels)
    enc = msg.encoding.lower()
    if enc.startswith("bgr"):
        px = px[:, :, 2::-1]
    elif channels == 4:
        px = px[:, :, :3]
    elif channels == 1:
        px = np.repeat(px, 3, axis=2)
    return np.ascontiguousarray(px)


def jpeg_frame(msg, msgtype: str) -> tuple[bytes, tuple[int, int]]:
    """A camera message -> (our JPEG frame bytes, (H, W)); JPEG CompressedImages pass through as they are."""
    if msgtype.endswith("CompressedImage") and ("jpeg" in msg.format.lower() or "jpg" in msg.format.lower()):
        data = bytes(msg.data)
        return data, _jpeg_size(data)
    rgb = decode_image(msg, msgtype)
    return encode_frame(rgb), rgb.shape[:2]


def _jpeg_size(data: bytes) -> tuple[int, int]:
    """(H, W) from a JPEG's SOF marker (no full decode)."""
    i = 2
    while i + 9 < len(data):
        if data[i] != 0xFF:
            i += 1
            continue
        marker = data[i + 1]
        if marker in (0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF):
            return int.from_bytes(data[i + 5:i + 7], "big"), int.from_bytes(data[i + 7:i + 9], "big")
        i += 2 + int.from_bytes(data[i + 2:i + 4], "big")
    img = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    if img is None:
        raise DatasetError("image: expected a decodable JPEG CompressedImage, received undecodable bytes")
    return img.shape[:2]


def ordered_joints(names: list[str], values, joints: list[str], what: str) -> np.ndarray:
    """Joint values named `names` (none: a bare array, already in order) -> float64 (len(joints),),
    in `joints` order; `what` names the message in errors."""
    values = np.asarray(values, np.float64)
    if not names:  # a bare array: already in order
        if len(values) != len(joints):
            raise DatasetError(f"{what}: expected {len(joints)} values, received {len(values)}")
        return values
    index = {n: i for i, n in enumerate(names)}
    missing = [j for j in joints if j not in index]
    if missing or len(values) != len(names):
        raise DatasetError(f"{what}: expected values for joints {joints}, received names {names} "
                           f"with {len(values)} values")
    return values[[index[j] for j in joints]]


def action_value(msg, msgtype: str, joints: list[str] | None, stamp: int):
    """An action message -> a joint target (D,) float64, or for a JointTrajectory (start_ns, times_s (K,),
    points (K, D)) (empty for an empty trajectory: the robot holds)."""
    if msgtype.endswith("JointTrajectory"):
        if not msg.points:
            return (stamp, np.zeros(0), np.zeros((0, 0)))
        if joints is None:
            joints = [str(n) for n in msg.joint_names]
        times = np.array([p.time_from_start.sec + p.time_from_start.nanosec * 1e-9 for p in msg.points])
        points = np.stack([ordered_joints(list(msg.joint_names), p.positions, joints, "action") for p in msg.points])
        return (stamp, times, points)
    if msgtype.endswith("JointState"):
        return ordered_joints(list(msg.name), msg.position, joints or list(msg.name), "action")
    return np.asarray(msg.data, np.float64)


# -- aligning streams on the control clock --------------------------------------------------------
@dataclass
class Stream:
    """One topic's messages as read: stamps (ns) and values, in bag order."""

    stamps: list[int] = field(default_factory=list)
    values: list = field(default_factory=list)

    def arrays(self) -> tuple[np.ndarray, list]:
        """(stamps (N,) int64, values) ordered by stamp (stable: ties keep bag order)."""
        order = np.argsort(np.asarray(self.stamps, np.int64), kind="stable")
        return np.asarray(self.stamps, np.int64)[order], [self.values[i] for i in order]


def control_rate(stamps: np.ndarray) -> float:
    """The control rate a stream shows: 1 / its median message interval (Hz, rounded to 0.1)."""
    if len(stamps) < 3:
        raise DatasetError(f"bag: expected >= 3 state messages to estimate the control rate, received {len(stamps)}; "
                           f"give fps in the topics file")
    interval = float(np.median(np.diff(np.sort(stamps)))) * 1e-9
    if interval <= 0:
        raise DatasetError("bag: expected increasing state stamps to estimate the control rate; give fps")
    return round(1.0 / interval, 1)


def control_ticks(streams: dict[str, Stream], fps: float, max_age_s: float) -> tuple[np.ndarray, np.ndarray]:
    """The control clock (ns) and, per tick, its episode number (-1: dropped)."""
    sensors = ["state", *(k for k in streams if k.startswith("camera:"))]
    start = max(min(streams[k].stamps) for k in sensors)
    end = min(max(streams[k].stamps) for k in sensors)
    period = 1e9 / fps
    ticks = (start + np.arange(int((end - start) // period) + 1) * period).astype(np.int64)
    max_age = int(max_age_s * 1e9)
    fresh = np.ones(len(ticks), bool)
    for key in sensors:
        stamps = np.sort(np.asarray(streams[key].stamps, np.int64))
        j = np.searchsorted(stamps, ticks, side="right") - 1
        fresh &= (j >= 0) & (ticks - stamps[np.maximum(j, 0)] <= max_age)
    # episode boundaries: instruction changes, episode_topic messages
    ins_stamps, ins_text = streams["instruction"].arrays()
    boundaries = [ins_stamps[i] for i in range(len(ins_text)) if i == 0 or ins_text[i] != ins_text[i - 1]]
    if "episode" in streams:
        boundaries += streams["episode"].stamps
    boundaries = np.unique(np.asarray(boundaries, np.int64))
    segment = np.searchsorted(boundaries, ticks, side="right") - 1  # -1: before the first instruction
    keep = fresh & (segment >= 0) & (ticks >= ins_stamps[0])
    if "status" in streams:
        st_stamps, st_text = streams["status"].arrays()
        j = np.searchsorted(st_stamps, ticks, side="right") - 1
        running = np.array([k >= 0 and _running(st_text[k]) for k in j], bool)
        keep &= running
    # a gap (dropped ticks) inside a segment starts a new episode too
    episode = np.full(len(ticks), -1, np.int64)
    number, previous = -1, None
    for i in range(len(ticks)):
        if not keep[i]:
            previous = None
            continue
        if previous is None or segment[i] != previous:
            number += 1
        episode[i], previous = number, segment[i]
    return ticks, episode


def _running(text: str) -> bool:
    try:
        return json.loads(text).get("mode") == "running"
    except (ValueError, AttributeError):
        return False


def episode_rows(episode_of: np.ndarray) -> list[np.ndarray]:
    """Per tick its episode number (-1: dropped) -> each episode's tick indices, in episode order."""
    numbers = episode_of[episode_of >= 0]
    return [np.flatnonzero(episode_of == n) for n in np.unique(numbers)]


def commanded_actions(ticks: np.ndarray, states: np.ndarray, action_at: np.ndarray, action_values: list) -> np.ndarray:
    """The command in force at each tick (T,) -> float32 (T, D): the newest action message at or before
    it (`action_at`: its index in the stamp-ordered `action_values`, -1 before any), a trajectory
    evaluated at the tick; the state (the robot holds) before any command or after an empty trajectory."""
    actions = np.empty_like(states)
    for i, t in enumerate(ticks):
        j = action_at[i]
        value = None
        if j >= 0:
            value = action_values[j]
            value = _trajectory_target(value, int(t)) if isinstance(value, tuple) else value
        actions[i] = states[i] if value is None else value
    return actions


def _trajectory_target(traj: tuple, t_ns: int) -> np.ndarray | None:
    """(start_ns, times_s (K,), points (K, D)) evaluated at t_ns; None for an empty trajectory (hold)."""
    start, times, points = traj
    if len(points) == 0:
        return None
    t = (t_ns - start) * 1e-9
    return np.array([np.interp(t, times, points[:, j]) for j in range(points.shape[1])])
