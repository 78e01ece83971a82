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

Alignment: every message is placed at its header stamp (the bag's receive time where it has no header
or a zero stamp). The control clock ticks at `fps` from the first moment every camera and the state have
spoken; at each tick every stream contributes its newest message at or before the tick (a zero-order
hold, as a controller sees the world). The action at a tick is the command in force then: the newest
trajectory evaluated at the tick (its points are due at header.stamp + time_from_start, linearly
interpolated, clamped to its first and last point, as sim_node follows it), or the newest joint target;
before any command (or after an empty trajectory) the robot holds, and the action is the state.

Episodes: ticks before the first instruction are dropped; a new episode starts when the instruction's
text changes, at every message on `episode_topic`, and after a gap. Frames are stored as JPEG at the
source resolution (CompressedImage JPEGs are kept as they are, not re-encoded).
"""

from __future__ import annotations

import contextlib
import json
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path

import cv2
import numpy as np
import yaml
from rosbags.highlevel import AnyReader
from rosbags.typesys import Stores, get_typestore
from tqdm import tqdm

from policy.errors import DatasetError, InputError
from training.data import (
    GROUNDING_KEYS,
    Episode,
    atomic_write_bytes,
    default_delta_mask,
    describe_episode,
    encode_frame,
    episode_entry,
    episode_filename,
    episode_to_bytes,
    load_manifest,
    new_manifest,
    save_manifest,
)

IMAGE_TYPES = ("sensor_msgs/msg/Image", "sensor_msgs/msg/CompressedImage")
ACTION_TYPES = ("trajectory_msgs/msg/JointTrajectory", "sensor_msgs/msg/JointState", "std_msgs/msg/Float64MultiArray",
                "std_msgs/msg/Float32MultiArray")


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


def _stamp(msg, log_ns: int) -> int:
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


def _jpeg(msg, msgtype: str) -> tuple[bytes, tuple[int, int]]:
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


def _ordered(names: list[str], values, joints: list[str], what: str) -> np.ndarray:
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


@dataclass
class _Stream:
    stamps: list[int] = field(default_factory=list)
    values: list = field(default_factory=list)

    def arrays(self) -> tuple[np.ndarray, list]:
        order = np.argsort(np.asarray(self.stamps, np.int64), kind="stable")
        return np.asarray(self.stamps, np.int64)[order], [self.values[i] for i in order]


def _trajectory_target(traj: tuple, t_ns: int) -> np.ndarray | None:
    """(start_ns, times_s (K,), points (K, D)) evaluated at t_ns; None for an empty trajectory (hold)."""
    start, times, points = traj
    if len(points) == 0:
        return None
    t = (t_ns - start) * 1e-9
    return np.array([np.interp(t, times, points[:, j]) for j in range(points.shape[1])])


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
        streams = {k: _Stream() for k in wanted}
        keys_of: dict[int, list[str]] = {}  # a topic may serve twice (instruction and episode_topic)
        for k, v in wanted.items():
            keys_of.setdefault(by_topic[v].id, []).append(k)
        ordinals = {k: 0 for k in wanted}
        joints = list(cfg.joints) if cfg.joints else None
        connections = list({by_topic[v].id: by_topic[v] for v in wanted.values()}.values())
        for conn, log_ns, raw in reader.messages(connections=connections):
            msg = reader.deserialize(raw, conn.msgtype)
            stamp = _stamp(msg, log_ns)
            for key in keys_of[conn.id]:
                stream = streams[key]
                stream.stamps.append(stamp)
                if key.startswith("camera:"):
                    stream.values.append(ordinals[key])
                    ordinals[key] += 1
                elif key == "state":
                    if joints is None:
                        joints = [str(n) for n in msg.name]
                    stream.values.append(_ordered(list(msg.name), msg.position, joints, "state"))
                elif key == "action":
                    stream.values.append(_action_value(msg, conn.msgtype, joints, stamp))
                elif key in ("instruction", "status"):
                    stream.values.append(str(msg.data))
                else:
                    stream.values.append(None)
        for key in ("state", "instruction", *(k for k in wanted if k.startswith("camera:"))):
            if not streams[key].stamps:
                raise DatasetError(f"bag: expected messages on {wanted[key]}, received none")

        fps = cfg.fps or _rate(np.asarray(streams["state"].stamps, np.int64))
        ticks, episode_of = _ticks(cfg, streams, fps)
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
                    jpegs[key][n] = _jpeg(msg, conn.msgtype)
                    bar.update(1)
        bar.close()

    # Assemble the episodes.
    joints = joints or []
    states = np.stack(ordered["state"][1])[at["state"]].astype(np.float32)
    actions = np.empty_like(states)
    action_stamps, action_values = ordered["action"]
    for i, t in enumerate(ticks):
        j = at["action"][i]
        value = None
        if j >= 0:
            value = action_values[j]
            value = _trajectory_target(value, int(t)) if isinstance(value, tuple) else value
        actions[i] = states[i] if value is None else value
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
    for number, rows in enumerate(_split(episode_of)):
        if len(rows) < cfg.min_steps or str(number) in manifest["episodes"]:
            continue
        frames = {}
        for cam in cfg.cameras:
            key = f"camera:{cam}"
            frames[cam] = [jpegs[key][ordered[key][1][at[key][i]]][0] for i in rows]
        text = instructions[rows[0]]
        episode = Episode(states[rows], actions[rows], frames, text, text, number,
                          {k: np.full(3, np.nan, np.float32) for k in GROUNDING_KEYS}, None,
                          (ticks[rows] - ticks[rows[0]]).astype(np.float64) * 1e-9)
        describe_episode(manifest, episode)
        data = episode_to_bytes(episode)
        name = episode_filename(number)
        atomic_write_bytes(out / name, data)
        manifest["episodes"][str(number)] = episode_entry(episode, name, data)
        save_manifest(out, manifest)
    if not manifest["episodes"]:
        raise DatasetError(f"bag: expected at least one episode of >= {cfg.min_steps} aligned steps after an "
                           f"instruction on {cfg.instruction}, received none")
    save_manifest(out, manifest)
    return manifest


def _action_value(msg, msgtype: str, joints: list[str] | None, stamp: int):
    if msgtype.endswith("JointTrajectory"):
        if not msg.points:
            return (stamp, np.zeros(0), np.zeros((0, 0)))
        if joints is None:
            joints = [str(n) for n in msg.joint_names]
        times = np.array([p.time_from_start.sec + p.time_from_start.nanosec * 1e-9 for p in msg.points])
        points = np.stack([_ordered(list(msg.joint_names), p.positions, joints, "action") for p in msg.points])
        return (stamp, times, points)
    if msgtype.endswith("JointState"):
        return _ordered(list(msg.name), msg.position, joints or list(msg.name), "action")
    return np.asarray(msg.data, np.float64)


def _rate(stamps: np.ndarray) -> float:
    """The control rate a stream shows: 1 / its median message interval (Hz, rounded to 0.1)."""
    if len(stamps) < 3:
        raise DatasetError(f"bag: expected >= 3 state messages to estimate the control rate, received {len(stamps)}; "
                           f"give fps in the topics file")
    interval = float(np.median(np.diff(np.sort(stamps)))) * 1e-9
    if interval <= 0:
        raise DatasetError("bag: expected increasing state stamps to estimate the control rate; give fps")
    return round(1.0 / interval, 1)


def _ticks(cfg: TopicsConfig, streams: dict[str, _Stream], fps: float) -> tuple[np.ndarray, np.ndarray]:
    """The control clock (ns) and, per tick, its episode number (-1: dropped)."""
    sensors = ["state", *(k for k in streams if k.startswith("camera:"))]
    start = max(min(streams[k].stamps) for k in sensors)
    end = min(max(streams[k].stamps) for k in sensors)
    period = 1e9 / fps
    ticks = (start + np.arange(int((end - start) // period) + 1) * period).astype(np.int64)
    max_age = int(cfg.max_age_s * 1e9)
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


def _split(episode_of: np.ndarray) -> list[np.ndarray]:
    numbers = episode_of[episode_of >= 0]
    return [np.flatnonzero(episode_of == n) for n in np.unique(numbers)]
