"""ROS 2 bags -> our `mot-dataset/1`, read with the pure-Python `rosbags` package (no ROS install needed).

A topics file (YAML, `TopicsConfig`) says which topic is what:

    cameras: {front: /camera/front/image_raw, wrist: /camera/wrist/image_raw}   # sensor_msgs/Image or CompressedImage
    state: /joint_states            # sensor_msgs/JointState: the positions
    action: /joint_trajectory       # trajectory_msgs/JointTrajectory (the commanded chunk), or JointState /
                                    # std_msgs/Float64MultiArray joint targets
    instruction: /instruction       # std_msgs/String
    episode_topic: /instruction     # optional: every message on it starts an episode (any type)
    status_topic: /status           # optional: sim_node's JSON status; ticks kept while its "mode" is "running"
    joints: [shoulder_pan, ...]     # optional: state/action order (default: the first JointState's names)
    fps: 10                         # optional: the control rate (default: the state topic's median rate)
    max_age_s: 0.5                  # a tick whose newest camera or state message is older is a gap
    min_steps: 2                    # shorter episodes are dropped

Alignment and episodes: `training.rosbag_decode`. Frames are stored as JPEG at the source resolution
(CompressedImage JPEGs are kept as they are, not re-encoded); an import is resumable (re-running it
skips the episodes its manifest lists).
"""

from __future__ import annotations

import contextlib
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import yaml
from rosbags.highlevel import AnyReader
from rosbags.typesys import Stores, get_typestore
from tqdm import tqdm

from policy.errors import DatasetError, InputError
from training.episodes import Episode, unknown_grounding
from training.features import default_delta_mask
from training.manifest import load_manifest, new_manifest, save_manifest, store_episode
from training.rosbag_decode import (
    ACTION_TYPES,
    IMAGE_TYPES,
    Stream,
    action_value,
    commanded_actions,
    control_rate,
    control_ticks,
    episode_rows,
    jpeg_frame,
    ordered_joints,
    stamp_ns,
)


def _topic(name: str) -> str:
    return name if name.startswith("/") else "/" + name


@dataclass
class TopicsConfig:
    """Which bag topics feed the dataset (see the module docstring)."""

    cameras: dict[str, str]
    state: str
    action: str
    instruction: str
    episode_topic: str | None = None
    status_topic: str | None = None
    joints: list[str] | None = None
    fps: float | None = None
    max_age_s: float = 0.5
    min_steps: int = 2
    extra: dict = field(default_factory=dict, repr=False)

    def __post_init__(self):
        if not isinstance(self.cameras, dict) or not self.cameras:
            raise InputError(f"topics.cameras: expected {{name: image topic}} with at least one camera, "
                             f"received {self.cameras!r}")
        self.cameras = {str(k): _topic(str(v)) for k, v in self.cameras.items()}
        for name in ("state", "action", "instruction"):
            value = getattr(self, name)
            if not isinstance(value, str) or not value:
                raise InputError(f"topics.{name}: expected a topic name, received {value!r}")
            setattr(self, name, _topic(value))
        self.episode_topic = _topic(self.episode_topic) if self.episode_topic else None
        self.status_topic = _topic(self.status_topic) if self.status_topic else None
        if self.fps is not None and not (np.isfinite(self.fps) and self.fps > 0):
            raise InputError(f"topics.fps: expected a control rate > 0 Hz, received {self.fps!r}")
        if not self.max_age_s > 0:
            raise InputError(f"topics.max_age_s: expected seconds > 0, received {self.max_age_s!r}")
        if self.min_steps < 1:
            raise InputError(f"topics.min_steps: expected an int >= 1, received {self.min_steps!r}")

    @classmethod
    def load(cls, path: str | Path | dict) -> "TopicsConfig":
        if isinstance(path, dict):
            raw = path
        else:
            try:
                raw = yaml.safe_load(Path(path).read_text())
            except (OSError, yaml.YAMLError) as e:
                raise InputError(f"topics: expected a readable YAML file, received {path} ({e})") from e
        if not isinstance(raw, dict):
            raise InputError(f"topics: expected a mapping of names to topics, received {type(raw).__name__}")
        known = {f for f in cls.__dataclass_fields__ if f != "extra"}
        unknown = sorted(set(raw) - known)
        if unknown:
            raise InputError(f"topics: expected keys among {sorted(known)}, received unknown {unknown}")
        missing = sorted({"cameras", "state", "action", "instruction"} - set(raw))
        if missing:
            raise InputError(f"topics: expected keys {missing} (cameras, state, action, instruction), received none")
        return cls(**raw)

    def to_dict(self) -> dict:
        d = asdict(self)
        d.pop("extra")
        return d


