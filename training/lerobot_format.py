"""LeRobot datasets on disk <-> our `mot-dataset/1`: import v3.0 and v2.1, export v3.0.

The LeRobot layouts (as LeRobot's own `LeRobotDatasetMetadata` / `LeRobotDataset` read them):

    v3.0  meta/info.json        codebase_version "v3.0", fps, features {key: {dtype, shape, names}}, data_path
                                "data/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet", video_path
                                "videos/{video_key}/chunk-{chunk_index:03d}/file-{file_index:03d}.mp4", chunks_size
          meta/tasks.parquet    task_index, the task string as the pandas index
          meta/episodes/chunk-XXX/file-XXX.parquet   one row per episode: episode_index, tasks, length,
                                data/chunk_index, data/file_index, dataset_from_index, dataset_to_index,
                                videos/<key>/{chunk_index, file_index, from_timestamp, to_timestamp}, stats/...
          meta/stats.json       per feature min/max/mean/std/count/q01..q99
          data/...parquet       index, episode_index, frame_index, timestamp, task_index, observation.state,
                                action, ... (several episodes per file)
          videos/<key>/...mp4   several episodes per file; an episode's frame k is at from_timestamp + timestamp[k]
    v2.1  meta/info.json        codebase_version "v2.1", data_path
                                "data/chunk-{episode_chunk:03d}/episode_{episode_index:06d}.parquet", video_path
                                "videos/chunk-{episode_chunk:03d}/{video_key}/episode_{episode_index:06d}.mp4"
          meta/episodes.jsonl   {episode_index, tasks, length}; meta/tasks.jsonl {task_index, task};
          meta/episodes_stats.jsonl; one parquet and one mp4 per episode (timestamps from 0)

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

Export (`export_lerobot`): our dataset as LeRobot v3.0, so LeRobot, openpi and GR00T loaders read it:
H.264 (libx264, yuv420p; `training.video.encoder()` falls back where the build has none) mp4s through
PyAV, parquet through pyarrow. The episode's seed and task family travel as the extra episode columns
`mot/seed` and `mot/task`, so importing an export gives back the same episodes.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import shutil
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av
import cv2
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import yaml
from av.video.reformatter import VideoReformatter
from tqdm import tqdm

from policy.artifacts import atomic_path, atomic_write_json, temp_dir_beside
from policy.errors import DatasetError, InputError
from training.data import (
    GROUNDING_KEYS,
    DatasetFeatures,
    Episode,
    atomic_write_bytes,
    dataset_features,
    default_delta_mask,
    describe_episode,
    encode_frame,
    episode_entry,
    episode_filename,
    episode_to_bytes,
    iter_episodes,
    load_manifest,
    new_manifest,
    save_manifest,
)
from training.video import encoder

V30, V21, V20 = "v3.0", "v2.1", "v2.0"
V3_DATA_PATH = "data/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet"
V3_VIDEO_PATH = "videos/{video_key}/chunk-{chunk_index:03d}/file-{file_index:03d}.mp4"
V3_EPISODES_PATH = "meta/episodes/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet"
CHUNKS_SIZE = 1000  # files per chunk directory (LeRobot's default)
DATA_FILE_MB, VIDEO_FILE_MB = 100, 200  # LeRobot's defaults: a new file once one would grow past these
QUANTILES = (0.01, 0.10, 0.50, 0.90, 0.99)
IMAGE_PREFIX = "observation.images."
INDEX_FEATURES = {"timestamp": "float32", "frame_index": "int64", "episode_index": "int64", "index": "int64",
                  "task_index": "int64"}


# -- which LeRobot features feed our cameras, state and action ---------------------------------------
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


# -- reading a LeRobot dataset --------------------------------------------------------------------------
class LeRobotSource:
    """A LeRobot dataset directory (v3.0, v2.1 or v2.0): metadata, and per episode its rows and frames."""

    def __init__(self, root: str | Path):
        self.root = Path(root)
        info_path = self.root / "meta" / "info.json"
        if not info_path.is_file():
            raise DatasetError(f"lerobot: expected {info_path}; is {self.root} a LeRobot dataset (v2.1 or v3.0)?")
        try:
            self.info = json.loads(info_path.read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise DatasetError(f"lerobot: expected {info_path} to be JSON ({e})") from e
        self.version = str(self.info.get("codebase_version", ""))
        if self.version not in (V30, V21, V20):
            raise DatasetError(f"lerobot.codebase_version: expected one of {[V30, V21, V20]}, received {self.version!r}")
        self.features: dict = self.info.get("features") or {}
        self.fps = float(self.info["fps"]) if self.info.get("fps") else None
        self.tasks = self._load_tasks()
        self.episodes = self._load_episodes()
        self._table_path: Path | None = None
        self._table: pa.Table | None = None

    @property
    def format(self) -> str:
        return f"lerobot/{self.version}"

    def _load_tasks(self) -> dict[int, str]:
        if self.version == V30:
            path = self.root / "meta" / "tasks.parquet"
            if not path.is_file():
                return {}
            table = pq.read_table(path)
            text = _task_text_column(table)
            return dict(zip(table.column("task_index").to_pylist(), table.column(text).to_pylist()))
        path = self.root / "meta" / "tasks.jsonl"
        return {int(r["task_index"]): str(r["task"]) for r in _jsonl(path)} if path.is_file() else {}

    def _load_episodes(self) -> list[dict]:
        if self.version == V30:
            files = sorted((self.root / "meta" / "episodes").glob("chunk-*/file-*.parquet"))
            if not files:
                raise DatasetError(f"lerobot: expected meta/episodes/chunk-*/file-*.parquet in {self.root}, found none")
            rows: list[dict] = []
            for path in files:
                columns = [c for c in pq.read_schema(path).names if not c.startswith("stats/")]
                rows += pq.read_table(path, columns=columns).to_pylist()
            return sorted(rows, key=lambda r: r["episode_index"])
        path = self.root / "meta" / "episodes.jsonl"
        if not path.is_file():
            raise DatasetError(f"lerobot: expected {path} (a v2.x dataset), it does not exist")
        return sorted(_jsonl(path), key=lambda r: r["episode_index"])

    # -- where an episode's rows and frames are --------------------------------------------------------
    def data_file(self, ep: dict) -> Path:
        if self.version == V30:
            return self.root / self.info.get("data_path", V3_DATA_PATH).format(
                chunk_index=ep["data/chunk_index"], file_index=ep["data/file_index"])
        chunk = ep["episode_index"] // int(self.info.get("chunks_size") or CHUNKS_SIZE)
        return self.root / self.info["data_path"].format(episode_chunk=chunk, episode_index=ep["episode_index"])

    def video_file(self, ep: dict, key: str) -> tuple[Path, float]:
        """(mp4 path, the time in it where the episode's frame 0 is)."""
        if self.version == V30:
            path = self.info.get("video_path") or V3_VIDEO_PATH
            return (self.root / path.format(video_key=key, chunk_index=ep[f"videos/{key}/chunk_index"],
                                            file_index=ep[f"videos/{key}/file_index"]),
                    float(ep.get(f"videos/{key}/from_timestamp") or 0.0))
        chunk = ep["episode_index"] // int(self.info.get("chunks_size") or CHUNKS_SIZE)
        return self.root / self.info["video_path"].format(episode_chunk=chunk, video_key=key,
                                                          episode_index=ep["episode_index"]), 0.0

    def rows(self, ep: dict, columns: list[str]) -> pa.Table:
        """The episode's rows (in frame order) of the data parquet: `columns`, and timestamp, task_index,
        episode_index and frame_index where the file has them."""
        path = self.data_file(ep)
        if path != self._table_path:  # v3 files hold many episodes: read each file once
            if not path.is_file():
                raise DatasetError(f"lerobot: expected {path} (episode {ep['episode_index']}), it does not exist")
            names = pq.read_schema(path).names
            wanted = [c for c in dict.fromkeys([*INDEX_FEATURES, *columns]) if c in names]
            self._table, self._table_path = pq.read_table(path, columns=wanted), path
        table = self._table
        missing = [c for c in columns if c not in table.column_names]
        if missing:
            raise DatasetError(f"lerobot: expected columns {missing} in {path}, it has {table.column_names}")
        if self.version == V30:
            table = table.filter(pc.equal(table.column("episode_index"), ep["episode_index"]))
        if "frame_index" in table.column_names:
            table = table.take(pc.sort_indices(table.column("frame_index")))
        if table.num_rows != int(ep.get("length", table.num_rows)):
            raise DatasetError(f"lerobot: episode {ep['episode_index']}: expected {ep['length']} rows (meta length), "
                               f"received {table.num_rows} in {path}")
        return table

    def instruction(self, ep: dict, task_index: int | None) -> str:
        if task_index is not None and task_index in self.tasks:
            return self.tasks[task_index]
        tasks = ep.get("tasks") or []
        return str(tasks[0]) if tasks else ""


def _task_text_column(table: pa.Table) -> str:
    for name in ("task", "__index_level_0__"):
        if name in table.column_names:
            return name
    meta = json.loads((table.schema.metadata or {}).get(b"pandas", b"{}"))
    index = [c for c in meta.get("index_columns", []) if isinstance(c, str)]
    if index:
        return index[0]
    raise DatasetError(f"lerobot: expected the task text in meta/tasks.parquet, it has columns {table.column_names}")


def _jsonl(path: Path) -> list[dict]:
    try:
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    except (OSError, json.JSONDecodeError) as e:
        raise DatasetError(f"lerobot: expected JSON lines in {path} ({e})") from e


def column_array(table: pa.Table, key: str) -> np.ndarray:
    """A numeric column (scalars or fixed/variable lists) -> (rows, dim) numpy array."""
    col = table.column(key).combine_chunks()
    if pa.types.is_list(col.type) or pa.types.is_large_list(col.type) or pa.types.is_fixed_size_list(col.type):
        values = col.flatten().to_numpy(zero_copy_only=False)
        return values.reshape(len(col), -1) if len(col) else values.reshape(0, 0)
    return col.to_numpy(zero_copy_only=False).reshape(len(col), 1)


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
                              {k: np.full(3, np.nan, np.float32) for k in GROUNDING_KEYS}, None, timestamps)
            _store(out, manifest, episode)
    finally:
        for cursor in videos.values():
            cursor.close()
    save_manifest(out, manifest)
    return manifest


