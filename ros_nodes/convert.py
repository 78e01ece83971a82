"""Message <-> numpy conversion: the only place that knows how ROS lays out an image or a joint state.

Every function here validates before it converts and raises ``ValueError`` naming the field, the
expected and the received value; nodes catch that, log it and drop the message. Nothing here touches
rclpy's executor, so the functions are tested directly on message objects.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
from builtin_interfaces.msg import Duration, Time
from sensor_msgs.msg import Image, JointState
from trajectory_msgs.msg import JointTrajectory, JointTrajectoryPoint

# Encodings we accept. bgr8 is what OpenCV and most USB camera drivers publish; we convert it once
# here so the policy only ever sees RGB, as the observation contract says.
_CHANNELS = {"rgb8": 3, "bgr8": 3, "mono8": 1}
MAX_IMAGE_SIDE = 4096  # a bigger frame is a misconfigured driver, not a camera we can run on


def image_to_numpy(msg: Image) -> np.ndarray:
    """sensor_msgs/Image (rgb8 | bgr8 | mono8) -> uint8 RGB array (H, W, 3), a copy.

    Row padding (``step > width * channels``) is allowed and stripped, as the message definition
    permits it; a ``data`` length that disagrees with ``height * step`` is an error.
    """
    encoding = msg.encoding.lower()
    if encoding not in _CHANNELS:
        raise ValueError(f"image.encoding: expected one of {sorted(_CHANNELS)}, received {msg.encoding!r}")
    channels = _CHANNELS[encoding]
    height, width, step = int(msg.height), int(msg.width), int(msg.step)
    if not (0 < height <= MAX_IMAGE_SIDE and 0 < width <= MAX_IMAGE_SIDE):
        raise ValueError(f"image.height/width: expected 1..{MAX_IMAGE_SIDE}, received {height}x{width}")
    if step < width * channels:
        raise ValueError(f"image.step: expected >= width*channels = {width * channels}, received {step}")
    data = np.frombuffer(bytes(msg.data), dtype=np.uint8)
    if data.size != height * step:
        raise ValueError(f"image.data: expected height*step = {height * step} bytes, received {data.size}")
    rows = data.reshape(height, step)[:, : width * channels]
    pixels = rows.reshape(height, width, channels)
    if encoding == "bgr8":
        pixels = pixels[:, :, ::-1]
    elif encoding == "mono8":
        pixels = np.repeat(pixels, 3, axis=2)
    return np.array(pixels, order="C")  # always a writable copy, never a view of the message buffer


def fit_image(pixels: np.ndarray, size: int) -> np.ndarray:
    """RGB (H, W, 3) -> (size, size, 3), the model's input size; unchanged if it already is.

    Resizing once here (not in the model) gives every backend the fixed frame size it was exported
    for and makes cameras of different resolutions one observation. The aspect ratio is not kept:
    the model was trained on square frames of the whole field of view, so we squash, not crop.
    """
    if pixels.shape[:2] == (size, size):
        return pixels
    import cv2

    shrinking = pixels.shape[0] > size or pixels.shape[1] > size
    return cv2.resize(pixels, (size, size), interpolation=cv2.INTER_AREA if shrinking else cv2.INTER_LINEAR)


def numpy_to_image(pixels: np.ndarray, stamp: Time | None = None, frame_id: str = "") -> Image:
    """uint8 RGB array (H, W, 3) -> sensor_msgs/Image (rgb8, no row padding)."""
    if not isinstance(pixels, np.ndarray) or pixels.dtype != np.uint8 or pixels.ndim != 3 or pixels.shape[2] != 3:
        raise ValueError(f"pixels: expected uint8 array (H, W, 3), received "
                         f"{getattr(pixels, 'dtype', type(pixels))} {getattr(pixels, 'shape', '')}")
    msg = Image()
    if stamp is not None:
        msg.header.stamp = stamp
    msg.header.frame_id = frame_id
    msg.height, msg.width = int(pixels.shape[0]), int(pixels.shape[1])
    msg.encoding = "rgb8"
    msg.is_bigendian = 0
    msg.step = int(pixels.shape[1]) * 3
    # Assigning bytes is the fast path for rclpy's uint8[] field (a list of ints would be ~100x slower).
    msg.data = np.ascontiguousarray(pixels).tobytes()
    return msg


def joint_state_to_vector(msg: JointState, joint_names: Sequence[str]) -> np.ndarray:
    """sensor_msgs/JointState -> float32 positions (len(joint_names),) in ``joint_names`` order.

    The message may list more joints than we control (a robot's full state) and in any order; every
    joint we control must be present exactly once, and every value must be finite.
    """
    names = list(msg.name)
    positions = np.asarray(msg.position, dtype=np.float64)
    if len(names) != len(positions):
        raise ValueError(f"joint_state.position: expected one per name ({len(names)}), received {len(positions)}")
    if len(set(names)) != len(names):
        raise ValueError(f"joint_state.name: expected unique names, received {names!r}")
    index = {name: i for i, name in enumerate(names)}
    missing = [n for n in joint_names if n not in index]
    if missing:
        raise ValueError(f"joint_state.name: expected all of {list(joint_names)}, missing {missing}")
    vector = positions[[index[n] for n in joint_names]]
    with np.errstate(over="ignore"):
        single = vector.astype(np.float32)  # 1e300 is finite in float64 and inf in float32: check after
    if not np.all(np.isfinite(single)):
        raise ValueError(f"joint_state.position: expected finite float32 values, received {vector.tolist()}")
    return single


def vector_to_joint_state(positions: np.ndarray, joint_names: Sequence[str], stamp: Time | None = None) -> JointState:
    msg = JointState()
    if stamp is not None:
        msg.header.stamp = stamp
    msg.name = list(joint_names)
    msg.position = [float(p) for p in positions]
    return msg


def seconds_to_duration(seconds: float) -> Duration:
    nanoseconds = int(round(seconds * 1e9))
    return Duration(sec=nanoseconds // 1_000_000_000, nanosec=nanoseconds % 1_000_000_000)


def duration_to_seconds(duration: Duration) -> float:
    return duration.sec + duration.nanosec * 1e-9


def time_to_seconds(stamp: Time) -> float:
    return stamp.sec + stamp.nanosec * 1e-9


def seconds_to_time(seconds: float) -> Time:
    nanoseconds = int(round(seconds * 1e9))
    return Time(sec=nanoseconds // 1_000_000_000, nanosec=nanoseconds % 1_000_000_000)


def chunk_to_trajectory(points: np.ndarray, joint_names: Sequence[str], start: Time, dt: float) -> JointTrajectory:
    """Positions (T, D) -> JointTrajectory whose point k is due at ``start + k * dt``.

    Velocities are the finite differences the follower would see (the last point holds, velocity 0),
    so a controller that interpolates with velocities does not overshoot a chunk's end.
    """
    points = np.asarray(points, dtype=np.float64)
    if points.ndim != 2 or points.shape[1] != len(joint_names):
        raise ValueError(f"points: expected (T, {len(joint_names)}), received {points.shape}")
    velocities = np.zeros_like(points)
    if len(points) > 1:
        velocities[:-1] = np.diff(points, axis=0) / dt
    msg = JointTrajectory()
    msg.header.stamp = start
    msg.joint_names = list(joint_names)
    for k, (position, velocity) in enumerate(zip(points, velocities)):
        msg.points.append(JointTrajectoryPoint(positions=position.tolist(), velocities=velocity.tolist(),
                                               time_from_start=seconds_to_duration(k * dt)))
    return msg


def trajectory_to_arrays(msg: JointTrajectory, joint_names: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """JointTrajectory -> (times (T,) seconds from header.stamp, positions (T, D) in ``joint_names`` order).

    An empty trajectory is valid (ros2_control reads it as "stop here") and returns empty arrays.
    """
    names = list(msg.joint_names)
    if msg.points and sorted(names) != sorted(joint_names):
        raise ValueError(f"trajectory.joint_names: expected {list(joint_names)}, received {names}")
    order = [names.index(n) for n in joint_names] if msg.points else []
    times = np.array([duration_to_seconds(p.time_from_start) for p in msg.points], dtype=np.float64)
    positions = np.zeros((len(msg.points), len(joint_names)), dtype=np.float64)
    for k, point in enumerate(msg.points):
        if len(point.positions) != len(names):
            raise ValueError(f"trajectory.points[{k}].positions: expected {len(names)}, received {len(point.positions)}")
        positions[k] = np.asarray(point.positions, dtype=np.float64)[order]
    if len(times) > 1 and np.any(np.diff(times) <= 0):
        raise ValueError("trajectory.points.time_from_start: expected strictly increasing times")
    if not np.all(np.isfinite(positions)):
        raise ValueError("trajectory.points.positions: expected finite values")
    return times, positions