def _storage(bag: Path) -> str:
    meta = bag / "metadata.yaml"
    try:
        info = yaml.safe_load(meta.read_text())["rosbag2_bagfile_information"]
        return str(info.get("storage_identifier", "sqlite3"))
    except (OSError, KeyError, TypeError, yaml.YAMLError) as e:
        raise DatasetError(f"bag: expected {meta} (a ROS 2 bag directory), received none readable ({e})") from e


@contextlib.contextmanager
def _reader(bag: Path):
    """An open AnyReader on the ROS 2 bag directory `bag`."""
    _storage(bag)
    with tempfile.TemporaryDirectory() as tmp:
        if bag.suffix == ".bag":  # AnyReader takes "*.bag" for ROS 1: read it through a link without the suffix
            link = Path(tmp) / "bag"
            link.symlink_to(bag.resolve(), target_is_directory=True)
            bag = link
        with AnyReader([bag], default_typestore=get_typestore(Stores.LATEST)) as reader:
            yield reader


def bag_info(bag: str | Path) -> dict:
    """`mot data info BAG`: storage, duration and topics (type, message count) of a ROS 2 bag."""
    bag = Path(bag)
    with _reader(bag) as reader:
        topics = {name: {"type": t.msgtype, "count": t.msgcount} for name, t in sorted(reader.topics.items())}
        return {"dir": str(bag), "source_format": f"rosbag2/{_storage(bag)}", "duration_s": reader.duration * 1e-9,
                "messages": reader.message_count, "topics": topics,
                "cameras": sorted(n for n, t in topics.items() if t["type"] in IMAGE_TYPES)}