def _store(out: Path, manifest: dict, episode: Episode) -> None:
    """Writes one episode file and records it in the manifest (saved after every episode: resumable)."""
    describe_episode(manifest, episode)
    data = episode_to_bytes(episode)
    name = episode_filename(episode.seed)
    atomic_write_bytes(out / name, data)
    manifest["episodes"][str(episode.seed)] = episode_entry(episode, name, data)
    save_manifest(out, manifest)


# -- writing LeRobot v3.0 ---------------------------------------------------------------------------------
class _Stats:
    """min/max/mean/std/count and quantiles of a feature, LeRobot's stats.json entry."""

    @staticmethod
    def of(values: np.ndarray) -> dict:
        values = np.asarray(values, np.float64)
        out = {"min": values.min(0), "max": values.max(0), "mean": values.mean(0), "std": values.std(0),
               "count": np.array([len(values)])}
        for q in QUANTILES:
            out[f"q{int(round(q * 100)):02d}"] = np.quantile(values, q, axis=0)
        return {k: v.tolist() for k, v in out.items()}

    @staticmethod
    def image(pixels: np.ndarray, count: int) -> dict:
        """Sampled pixels (N, 3) in [0, 1] -> per-channel stats shaped (3, 1, 1), as LeRobot stores them."""
        stats = _Stats.of(pixels)
        return {k: (v if k == "count" else [[[x]] for x in v]) for k, v in {**stats, "count": [count]}.items()}


