"""LeRobot datasets (v3.0 / v2.1) -> our `mot-dataset/1`: `import_lerobot`, `lerobot_features`.

Import (`import_lerobot`): every LeRobot episode becomes one of our episodes (seed = its episode_index),
its task string the instruction, frames JPEG at the source resolution, fps and per-frame timestamps
kept. A mapping file (YAML, `Mapping`) names which features feed which camera, the state and the action:

    cameras: {front: observation.images.top, wrist: observation.images.wrist}   # our name: LeRobot key
    state: [observation.state]          # concatenated in this order
    action: [action]
    delta_action_mask: [true, true, true, true, true, true, false]   # optional (default: from the names)

Without one, every image/video feature is a camera (named by its key less "observation.images."),
the state is `observation.state` and the action `action`. An import is resumable: re-running it skips
the episodes its manifest lists.

Frames come from the mp4s (`_VideoCursor`, PyAV) or, for image features, the parquet's encoded images.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass
from pathlib import Path

import av
import cv2
import numpy as np
import yaml
from av.video.reformatter import VideoReformatter
from tqdm import tqdm

from policy.errors import DatasetError, InputError
from training.episodes import Episode, encode_frame, unknown_grounding
from training.features import DatasetFeatures, default_delta_mask
from training.lerobot_layout import IMAGE_PREFIX, LeRobotSource, column_array
from training.manifest import load_manifest, new_manifest, save_manifest, store_episode


@dataclass
class Mapping:
    """LeRobot feature keys -> our dataset: cameras {our name: key}, state/action keys (concatenated)."""

    cameras: dict[str, str]
    state: list[str]
    action: list[str]
    delta_action_mask: list[bool] | None = None

    @classmethod
    def default(cls, features: dict) -> "Mapping":
        cams = {_camera_name(k): k for k, ft in features.items() if ft.get("dtype") in ("video", "image")}
        return cls(cams, ["observation.state"] if "observation.state" in features else [],
                   ["action"] if "action" in features else [])

    @classmethod
    def load(cls, path: str | Path | None, features: dict) -> "Mapping":
        """The mapping file at `path` (YAML or JSON), or the default mapping; checked against `features`."""
        if path is None:
            mapping = cls.default(features)
        else:
            try:
                raw = yaml.safe_load(Path(path).read_text())
            except (OSError, yaml.YAMLError) as e:
                raise InputError(f"map: expected a readable YAML mapping file, received {path} ({e})") from e
            if not isinstance(raw, dict) or set(raw) - {"cameras", "state", "action", "delta_action_mask"}:
                raise InputError(f"map: expected keys among cameras, state, action, delta_action_mask, received "
                                 f"{sorted(raw) if isinstance(raw, dict) else type(raw).__name__}")
            default = cls.default(features)

            def keys(name: str) -> list[str]:
                value = raw.get(name, getattr(default, name))
                return [value] if isinstance(value, str) else list(value)

            cams = raw.get("cameras", default.cameras)
            if isinstance(cams, list):  # a list of keys: name them as the default does
                cams = {_camera_name(k): k for k in cams}
            mapping = cls(dict(cams), keys("state"), keys("action"), raw.get("delta_action_mask"))
        mapping.check(features)
        return mapping

    def check(self, features: dict) -> None:
        available = sorted(features)
        for name, key in self.cameras.items():
            if features.get(key, {}).get("dtype") not in ("video", "image"):
                raise InputError(f"map.cameras.{name}: expected an image or video feature among {available}, "
                                 f"received {key!r}")
        for part in ("state", "action"):
            keys = getattr(self, part)
            if not keys:
                raise InputError(f"map.{part}: expected at least one feature key (the dataset has {available}), "
                                 f"received none")
            for key in keys:
                ft = features.get(key)
                if ft is None or ft.get("dtype") in ("video", "image", "string") or len(ft.get("shape", ())) != 1:
                    raise InputError(f"map.{part}: expected 1-D numeric features among {available}, received {key!r}")
        if not self.cameras:
            raise InputError(f"map.cameras: expected at least one image or video feature, the dataset has {available}")
        if self.delta_action_mask is not None:
            dim = sum(int(features[k]["shape"][0]) for k in self.action)
            if len(self.delta_action_mask) != dim or not all(isinstance(m, bool) for m in self.delta_action_mask):
                raise InputError(f"map.delta_action_mask: expected {dim} booleans (one per action dimension), "
                                 f"received {self.delta_action_mask!r}")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def _camera_name(key: str) -> str:
    name = key.removeprefix(IMAGE_PREFIX).removeprefix("observation.")
    return re.sub(r"[^A-Za-z0-9_]", "_", name)


def _names(ft: dict) -> list[str]:
    """A feature's per-dimension names: a list, or (v2-era) {"motors": [...]}; numbered when absent."""
    names = ft.get("names")
    if isinstance(names, dict):
        names = next((v for v in names.values() if isinstance(v, list)), None)
    dim = int(ft["shape"][0])
    if not isinstance(names, list) or len(names) != dim:
        return []
    return [str(n) for n in names]