def import_rosbag(bag: str | Path, out: str | Path, topics: str | Path | dict | TopicsConfig,
                  progress: bool = True) -> dict:
    """A ROS 2 bag -> our dataset at `out` (see the module docstring); returns the manifest."""
    bag, out = Path(bag), Path(out)
    cfg = topics if isinstance(topics, TopicsConfig) else TopicsConfig.load(topics)
    storage = _storage(bag)
    with _reader(bag) as reader:
        by_topic = {c.topic: c for c in reader.connections}
        wanted = {**{f"camera:{k}": v for k, v in cfg.cameras.items()}, "state": cfg.state, "action": cfg.action,
                  "instruction": cfg.instruction}
        if cfg.episode_topic:
            wanted["episode"] = cfg.episode_topic
        if cfg.status_topic:
            wanted["status"] = cfg.status_topic
        missing = {k: v for k, v in wanted.items() if v not in by_topic}
        if missing:
            raise InputError(f"topics: expected {sorted(missing.values())} in the bag, it has {sorted(by_topic)}")
        types = {k: by_topic[v].msgtype for k, v in wanted.items()}
        for key, allowed in [*((k, IMAGE_TYPES) for k in wanted if k.startswith("camera:")),
                             ("state", ("sensor_msgs/msg/JointState",)), ("action", ACTION_TYPES),
                             ("instruction", ("std_msgs/msg/String",))]:
            if types[key] not in allowed:
                raise InputError(f"topics.{key.removeprefix('camera:')}: expected a topic of type {' or '.join(allowed)}, "
                                 f"received {wanted[key]} of type {types[key]}")

        # Pass 1: every stream's stamps; small messages' values (images: their ordinal, decoded in pass 2).
        streams = {k: Stream() for k in wanted}
        keys_of: dict[int, list[str]] = {}  # a topic may serve twice (instruction and episode_topic)
        for k, v in wanted.items():
            keys_of.setdefault(by_topic[v].id, []).append(k)
        ordinals = {k: 0 for k in wanted}
        joints = list(cfg.joints) if cfg.joints else None
        connections = list({by_topic[v].id: by_topic[v] for v in wanted.values()}.values())
        for conn, log_ns, raw in reader.messages(connections=connections):
            msg = reader.deserialize(raw, conn.msgtype)
            stamp = stamp_ns(msg, log_ns)
            for key in keys_of[conn.id]:
                stream = streams[key]
                stream.stamps.append(stamp)
                if key.startswith("camera:"):
                    stream.values.append(ordinals[key])
                    ordinals[key] += 1
                elif key == "state":
                    if joints is None:
                        joints = [str(n) for n in msg.name]
                    stream.values.append(ordered_joints(list(msg.name), msg.position, joints, "state"))
                elif key == "action":
                    stream.values.append(action_value(msg, conn.msgtype, joints, stamp))
                elif key in ("instruction", "status"):
                    stream.values.append(str(msg.data))
                else:
                    stream.values.append(None)
        for key in ("state", "instruction", *(k for k in wanted if k.startswith("camera:"))):
            if not streams[key].stamps:
                raise DatasetError(f"bag: expected messages on {wanted[key]}, received none")

        fps = cfg.fps or control_rate(np.asarray(streams["state"].stamps, np.int64))
        ticks, episode_of = control_ticks(streams, fps, cfg.max_age_s)
        ordered = {k: s.arrays() for k, s in streams.items()}
        at = {k: np.searchsorted(ordered[k][0], ticks, side="right") - 1 for k in ordered}

        # Which image messages the ticks use -> pass 2 decodes only those.
        needed = {k: set(np.asarray(ordered[k][1])[at[k][at[k] >= 0]].tolist()) for k in wanted if k.startswith("camera:")}
        jpegs: dict[str, dict[int, tuple[bytes, tuple[int, int]]]] = {k: {} for k in needed}
        counters = {k: 0 for k in needed}
        image_conns = [by_topic[wanted[k]] for k in needed]
        total = sum(len(v) for v in needed.values())
        bar = tqdm(total=total, desc="import rosbag", unit="frame", disable=not progress)
        image_conns = list({c.id: c for c in image_conns}.values())
        for conn, _, raw in reader.messages(connections=image_conns):
            msg = None
            for key in keys_of[conn.id]:
                if key not in needed:
                    continue
                n = counters[key]
                counters[key] += 1
                if n in needed[key]:
                    msg = msg or reader.deserialize(raw, conn.msgtype)
                    jpegs[key][n] = jpeg_frame(msg, conn.msgtype)
                    bar.update(1)
        bar.close()

    # Assemble the episodes.
    joints = joints or []
    states = np.stack(ordered["state"][1])[at["state"]].astype(np.float32)
    actions = commanded_actions(ticks, states, at["action"], ordered["action"][1])
    instructions = [ordered["instruction"][1][j] for j in at["instruction"]]
    src_info = {"format": f"rosbag2/{storage}", "path": str(bag.resolve()), "topics": cfg.to_dict()}
    if (out / "manifest.json").exists():
        manifest = load_manifest(out)
        old = manifest.get("source") or {}
        if {k: old.get(k) for k in src_info} != src_info:
            raise InputError(f"out: {out} holds a dataset imported from {old.get('path')!r} ({old.get('format')}) "
                             f"with other topics or from another source; use another --out")
    else:
        manifest = new_manifest(f"rosbag:{src_info['path']}", "", list(cfg.cameras), None, "train", float(fps), src_info)
        if joints and states.shape[1] == len(joints):
            manifest["state_names"] = list(joints)
            if actions.shape[1] == len(joints):
                manifest["action_names"] = list(joints)
                mask = default_delta_mask(joints, joints)
                if mask is not None:
                    manifest["delta_action_mask"] = list(mask)
    out.mkdir(parents=True, exist_ok=True)
    for number, rows in enumerate(episode_rows(episode_of)):
        if len(rows) < cfg.min_steps or str(number) in manifest["episodes"]:
            continue
        frames = {}
        for cam in cfg.cameras:
            key = f"camera:{cam}"
            frames[cam] = [jpegs[key][ordered[key][1][at[key][i]]][0] for i in rows]
        text = instructions[rows[0]]
        episode = Episode(states[rows], actions[rows], frames, text, text, number, unknown_grounding(), None,
                          (ticks[rows] - ticks[rows[0]]).astype(np.float64) * 1e-9)
        store_episode(out, manifest, episode)
    if not manifest["episodes"]:
        raise DatasetError(f"bag: expected at least one episode of >= {cfg.min_steps} aligned steps after an "
                           f"instruction on {cfg.instruction}, received none")
    save_manifest(out, manifest)
    return manifest