class _Mp4:
    """One camera's current mp4 of a v3 export: episodes appended in a row, frame pts = frame number."""

    def __init__(self, tmp: Path, size: tuple[int, int], fps: float, codec: str, crf: int, gop: int):
        h, w = size
        self.container = av.open(str(tmp), "w", format="mp4")
        rate = Fraction(fps).limit_denominator(1001)
        self.stream = self.container.add_stream(codec, rate=rate)
        self.stream.width, self.stream.height = w, h
        # yuv420p halves the chroma: it needs even sizes; odd-sized frames keep full chroma (yuv444p).
        self.stream.pix_fmt = "yuv420p" if (h % 2 == 0 and w % 2 == 0) or codec == "mpeg4" else "yuv444p"
        options = {"g": str(gop)}
        if codec in ("libx264", "h264"):
            options.update(crf=str(crf), preset="veryfast")
        else:
            self.stream.bit_rate = max(1_000_000, int(w * h * float(fps) * 2))
        self.stream.options = options
        self.frames = 0
        self.size = size

    def add(self, rgb: np.ndarray) -> None:
        if rgb.shape[:2] != self.size:
            raise DatasetError(f"export: expected every frame of a camera to be {self.size}, received {rgb.shape[:2]}")
        frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb), format="rgb24")
        frame.pts = self.frames
        self.container.mux(self.stream.encode(frame))
        self.frames += 1

    def close(self) -> None:
        self.container.mux(self.stream.encode(None))
        self.container.close()


