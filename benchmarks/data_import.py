"""Dataset import/export throughput on this CPU (frames/s, one process). Prints JSON.

    python benchmarks/data_import.py [--episodes 6] [--image-size 128] [--data DIR]

A source dataset (DIR, or `--episodes` scripted-expert episodes of the sim at `--image-size`, both cameras)
is exported to LeRobot v3.0 and written as a ROS 2 bag (rgb8 images, joint states, one trajectory per step,
the instruction; mcap), then each is imported back, timed end to end (decode, align, JPEG-encode, write;
the fastest of --repeats runs):

  lerobot_import_frames_per_s   dataset frames (control steps, all cameras) per second, LeRobot v3 -> ours
  rosbag_import_frames_per_s    the same for the mcap bag -> ours
  lerobot_export_frames_per_s   ours -> LeRobot v3 (H.264 encoding)
  *_camera_images_per_s         the same figures counted in camera images
  vs_policy_training            import frames/s over the policy stage's training samples/s (20-60 on this CPU:
                                the import must keep ahead of training by >10x)
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402
from rosbags.rosbag2 import StoragePlugin, Writer  # noqa: E402
from rosbags.typesys import Stores, get_typestore  # noqa: E402

from policy.errors import InputError  # noqa: E402
from policy.options import parse  # noqa: E402
from training.collect import collect  # noqa: E402
from training.lerobot_export import export_lerobot  # noqa: E402
from training.lerobot_import import import_lerobot  # noqa: E402
from training.manifest import read_episodes  # noqa: E402
from training.rosbag_import import import_rosbag  # noqa: E402
from training.cli import run_command  # noqa: E402

POLICY_TRAINING_SAMPLES_PER_S = 60.0  # the upper end of the policy stage's figure on this CPU (20-60)


@dataclass
class Config:
    """Import/export throughput of `mot data import lerobot|rosbag` and `mot data export`."""

    episodes: int = 6
    """sim episodes to collect as the source (ignored with --data)"""
    image_size: int = 128
    """sim camera size, px"""
    data: Path | None = None
    """an existing dataset of ours to use as the source"""
    repeats: int = 3
    """time each import/export this many times and report the fastest (the CPU is shared)"""

    def __post_init__(self) -> None:
        if self.episodes < 1:
            raise InputError(f"episodes: expected an int >= 1, received {self.episodes}")
        if self.image_size < 1:
            raise InputError(f"image-size: expected a size in px >= 1, received {self.image_size}")
        if self.repeats < 1:
            raise InputError(f"repeats: expected an int >= 1, received {self.repeats}")
        if self.data is not None and not (self.data / "manifest.json").is_file():
            raise InputError(f"data: expected a dataset directory of ours (manifest.json), received {self.data}")


def write_bag(episodes, path: Path, fps: float, joints: list[str]) -> None:
    """Our episodes as a ROS 2 bag, as the sim stack would record them (one message per stream per step)."""
    ts = get_typestore(Stores.LATEST)
    T = ts.types

    def header(ns: int):
        return T["std_msgs/msg/Header"](stamp=T["builtin_interfaces/msg/Time"](sec=ns // 10**9, nanosec=ns % 10**9),
                                        frame_id="")

    with Writer(path, version=9, storage_plugin=StoragePlugin.MCAP) as w:
        cams = sorted(episodes[0].frames)
        conn = {c: w.add_connection(f"/camera/{c}/image_raw", "sensor_msgs/msg/Image", typestore=ts) for c in cams}
        conn["js"] = w.add_connection("/joint_states", "sensor_msgs/msg/JointState", typestore=ts)
        conn["traj"] = w.add_connection("/joint_trajectory", "trajectory_msgs/msg/JointTrajectory", typestore=ts)
        conn["ins"] = w.add_connection("/instruction", "std_msgs/msg/String", typestore=ts)
        t0, period = 1_700_000_000 * 10**9, int(1e9 / fps)
        ns = t0
        for ep in episodes:
            w.write(conn["ins"], ns, ts.serialize_cdr(T["std_msgs/msg/String"](data=ep.instruction), "std_msgs/msg/String"))
            for t in range(ep.steps):
                ns += period
                for c in cams:
                    img = ep.decode_frame(c, t)
                    msg = T["sensor_msgs/msg/Image"](header=header(ns), height=img.shape[0], width=img.shape[1],
                                                     encoding="rgb8", is_bigendian=0, step=img.shape[1] * 3,
                                                     data=img.reshape(-1))
                    w.write(conn[c], ns, ts.serialize_cdr(msg, "sensor_msgs/msg/Image"))
                js = T["sensor_msgs/msg/JointState"](header=header(ns), name=joints, position=ep.states[t].astype(np.float64),
                                                     velocity=np.zeros(0), effort=np.zeros(0))
                w.write(conn["js"], ns, ts.serialize_cdr(js, "sensor_msgs/msg/JointState"))
                point = T["trajectory_msgs/msg/JointTrajectoryPoint"](
                    positions=ep.actions[t].astype(np.float64), velocities=np.zeros(0), accelerations=np.zeros(0),
                    effort=np.zeros(0), time_from_start=T["builtin_interfaces/msg/Duration"](sec=0, nanosec=0))
                traj = T["trajectory_msgs/msg/JointTrajectory"](header=header(ns), joint_names=joints, points=[point])
                w.write(conn["traj"], ns, ts.serialize_cdr(traj, "trajectory_msgs/msg/JointTrajectory"))
            ns += 10 * period  # a pause between episodes


def main(argv: list[str] | None = None) -> int:
    cfg = parse(Config, argv, "python benchmarks/data_import.py", __doc__.split("\n\n")[0])

    work = Path(tempfile.mkdtemp(prefix="mot-data-bench-"))
    try:
        source = cfg.data
        if source is None:
            source = work / "source"
            collect(source, cfg.episodes, ["pick", "push", "place"], workers=1, image_size=cfg.image_size, progress=False)
        manifest, episodes = read_episodes(source)
        frames = sum(ep.steps for ep in episodes)
        cams = len(manifest["cameras"])
        fps = manifest.get("fps") or 10.0

        def best(fn, target: Path) -> tuple[float, object]:
            times, result = [], None
            for _ in range(cfg.repeats):
                shutil.rmtree(target, ignore_errors=True)
                t = time.perf_counter()
                result = fn()
                times.append(time.perf_counter() - t)
            return min(times), result

        export_s, _ = best(lambda: export_lerobot(source, work / "lerobot", fps=fps, progress=False), work / "lerobot")
        lerobot_s, _ = best(lambda: import_lerobot(work / "lerobot", work / "from_lerobot", progress=False),
                            work / "from_lerobot")

        joints = manifest.get("state_names") or [f"j{i}" for i in range(episodes[0].states.shape[1])]
        write_bag(episodes, work / "bag", fps, joints)
        topics = {"cameras": {c: f"/camera/{c}/image_raw" for c in manifest["cameras"]}, "state": "/joint_states",
                  "action": "/joint_trajectory", "instruction": "/instruction", "episode_topic": "/instruction",
                  "fps": fps}
        rosbag_s, imported = best(lambda: import_rosbag(work / "bag", work / "from_bag", topics, progress=False),
                                  work / "from_bag")
        bag_frames = sum(e["steps"] for e in imported["episodes"].values())

        out = {
            "source": {"episodes": len(episodes), "frames": frames, "cameras": cams, "image_shapes": manifest.get("image_shapes"),
                       "fps": fps},
            "lerobot_import_frames_per_s": round(frames / lerobot_s, 1),
            "rosbag_import_frames_per_s": round(bag_frames / rosbag_s, 1),
            "lerobot_export_frames_per_s": round(frames / export_s, 1),
            "lerobot_import_camera_images_per_s": round(frames * cams / lerobot_s, 1),
            "rosbag_import_camera_images_per_s": round(bag_frames * cams / rosbag_s, 1),
            "lerobot_export_camera_images_per_s": round(frames * cams / export_s, 1),
            "vs_policy_training": {"policy_training_samples_per_s": POLICY_TRAINING_SAMPLES_PER_S,
                                   "lerobot_import": round(frames / lerobot_s / POLICY_TRAINING_SAMPLES_PER_S, 1),
                                   "rosbag_import": round(bag_frames / rosbag_s / POLICY_TRAINING_SAMPLES_PER_S, 1)},
            "cpu_count": os.cpu_count(),
        }
        print(json.dumps(out, indent=2))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":  # as a script too: a mistake is one line and exit 2, as under `mot bench`
    sys.exit(run_command("bench data_import", main, sys.argv[1:]))
