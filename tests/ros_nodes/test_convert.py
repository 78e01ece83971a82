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
    (["a", "b", "c"], [1.0, float("nan"), 3.0], "finite"), (["a", "a", "b", "c"], [1.0] * 4, "unique"),
    (["a", "b", "c"], [1.0, 1e300, 3.0], "finite")])  # finite as a double, inf as the float32 we plan with
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


# -- instructions: serialized std_msgs/String -> text, strict UTF-8 (issue 19) --------------------------
from hypothesis import given, settings, strategies as st  # noqa: E402
from rclpy.serialization import serialize_message  # noqa: E402
from std_msgs.msg import String  # noqa: E402

from ros_nodes.common import decode_string  # noqa: E402


def _raw(payload: bytes) -> bytes:
    placeholder = b"\x01" * len(payload)
    return serialize_message(String(data=placeholder.decode())).replace(placeholder, payload)


@settings(max_examples=300, deadline=None)
# Text a ROS string can carry: UTF-8 encodable (no lone surrogates, category Cs), no NUL.
@given(text=st.text(st.characters(blacklist_characters="\x00", blacklist_categories=("Cs",)), max_size=300))
def test_decode_string_round_trips_what_rclpy_serializes(text):
    assert decode_string(serialize_message(String(data=text))) == text


@pytest.mark.parametrize("payload", [b"\xff\xfe", b"pick up \xc3", b"\xed\xa0\x80", b"stop\x80"])
def test_non_utf8_instructions_are_dropped_not_replaced(payload):
    """rclpy's own deserializer turns these into U+FFFD text; ours refuses them."""
    with pytest.raises(ValueError, match="UTF-8"):
        decode_string(_raw(payload))


@pytest.mark.parametrize("raw", [b"", b"\x00\x01\x00\x00", b"\x00\x01\x00\x00\xff\x00\x00\x00abc\x00",
                                 b"\x09\x09\x00\x00\x02\x00\x00\x00a\x00", b"\x00\x01\x00\x00\x02\x00\x00\x00ab"])
def test_truncated_or_foreign_buffers_are_refused(raw):
    with pytest.raises(ValueError, match="instruction"):
        decode_string(raw)