def _next_file(chunk: int, file: int) -> tuple[int, int]:
    return (chunk + 1, 0) if file == CHUNKS_SIZE - 1 else (chunk, file + 1)


def _fixed_list(values: np.ndarray) -> pa.Array:
    values = np.ascontiguousarray(values, np.float32)
    return pa.FixedSizeListArray.from_arrays(pa.array(values.reshape(-1)), values.shape[1])


def _write_parquet(path: Path, table: pa.Table) -> None:
    with atomic_path(path, ".parquet") as tmp:
        pq.write_table(table, tmp, compression="snappy")


def export_lerobot(src: str | Path, out: str | Path, fps: float | None = None, codec: str | None = None,
                   crf: int = 18, gop: int = 2, overwrite: bool = False, progress: bool = True) -> dict:
    """Our dataset at `src` -> a LeRobot v3.0 dataset at `out`; returns its meta/info.json.

    fps: the frame rate to declare, when the dataset does not record one. codec: a PyAV encoder name
    (default `training.video.encoder()`: libx264, else h264, else mpeg4). crf: H.264 quality (0 lossless,
    18 visually lossless, LeRobot records at 30). gop: frames between keyframes (LeRobot's 2: any frame
    decodes after at most one other). The dataset is built in a temporary directory beside `out` and
    renamed onto it when complete.
    """
    src, out = Path(src), Path(out)
    manifest = load_manifest(src)
    feats = dataset_features(src)
    fps = fps or feats.fps
    if not fps or not np.isfinite(fps) or fps <= 0:
        raise InputError(f"fps: expected the dataset's frame rate (its manifest records none: collected before fps was "
                         f"recorded), received {fps!r}; pass --fps")
    if out.exists() and any(out.iterdir()):
        if not overwrite:
            raise InputError(f"out: expected a new or empty directory, received {out} (not empty); pass --overwrite")
    codec = codec or encoder()
    fps_value = int(fps) if float(fps).is_integer() else float(fps)
    cams = list(manifest["cameras"])
    keys = {cam: IMAGE_PREFIX + cam for cam in cams}
    state_names = list(feats.state_names or [f"state_{i}" for i in range(feats.state_dim)])
    action_names = list(feats.action_names or [f"action_{i}" for i in range(feats.action_dim)])
    tmp_root = temp_dir_beside(out)
    try:
        tasks: dict[str, int] = {}
        ep_rows: list[dict] = []
        data_parts: list[dict] = []  # per data file: lists of per-episode column arrays
        data_chunk = data_file = 0
        data_bytes = 0
        video = {cam: None for cam in cams}  # cam -> (_Mp4, atomic_path context, chunk, file)
        video_at = {cam: (0, 0) for cam in cams}
        sample_pixels: dict[str, list[np.ndarray]] = {cam: [] for cam in cams}
        frame_counts = {cam: 0 for cam in cams}
        all_states, all_actions = [], []
        index = 0
        row_bytes = 4 * (feats.state_dim + feats.action_dim) + 40

        def open_video(cam: str, size: tuple[int, int]):
            chunk, file = video_at[cam]
            ctx = atomic_path(tmp_root / V3_VIDEO_PATH.format(video_key=keys[cam], chunk_index=chunk, file_index=file),
                              ".mp4")
            tmp = ctx.__enter__()
            return _Mp4(tmp, size, fps_value, codec, crf, gop), ctx, tmp

        def close_video(cam: str) -> None:
            mp4, ctx, _ = video[cam]
            mp4.close()
            ctx.__exit__(None, None, None)
            video[cam] = None

        def flush_data() -> None:
            nonlocal data_chunk, data_file
            if not data_parts:
                return
            cols = {name: np.concatenate([p[name] for p in data_parts]) for name in data_parts[0]}
            table = pa.table({"observation.state": _fixed_list(cols["observation.state"]),
                              "action": _fixed_list(cols["action"]),
                              **{k: pa.array(cols[k], type=getattr(pa, t)()) for k, t in INDEX_FEATURES.items()}})
            _write_parquet(tmp_root / V3_DATA_PATH.format(chunk_index=data_chunk, file_index=data_file), table)
            data_parts.clear()
            data_chunk, data_file = _next_file(data_chunk, data_file)

        total = len(manifest["episodes"])
        bar = tqdm(iter_episodes(src, manifest), total=total, desc="export lerobot", unit="ep", disable=not progress)
        for ep_index, ep in enumerate(bar):
            n = ep.steps
            task_index = tasks.setdefault(ep.instruction, len(tasks))
            if data_parts and data_bytes + n * row_bytes > DATA_FILE_MB * 2**20:
                flush_data()
                data_bytes = 0
            row = {"episode_index": ep_index, "tasks": [ep.instruction], "length": n,
                   "data/chunk_index": data_chunk, "data/file_index": data_file,
                   "dataset_from_index": index, "dataset_to_index": index + n}
            for cam in cams:
                images = [ep.decode_frame(cam, t) for t in range(n)]
                if video[cam] is None:
                    video[cam] = open_video(cam, images[0].shape[:2])
                mp4 = video[cam][0]
                start = mp4.frames
                for img in images:
                    mp4.add(img)
                chunk, file = video_at[cam]
                row.update({f"videos/{keys[cam]}/chunk_index": chunk, f"videos/{keys[cam]}/file_index": file,
                            f"videos/{keys[cam]}/from_timestamp": start / fps_value,
                            f"videos/{keys[cam]}/to_timestamp": (start + n) / fps_value})
                # stats.json's image entry: every 4th pixel of every 5th frame, in [0, 1]
                sample_pixels[cam] += [img[::4, ::4].reshape(-1, 3) / 255.0 for img in images[::5]]
                frame_counts[cam] += n
                if os.path.getsize(video[cam][2]) > VIDEO_FILE_MB * 2**20:
                    close_video(cam)
                    video_at[cam] = _next_file(*video_at[cam])
            frame_index = np.arange(n, dtype=np.int64)
            columns = {"observation.state": ep.states.astype(np.float32), "action": ep.actions.astype(np.float32),
                       "timestamp": (frame_index / fps_value).astype(np.float32), "frame_index": frame_index,
                       "episode_index": np.full(n, ep_index, np.int64), "index": np.arange(index, index + n, dtype=np.int64),
                       "task_index": np.full(n, task_index, np.int64)}
            data_parts.append(columns)
            data_bytes += n * row_bytes
            for name in ("observation.state", "action", "timestamp", "frame_index", "episode_index", "index", "task_index"):
                values = columns[name] if columns[name].ndim == 2 else columns[name][:, None]
                for stat, value in _Stats.of(values).items():
                    row[f"stats/{name}/{stat}"] = value
            row.update({"meta/episodes/chunk_index": 0, "meta/episodes/file_index": 0, "mot/seed": ep.seed,
                        "mot/task": ep.task})
            ep_rows.append(row)
            all_states.append(ep.states)
            all_actions.append(ep.actions)
            index += n
        if not ep_rows:
            raise DatasetError(f"export: expected at least one readable episode in {src}, received none")
        flush_data()
        video_info = {}
        for cam in cams:
            if video[cam] is not None:
                close_video(cam)
            first = tmp_root / V3_VIDEO_PATH.format(video_key=keys[cam], chunk_index=0, file_index=0)
            video_info[cam] = _video_info(first)

        # meta/episodes, meta/tasks.parquet, meta/stats.json, meta/info.json
        _write_parquet(tmp_root / V3_EPISODES_PATH.format(chunk_index=0, file_index=0), pa.Table.from_pylist(ep_rows))
        _write_parquet(tmp_root / "meta" / "tasks.parquet", _tasks_table(tasks))
        states, actions = np.concatenate(all_states), np.concatenate(all_actions)
        frame_index = np.concatenate([np.arange(r["length"]) for r in ep_rows])
        stats = {"observation.state": _Stats.of(states), "action": _Stats.of(actions),
                 "timestamp": _Stats.of((frame_index / fps_value)[:, None]), "frame_index": _Stats.of(frame_index[:, None]),
                 "episode_index": _Stats.of(np.concatenate([[r["episode_index"]] * r["length"] for r in ep_rows])[:, None]),
                 "index": _Stats.of(np.arange(index)[:, None]),
                 "task_index": _Stats.of(np.concatenate([[tasks[r["tasks"][0]]] * r["length"] for r in ep_rows])[:, None])}
        for cam in cams:
            stats[keys[cam]] = _Stats.image(np.concatenate(sample_pixels[cam]), frame_counts[cam])
        atomic_write_json(tmp_root / "meta" / "stats.json", stats)
        shapes = {cam: feats.image_shapes[cam] for cam in cams}
        info = {
            "codebase_version": V30, "robot_type": (manifest.get("source") or {}).get("robot_type") or manifest.get("env"),
            "total_episodes": len(ep_rows), "total_frames": index, "total_tasks": len(tasks),
            "chunks_size": CHUNKS_SIZE, "data_files_size_in_mb": DATA_FILE_MB, "video_files_size_in_mb": VIDEO_FILE_MB,
            "fps": fps_value, "splits": {"train": f"0:{len(ep_rows)}"}, "data_path": V3_DATA_PATH,
            "video_path": V3_VIDEO_PATH,
            "features": {
                **{keys[cam]: {"dtype": "video", "shape": [*shapes[cam], 3], "names": ["height", "width", "channels"],
                               "info": video_info[cam]} for cam in cams},
                "observation.state": {"dtype": "float32", "shape": [feats.state_dim], "names": state_names},
                "action": {"dtype": "float32", "shape": [feats.action_dim], "names": action_names},
                **{k: {"dtype": t, "shape": [1], "names": None} for k, t in INDEX_FEATURES.items()},
            },
        }
        atomic_write_json(tmp_root / "meta" / "info.json", info)
        if out.exists():
            _remove_tree(out)
        os.replace(tmp_root, out)
    except BaseException:
        _remove_tree(tmp_root)
        raise
    return info