def _image_hw(ft: dict) -> tuple[int, int]:
    """(H, W) of an image/video feature, whose shape is (H, W, C) or, by its names, (C, H, W)."""
    shape, names = list(ft["shape"]), ft.get("names") or []
    if len(shape) != 3:
        raise DatasetError(f"features: expected an image shape of 3 numbers, received {shape}")
    if names and names[0] in ("channel", "channels"):
        return int(shape[1]), int(shape[2])
    return int(shape[0]), int(shape[1])


class _VideoCursor:
    """Reads one camera's frames episode after episode, keeping its mp4 open between episodes: v3 files
    hold many episodes in a row, so the decoder only ever moves forward (or seeks to a keyframe)."""

    SEEK_AHEAD_S = 2.0  # further ahead than this, seek instead of decoding every frame on the way

    def __init__(self):
        self.path: Path | None = None
        self.container = None
        self.frames = None
        self.prev = self.cur = None  # decoded av.VideoFrame before / at the cursor
        # one reformatter for all frames: it keeps its swscale context (Frame.to_ndarray(format=) builds one
        # per frame, several times slower)
        self.reformatter = VideoReformatter()

    def close(self) -> None:
        if self.container is not None:
            self.container.close()
        self.container = self.frames = self.prev = self.cur = None
        self.path = None

    def _open(self, path: Path, at: float) -> None:
        self.close()
        if not path.is_file():
            raise DatasetError(f"lerobot: expected video {path}, it does not exist")
        self.container = av.open(str(path))
        stream = self.container.streams.video[0]
        stream.thread_type = "AUTO"
        if at > self.SEEK_AHEAD_S:
            self.container.seek(int(at / stream.time_base), stream=stream, backward=True)
        self.frames, self.path = self.container.decode(stream), path

    def _advance(self) -> bool:
        self.prev, self.cur = self.cur, next(self.frames, None)
        return self.cur is not None

    def read(self, path: Path, times: np.ndarray, tolerance: float) -> list[np.ndarray]:
        """The frames nearest to `times` (seconds in the file, increasing) as (H, W, 3) uint8 RGB arrays."""
        if path != self.path or (self.cur is not None and self.cur.time > times[0] + tolerance) \
                or (self.cur is not None and times[0] - self.cur.time > self.SEEK_AHEAD_S):
            self._open(path, float(times[0]))
        if self.cur is None:
            self._advance()
        out = []
        for target in times:
            while self.cur is not None and self.cur.time < target - 1e-9:
                self._advance()
            best = min((f for f in (self.prev, self.cur) if f is not None), default=None,
                       key=lambda f: abs(f.time - target))
            if best is None or abs(best.time - target) > tolerance:
                got = "no frame" if best is None else f"the nearest at {best.time:.4f} s"
                raise DatasetError(f"lerobot: expected a frame at {target:.4f} s in {path} (within {tolerance:.4f} s), "
                                   f"received {got}")
            out.append(self.reformatter.reformat(best, format="rgb24").to_ndarray())
        return out


def _decode_image_cell(cell, root: Path) -> np.ndarray:
    """A parquet image cell ({bytes, path}: PNG/JPEG) -> (H, W, 3) uint8 RGB."""
    data = cell.get("bytes") if isinstance(cell, dict) else cell
    if not data and isinstance(cell, dict) and cell.get("path"):
        data = (root / cell["path"]).read_bytes()
    img = cv2.imdecode(np.frombuffer(data or b"", np.uint8), cv2.IMREAD_COLOR) if data else None
    if img is None:
        raise DatasetError("lerobot: expected an encoded image (PNG/JPEG bytes) in an image column, received none")
    return cv2.cvtColor(img, cv2.COLOR_BGR2RGB)


