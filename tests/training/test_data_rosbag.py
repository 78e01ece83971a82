"""`mot data import rosbag`: ROS 2 bags (mcap and sqlite3) written with rosbags' own writer -> our dataset."""

import json

import cv2
import numpy as np
import pytest
import yaml
from rosbags.rosbag2 import StoragePlugin, Writer
from rosbags.typesys import Stores, get_typestore

from policy.errors import InputError
from training.data import ChunkDataset, dataset_features, read_episodes
from training.data_cli import info, main
from training.rosbag_import import import_rosbag

TS = get_typestore(Stores.LATEST)
T = TS.types
JOINTS = ["a", "b", "gripper"]
TOPICS = {"cameras": {"front": "/cam/front/image_raw", "wrist": "/cam/wrist/compressed"}, "state": "/joint_states",
          "action": "/joint_trajectory", "instruction": "/instruction", "fps": 10}
T0 = 1_700_000_000 * 10**9  # a wall-clock epoch, as real stamps are


def header(ns: int):
    return T["std_msgs/msg/Header"](stamp=T["builtin_interfaces/msg/Time"](sec=ns // 10**9, nanosec=ns % 10**9),
                                    frame_id="")


def state_at(ns: int) -> np.ndarray:
    t = (ns - T0) * 1e-9
    return np.array([t, 2 * t, 0.04 + 0.01 * np.sin(t)])


def write_bag(path, storage: str, duration_s: float = 3.0) -> None:
    """front: rgb8 24x32 at 30 Hz (its pixel value counts the frames); wrist: JPEG at 10 Hz, 30 ms late;
    joint_states at 50 Hz; a 3-point trajectory every 0.2 s (joints in another order than the state's);
    instructions at 0.5 s ("pick") and 1.7 s ("place"), each with a receive-time stamp only."""
    plugin = StoragePlugin.MCAP if storage == "mcap" else StoragePlugin.SQLITE3
    with Writer(path, version=9, storage_plugin=plugin) as w:
        conn = {name: w.add_connection(topic, msgtype, typestore=TS) for name, topic, msgtype in [
            ("front", "/cam/front/image_raw", "sensor_msgs/msg/Image"),
            ("wrist", "/cam/wrist/compressed", "sensor_msgs/msg/CompressedImage"),
            ("state", "/joint_states", "sensor_msgs/msg/JointState"),
            ("action", "/joint_trajectory", "trajectory_msgs/msg/JointTrajectory"),
            ("instruction", "/instruction", "std_msgs/msg/String")]}
        events = []
        for k in range(int(duration_s * 30)):
            ns = T0 + k * 10**9 // 30
            img = np.full((24, 32, 3), k % 250, np.uint8)
            events.append((ns, "front", T["sensor_msgs/msg/Image"](header=header(ns), height=24, width=32, encoding="rgb8",
                                                                  is_bigendian=0, step=96, data=img.reshape(-1))))
        for k in range(int(duration_s * 10)):
            ns = T0 + k * 10**8 + 30 * 10**6
            ok, jpg = cv2.imencode(".jpg", np.full((16, 16, 3), 100, np.uint8))
            events.append((ns, "wrist", T["sensor_msgs/msg/CompressedImage"](header=header(ns), format="jpeg",
                                                                            data=jpg.reshape(-1))))
        for k in range(int(duration_s * 50)):
            ns = T0 + k * 10**9 // 50
            events.append((ns, "state", T["sensor_msgs/msg/JointState"](
                header=header(ns), name=JOINTS, position=state_at(ns), velocity=np.zeros(0), effort=np.zeros(0))))
        for k in range(int(duration_s * 5)):
            ns = T0 + k * 2 * 10**8
            points = [T["trajectory_msgs/msg/JointTrajectoryPoint"](
                positions=np.array([10 + k + j, 20 + k + j, 0.08]), velocities=np.zeros(0), accelerations=np.zeros(0),
                effort=np.zeros(0), time_from_start=T["builtin_interfaces/msg/Duration"](sec=0, nanosec=j * 10**8))
                for j in range(3)]
            # joint names in another order than the state's: the importer reorders them
            for p in points:
                p.positions = p.positions[[1, 0, 2]]
            events.append((ns, "action", T["trajectory_msgs/msg/JointTrajectory"](
                header=header(ns), joint_names=["b", "a", "gripper"], points=points)))
        for ns, text in ((T0 + 5 * 10**8, "pick up the cube"), (T0 + 17 * 10**8, "place it on the pad")):
            events.append((ns, "instruction", T["std_msgs/msg/String"](data=text)))
        for ns, name, msg in sorted(events, key=lambda e: e[0]):
            w.write(conn[name], ns, TS.serialize_cdr(msg, conn[name].msgtype))


@pytest.mark.parametrize("storage", ["mcap", "sqlite3"])
def test_bag_import_aligns_streams_to_the_control_rate_and_splits_at_instructions(tmp_path, storage):
    bag = tmp_path / "bag"
    write_bag(bag, storage)
    (tmp_path / "topics.yaml").write_text(yaml.safe_dump(TOPICS))
    assert main(["import", "rosbag", str(bag), "--out", str(tmp_path / "ds"), "--topics", str(tmp_path / "topics.yaml"),
                 "--no-progress"]) == 0
    manifest, episodes = read_episodes(tmp_path / "ds")
    assert manifest["fps"] == 10.0 and manifest["source"]["format"] == f"rosbag2/{storage}"
    assert [ep.instruction for ep in episodes] == ["pick up the cube", "place it on the pad"]
    first, second = episodes
    # ticks every 0.1 s from the first moment every camera and the state have spoken (the wrist's 30 ms)
    ticks = T0 + 30 * 10**6 + np.arange(40) * 10**8
    in_first = ticks[(ticks >= T0 + 5 * 10**8) & (ticks < T0 + 17 * 10**8)]
    assert first.steps == len(in_first) == 12 and second.steps >= 10
    np.testing.assert_allclose(first.timestamps, np.arange(first.steps) * 0.1, atol=1e-9)
    for t, ns in enumerate(in_first):
        # state: the newest 50 Hz message at or before the tick
        state_ns = T0 + (ns - T0) // (10**9 // 50) * (10**9 // 50)
        np.testing.assert_allclose(first.states[t], state_at(state_ns), atol=1e-6)
        # action: the newest trajectory (every 0.2 s), interpolated at the tick, in the state's joint order
        k = int((ns - T0) // (2 * 10**8))
        since = (ns - (T0 + k * 2 * 10**8)) * 1e-9
        np.testing.assert_allclose(first.actions[t], [10 + k + since * 10, 20 + k + since * 10, 0.08], atol=1e-5)
        # front camera: the newest 30 Hz frame (its pixel value is its number)
        frame = (ns - T0) * 30 // 10**9
        assert abs(int(first.decode_frame("front", t)[0, 0, 0]) - frame) <= 1
    assert first.decode_frame("front", 0).shape == (24, 32, 3) and first.decode_frame("wrist", 0).shape == (16, 16, 3)
    features = dataset_features(tmp_path / "ds")
    assert features.image_shapes == {"front": (24, 32), "wrist": (16, 16)} and features.image_size is None
    assert (features.state_dim, features.action_dim, features.fps) == (3, 3, 10.0)
    assert features.state_names == tuple(JOINTS) and features.delta_action_mask == (True, True, False)
    assert features.source_format == f"rosbag2/{storage}"
    batch = ChunkDataset(episodes, ["front", "wrist"], horizon=4).batch(np.arange(3))
    assert batch["images"]["front"].shape == (3, 24, 32, 3) and batch["actions"].shape == (3, 4, 3)
    shown = info(tmp_path / "ds")
    assert (shown["fps"], shown["episodes"], shown["source_format"]) == (10.0, 2, f"rosbag2/{storage}")
    assert info(bag)["topics"]["/joint_states"]["count"] == 150


def test_bag_import_names_what_is_wrong(tmp_path):
    bag = tmp_path / "bag"
    write_bag(bag, "mcap", duration_s=1.0)
    with pytest.raises(InputError, match=r"topics: expected \['/nope'\] in the bag"):
        import_rosbag(bag, tmp_path / "ds", {**TOPICS, "state": "/nope"}, progress=False)
    with pytest.raises(InputError, match="topics.state: expected a topic of type sensor_msgs/msg/JointState"):
        import_rosbag(bag, tmp_path / "ds", {**TOPICS, "state": "/instruction"}, progress=False)
    with pytest.raises(InputError, match=r"topics: expected keys among .* received unknown \['camera'\]"):
        import_rosbag(bag, tmp_path / "ds", {**TOPICS, "camera": "/x"}, progress=False)
    # the control rate is estimated from the state topic when the file gives none: 50 Hz here
    manifest = import_rosbag(bag, tmp_path / "est", {k: v for k, v in TOPICS.items() if k != "fps"}, progress=False)
    assert manifest["fps"] == 50.0
    assert json.loads(json.dumps(manifest))["source"]["topics"]["fps"] is None
