"""bag_recorder: the sim stack's topics into a ROS 2 bag, written with rosbags (no `ros2 bag` needed).

    sub  camera/<camera>/image_raw   sensor_msgs/Image                 (best effort, as the cameras publish)
    sub  joint_states                 sensor_msgs/JointState
    sub  joint_trajectory             trajectory_msgs/JointTrajectory   the policy's commands: the actions
    sub  instruction                  std_msgs/String
    sub  status                       std_msgs/String (JSON)             sim_node's episode state

Subscriptions are raw: the serialized CDR bytes go into the bag as they arrived, stamped with the
receive time (the messages keep their own header stamps, which `mot data import rosbag` aligns by).
The bag is written into a temporary directory beside `path` and renamed onto it by close(): a bag
appears under its name only once complete (a killed recorder leaves `.<name>.*.tmp/`).

    mot stack sim --checkpoint C --record BAG         (the lead's hook: one more node in the graph)
    mot data import rosbag BAG --out DIR --topics topics.yaml   (SIM_TOPICS below, as YAML)
"""

from __future__ import annotations

import importlib
import os
import threading
from pathlib import Path
from typing import Any

from rclpy.node import Node
from rosbags.rosbag2 import StoragePlugin, Writer
from rosbags.typesys import Stores, get_typestore

from policy.artifacts import temp_dir_beside
from ros_nodes.common import IMAGE_QOS, RELIABLE_QOS, declare, now_s, run_node

PARAMETERS: dict[str, Any] = {
    "path": "",  # the bag directory to create (required)
    "storage": "mcap",  # mcap | sqlite3
    "cameras": ["front", "wrist"],
    "camera_topic": "camera/{camera}/image_raw",
    # topic:type pairs besides the cameras (types as package/msg/Name)
    "topics": ["joint_states:sensor_msgs/msg/JointState", "joint_trajectory:trajectory_msgs/msg/JointTrajectory",
               "instruction:std_msgs/msg/String", "status:std_msgs/msg/String"],
}

# What `mot data import rosbag` reads from a bag of the sim stack (the recorder's default topics).
SIM_TOPICS: dict[str, Any] = {
    "cameras": {"front": "/camera/front/image_raw", "wrist": "/camera/wrist/image_raw"},
    "state": "/joint_states", "action": "/joint_trajectory", "instruction": "/instruction",
    "episode_topic": "/instruction",  # sim_node starts an episode on every instruction, even a repeated one
    "status_topic": "/status",  # and idles after it ends: keep only the ticks it is running
}


def _message_class(msgtype: str):
    package, _, name = msgtype.replace("/msg/", "/").partition("/")
    return getattr(importlib.import_module(f"{package}.msg"), name)


class BagRecorder(Node):
    def __init__(self, **node_kwargs) -> None:
        super().__init__("bag_recorder", **node_kwargs)
        self.p = p = declare(self, PARAMETERS)
        if not p["path"]:
            raise ValueError("path: expected the bag directory to write, received an empty string")
        if p["storage"] not in ("mcap", "sqlite3"):
            raise ValueError(f"storage: expected 'mcap' or 'sqlite3', received {p['storage']!r}")
        self.path = Path(p["path"]).resolve()
        if self.path.exists():
            raise ValueError(f"path: expected a new bag directory, received {self.path} (it exists)")
        streams = [(p["camera_topic"].format(camera=c), "sensor_msgs/msg/Image") for c in p["cameras"]]
        for item in p["topics"]:
            topic, sep, msgtype = item.partition(":")
            if not sep or not topic or "/msg/" not in msgtype:
                raise ValueError(f"topics: expected 'topic:package/msg/Type' items, received {item!r}")
            streams.append((topic, msgtype))
        self._tmp = temp_dir_beside(self.path)
        self._lock = threading.Lock()
        self._closed = False
        self.counts: dict[str, int] = {}
        storage = StoragePlugin.MCAP if p["storage"] == "mcap" else StoragePlugin.SQLITE3
        self._writer = Writer(self._tmp / "bag", version=9, storage_plugin=storage)
        self._writer.open()
        typestore = get_typestore(Stores.LATEST)
        for topic, msgtype in streams:
            name = self.resolve_topic_name(topic)
            connection = self._writer.add_connection(name, msgtype, typestore=typestore)
            self.counts[name] = 0
            qos = IMAGE_QOS if msgtype.endswith("/Image") else RELIABLE_QOS
            self.create_subscription(_message_class(msgtype), topic,
                                     lambda raw, c=connection, n=name: self._write(c, n, raw), qos, raw=True)
        self.get_logger().info(f"bag_recorder: {len(streams)} topics -> {self.path} ({p['storage']})")

    def _write(self, connection, name: str, raw: bytes) -> None:
        stamp = int(now_s(self) * 1e9)
        with self._lock:
            if self._closed:
                return
            self._writer.write(connection, stamp, raw)
            self.counts[name] += 1

    def close(self) -> None:
        """Finishes the bag (its metadata.yaml) and renames it onto `path`."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._writer.close()
        os.replace(self._tmp / "bag", self.path)
        self._tmp.rmdir()
        self.get_logger().info(f"bag_recorder: wrote {sum(self.counts.values())} messages to {self.path}")


def main(argv: list[str] | None = None) -> int:
    return run_node(BagRecorder, argv)


if __name__ == "__main__":
    raise SystemExit(main())
