"""LeRobot datasets on disk: the v3.0 / v2.1 / v2.0 layouts and reading them (`LeRobotSource`).

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

`training.lerobot_import` turns such a dataset into ours, `training.lerobot_export` writes ours as v3.0.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from policy.errors import DatasetError

V30, V21, V20 = "v3.0", "v2.1", "v2.0"
V3_DATA_PATH = "data/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet"
V3_VIDEO_PATH = "videos/{video_key}/chunk-{chunk_index:03d}/file-{file_index:03d}.mp4"
V3_EPISODES_PATH = "meta/episodes/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet"
CHUNKS_SIZE = 1000  # files per chunk directory (LeRobot's default)
IMAGE_PREFIX = "observation.images."
INDEX_FEATURES = {"timestamp": "float32", "frame_index": "int64", "episode_index": "int64", "index": "int64",
                  "task_index": "int64"}


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


