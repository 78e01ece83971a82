"""camera_node: OpenCV capture (a device index or a video file) -> sensor_msgs/Image (rgb8).

    pub  camera/<camera_name>/image_raw   sensor_msgs/Image

A missing or unplugged device is not fatal: the node logs what it tried and how to fix it, and
retries every ``retry_s`` seconds, so a camera plugged in after launch starts publishing by itself.
A video file loops when it ends (``loop``), which makes recorded footage a stand-in camera.
"""

from __future__ import annotations

from typing import Any

import cv2
import numpy as np
from rclpy.node import Node
from sensor_msgs.msg import Image

from ros_nodes.common import IMAGE_QOS, now_s, run_node
from ros_nodes.convert import numpy_to_image, seconds_to_time

PARAMETERS: dict[str, Any] = {
    "camera_name": "front",
    "device": "0",  # an integer string is a /dev/video index; anything else is a file path or URL
    "width": 320,  # output size; frames are resized to it (0 keeps the capture's size)
    "height": 240,
    "rate_hz": 15.0,
    "loop": True,  # restart a video file at its end
    "retry_s": 2.0,
}


def open_capture(device: str) -> cv2.VideoCapture | None:
    """A capture that is open, or None. ``device`` "3" opens /dev/video3, anything else a path."""
    source: int | str = int(device) if device.strip().lstrip("-").isdigit() else device
    capture = cv2.VideoCapture(source)
    if not capture.isOpened():
        capture.release()
        return None
    return capture


def prepare_frame(bgr: np.ndarray, width: int, height: int) -> np.ndarray:
    """OpenCV BGR frame (H, W, 3) -> RGB uint8 (height, width, 3); width/height 0 keep the size."""
    if bgr is None or bgr.ndim != 3 or bgr.shape[2] != 3 or bgr.dtype != np.uint8:
        raise ValueError(f"frame: expected uint8 (H, W, 3), received {getattr(bgr, 'dtype', None)} {getattr(bgr, 'shape', None)}")
    if width > 0 and height > 0 and (bgr.shape[1], bgr.shape[0]) != (width, height):
        # INTER_AREA: the right filter for downscaling, which is the usual direction here.
        bgr = cv2.resize(bgr, (width, height), interpolation=cv2.INTER_AREA)
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


class CameraNode(Node):
    def __init__(self, **node_kwargs) -> None:
        super().__init__("camera_node", **node_kwargs)
        for name, default in PARAMETERS.items():
            self.declare_parameter(name, default)
        p = {name: self.get_parameter(name).value for name in PARAMETERS}
        self.p = p
        self.topic = f"camera/{p['camera_name']}/image_raw"
        self._pub = self.create_publisher(Image, self.topic, IMAGE_QOS)
        self._capture: cv2.VideoCapture | None = None
        self._next_retry = 0.0
        self.frames_published = 0
        self.open_failures = 0
        self.create_timer(1.0 / p["rate_hz"], self._on_tick)
        self.get_logger().info(f"camera_node {p['camera_name']!r}: device {p['device']!r} -> {self.topic} "
                               f"at {p['rate_hz']} Hz, {p['width']}x{p['height']}")

    def _ensure_open(self, now: float) -> bool:
        if self._capture is not None:
            return True
        if now < self._next_retry:
            return False
        self._capture = open_capture(self.p["device"])
        if self._capture is None:
            self.open_failures += 1
            self._next_retry = now + self.p["retry_s"]
            self.get_logger().error(
                f"cannot open camera device {self.p['device']!r} (is it plugged in? `ls /dev/video*`; is another "
                f"process using it?); retrying every {self.p['retry_s']} s")
            return False
        self.get_logger().info(f"opened camera device {self.p['device']!r}")
        return True

    def _on_tick(self) -> None:
        now = now_s(self)
        if not self._ensure_open(now):
            return
        ok, frame = self._capture.read()
        if not ok and self.p["loop"] and self._capture.get(cv2.CAP_PROP_FRAME_COUNT) > 0:
            self._capture.set(cv2.CAP_PROP_POS_FRAMES, 0)  # a video file ended: loop it
            ok, frame = self._capture.read()
        if not ok:
            self.get_logger().error(f"camera device {self.p['device']!r} stopped delivering frames; reopening")
            self._capture.release()
            self._capture, self._next_retry = None, now + self.p["retry_s"]
            return
        try:
            rgb = prepare_frame(frame, self.p["width"], self.p["height"])
        except ValueError as exc:
            self.get_logger().warning(f"dropped frame: {exc}", throttle_duration_sec=1.0)
            return
        self._pub.publish(numpy_to_image(rgb, seconds_to_time(now), frame_id=self.p["camera_name"]))
        self.frames_published += 1

    def close(self) -> None:
        if self._capture is not None:
            self._capture.release()


def main(argv: list[str] | None = None) -> int:
    return run_node(CameraNode, argv)


if __name__ == "__main__":
    raise SystemExit(main())