def lerobot_features(root: str | Path, mapping: str | Path | Mapping | None = None) -> DatasetFeatures:
    """A LeRobot dataset directory -> the DatasetFeatures an import with `mapping` would give."""
    source = LeRobotSource(root)
    m = mapping if isinstance(mapping, Mapping) else Mapping.load(mapping, source.features)
    state_names = sum((_names(source.features[k]) or [] for k in m.state), [])
    action_names = sum((_names(source.features[k]) or [] for k in m.action), [])
    state_dim = sum(int(source.features[k]["shape"][0]) for k in m.state)
    action_dim = sum(int(source.features[k]["shape"][0]) for k in m.action)
    state_names = state_names if len(state_names) == state_dim else None
    action_names = action_names if len(action_names) == action_dim else None
    mask = tuple(m.delta_action_mask) if m.delta_action_mask is not None else default_delta_mask(state_names, action_names)
    return DatasetFeatures(tuple(m.cameras), {c: _image_hw(source.features[k]) for c, k in m.cameras.items()},
                           state_dim, action_dim, source.fps, mask, tuple(state_names) if state_names else None,
                           tuple(action_names) if action_names else None, source.format)


def import_lerobot(src: str | Path, out: str | Path, mapping: str | Path | None = None,
                   progress: bool = True) -> dict:
    """A LeRobot dataset (v3.0 / v2.1) at `src` -> our dataset at `out` (resumable); returns the manifest."""
    source, out = LeRobotSource(src), Path(out)
    m = Mapping.load(mapping, source.features)
    features = lerobot_features(src, m)
    src_info = {"format": source.format, "path": str(Path(src).resolve()), "mapping": m.to_dict(),
                "robot_type": source.info.get("robot_type")}
    if (out / "manifest.json").exists():
        manifest = load_manifest(out)
        old = manifest.get("source") or {}
        if {k: old.get(k) for k in ("format", "path", "mapping")} != {k: src_info[k] for k in ("format", "path", "mapping")}:
            raise InputError(f"out: {out} holds a dataset imported from {old.get('path')!r} ({old.get('format')}) "
                             f"with another mapping or source; use another --out")
    else:
        shapes = set(features.image_shapes.values())
        side = next(iter(shapes))[0] if len(shapes) == 1 and len(set(next(iter(shapes)))) == 1 else None
        manifest = new_manifest(f"lerobot:{src_info['path']}", "", list(m.cameras), side, "train", source.fps, src_info)
        manifest.update(image_shapes={c: list(s) for c, s in features.image_shapes.items()},
                        state_dim=features.state_dim, action_dim=features.action_dim)
        if features.state_names:
            manifest["state_names"] = list(features.state_names)
        if features.action_names:
            manifest["action_names"] = list(features.action_names)
        if m.delta_action_mask is not None:
            manifest["delta_action_mask"] = list(m.delta_action_mask)
    out.mkdir(parents=True, exist_ok=True)
    videos = {cam: _VideoCursor() for cam, key in m.cameras.items() if source.features[key]["dtype"] == "video"}
    tolerance = 0.5 / source.fps if source.fps else 0.02  # half a frame period
    columns = list(dict.fromkeys([*m.state, *m.action, *(k for c, k in m.cameras.items() if c not in videos)]))
    todo = [ep for ep in source.episodes if str(ep.get("mot/seed", ep["episode_index"])) not in manifest["episodes"]]
    bar = tqdm(todo, desc="import lerobot", unit="ep", disable=not progress)
    try:
        for ep in bar:
            seed = int(ep.get("mot/seed", ep["episode_index"]))
            table = source.rows(ep, columns)
            n = table.num_rows
            timestamps = (column_array(table, "timestamp")[:, 0].astype(np.float64) if "timestamp" in table.column_names
                          else np.arange(n) / (source.fps or 1.0))
            states = np.concatenate([column_array(table, k) for k in m.state], axis=1).astype(np.float32)
            actions = np.concatenate([column_array(table, k) for k in m.action], axis=1).astype(np.float32)
            frames: dict[str, list[bytes]] = {}
            for cam, key in m.cameras.items():
                if cam in videos:
                    path, start = source.video_file(ep, key)
                    images = videos[cam].read(path, start + timestamps, tolerance)
                else:
                    images = [_decode_image_cell(cell, source.root) for cell in table.column(key).to_pylist()]
                frames[cam] = [encode_frame(img) for img in images]
            task_index = int(table.column("task_index")[0].as_py()) if n and "task_index" in table.column_names else None
            instruction = source.instruction(ep, task_index)
            episode = Episode(states, actions, frames, instruction, str(ep.get("mot/task") or instruction), seed,
                              unknown_grounding(), None, timestamps)
            store_episode(out, manifest, episode)
    finally:
        for cursor in videos.values():
            cursor.close()
    save_manifest(out, manifest)
    return manifest

