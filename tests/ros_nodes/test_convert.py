import numpy as np
import pytest
from sensor_msgs.msg import Image, JointState

from ros_nodes.convert import (chunk_to_trajectory, image_to_numpy, joint_state_to_vector, numpy_to_image,
                               seconds_to_time, trajectory_to_arrays)

JOINTS = ["a", "b", "c"]


def test_image_round_trip_and_encodings():
    rgb = np.random.default_rng(0).integers(0, 255, (4, 5, 3), dtype=np.uint8)
    assert np.array_equal(image_to_numpy(numpy_to_image(rgb)), rgb)
    bgr = numpy_to_image(rgb[:, :, ::-1].copy())
    bgr.encoding = "bgr8"
    assert np.array_equal(image_to_numpy(bgr), rgb)
    mono = Image(height=2, width=3, encoding="mono8", step=3, data=bytes(range(6)))
    assert image_to_numpy(mono).shape == (2, 3, 3)


def test_image_row_padding_is_stripped():
    rgb = np.arange(2 * 2 * 3, dtype=np.uint8).reshape(2, 2, 3)
    padded = np.zeros((2, 8), np.uint8)
    padded[:, :6] = rgb.reshape(2, 6)
    msg = Image(height=2, width=2, encoding="rgb8", step=8, data=padded.tobytes())
    assert np.array_equal(image_to_numpy(msg), rgb)


@pytest.mark.parametrize("field,value,match", [
    ("encoding", "16UC1", "encoding"), ("step", 5, "step"), ("data", b"\x00" * 7, "data"),
    ("height", 0, "height"), ("data", b"", "data")])
def test_bad_images_name_the_field(field, value, match):
    msg = numpy_to_image(np.zeros((2, 2, 3), np.uint8))
    setattr(msg, field, value)
    with pytest.raises(ValueError, match=match):
        image_to_numpy(msg)


def test_joint_state_reorders_and_ignores_extra_joints():
    msg = JointState(name=["c", "x", "a", "b"], position=[3.0, 9.0, 1.0, 2.0])
    assert joint_state_to_vector(msg, JOINTS).tolist() == [1.0, 2.0, 3.0]


@pytest.mark.parametrize("names,positions,match", [
    (["a", "b"], [1.0, 2.0], "missing"), (["a", "b", "c"], [1.0, 2.0], "one per name"),
    (["a", "b", "c"], [1.0, float("nan"), 3.0], "finite"), (["a", "a", "b", "c"], [1.0] * 4, "unique")])
def test_bad_joint_states(names, positions, match):
    with pytest.raises(ValueError, match=match):
        joint_state_to_vector(JointState(name=names, position=positions), JOINTS)


def test_trajectory_round_trip():
    points = np.arange(12, dtype=np.float64).reshape(4, 3)
    msg = chunk_to_trajectory(points, JOINTS, seconds_to_time(12.5), dt=0.1)
    assert msg.header.stamp.sec == 12 and msg.header.stamp.nanosec == 500_000_000
    times, back = trajectory_to_arrays(msg, list(reversed(JOINTS)))
    assert np.allclose(times, [0.0, 0.1, 0.2, 0.3])
    assert np.array_equal(back, points[:, ::-1])
    assert list(msg.points[-1].velocities) == [0.0, 0.0, 0.0]  # the last point holds
