"""camera_node with a video file (CPU) and a missing device; a real camera only where one is plugged in."""

import glob

import cv2
import numpy as np
import pytest
from sensor_msgs.msg import Image

from ros_nodes.camera_node import CameraNode, open_capture, prepare_frame
from ros_nodes.common import IMAGE_QOS
from ros_nodes.convert import image_to_numpy


def test_prepare_frame_resizes_and_converts_bgr_to_rgb():
    bgr = np.zeros((48, 64, 3), np.uint8)
    bgr[..., 0] = 255  # blue in OpenCV's BGR
    rgb = prepare_frame(bgr, 32, 24)
    assert rgb.shape == (24, 32, 3) and rgb[0, 0].tolist() == [0, 0, 255]
    with pytest.raises(ValueError, match="frame"):
        prepare_frame(np.zeros((4, 4), np.uint8), 32, 24)


def write_video(path, frames=5):
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 10, (80, 60))
    for i in range(frames):
        writer.write(np.full((60, 80, 3), (0, 0, 40 * i), np.uint8))  # growing red in BGR
    writer.release()
    return path


def test_video_file_is_published_at_the_configured_size_and_loops(ros, tmp_path):
    video = write_video(tmp_path / "clip.avi")
    images = ros.collect(Image, "camera/front/image_raw", IMAGE_QOS)
    node = ros.add(CameraNode(cli_args=["--ros-args", "-p", f"device:={video}", "-p", "width:=32", "-p", "height:=24",
                                        "-p", "rate_hz:=50.0"], context=ros.context))
    ros.wait_for(lambda: len(images) >= 12, 10, "more frames than the 5-frame file holds (it loops)")
    frame = image_to_numpy(images[-1])
    assert frame.shape == (24, 32, 3) and images[-1].encoding == "rgb8"
    assert frame[..., 2].max() < 30 and frame[..., 0].max() > 0  # red stays red after BGR -> RGB
    assert node.open_failures == 0


def test_missing_device_is_logged_and_retried_without_crashing(ros):
    node = ros.add(CameraNode(cli_args=["--ros-args", "-p", "device:=/nonexistent/video.avi", "-p", "retry_s:=0.2",
                                        "-p", "rate_hz:=20.0"], context=ros.context))
    ros.wait_for(lambda: node.open_failures >= 3, 10, "repeated open attempts")
    assert node.frames_published == 0


def test_real_camera():
    devices = sorted(glob.glob("/dev/video*"))
    if not devices:
        pytest.skip("no /dev/video* camera on this machine; the video-file test covers the node's logic")
    capture = open_capture(devices[0].removeprefix("/dev/video"))
    if capture is None:
        pytest.skip(f"{devices[0]} exists but cannot be opened (in use, or not a capture device)")
    ok, frame = capture.read()
    capture.release()
    assert ok and prepare_frame(frame, 64, 48).shape == (48, 64, 3)