def _video_info(path: Path) -> dict:
    with av.open(str(path)) as c:
        s = c.streams.video[0]
        return {"video.height": s.height, "video.width": s.width, "video.codec": s.codec_context.codec.canonical_name
                if hasattr(s.codec_context.codec, "canonical_name") else s.codec_context.name,
                "video.pix_fmt": s.pix_fmt, "video.is_depth_map": False, "video.fps": int(round(float(s.average_rate or s.base_rate))),
                "video.channels": 3, "has_audio": False}


def _tasks_table(tasks: dict[str, int]) -> pa.Table:
    """meta/tasks.parquet: task_index, with the task text as the pandas index (what LeRobot's reader expects)."""
    table = pa.table({"task_index": pa.array(list(tasks.values()), pa.int64()), "task": pa.array(list(tasks), pa.string())})
    pandas_meta = {"index_columns": ["task"], "column_indexes": [], "columns": [
        {"name": "task_index", "field_name": "task_index", "pandas_type": "int64", "numpy_type": "int64", "metadata": None},
        {"name": "task", "field_name": "task", "pandas_type": "unicode", "numpy_type": "object", "metadata": None}],
        "attributes": {}, "creator": {"library": "pyarrow", "version": pa.__version__}, "pandas_version": "2.2.0"}
    return table.replace_schema_metadata({b"pandas": json.dumps(pandas_meta).encode()})


def _remove_tree(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)
