"""Our `mot-dataset/1` -> a LeRobot v3.0 dataset: `export_lerobot`.

Export (`export_lerobot`): our dataset as LeRobot v3.0, so LeRobot, openpi and GR00T loaders read it:
H.264 (libx264, yuv420p; `training.video.encoder()` falls back where the build has none) mp4s through
PyAV, parquet through pyarrow. The episode's seed and task family travel as the extra episode columns
`mot/seed` and `mot/task`, so importing an export gives back the same episodes.

Files grow to LeRobot's default sizes (DATA_FILE_MB per data parquet, VIDEO_FILE_MB per mp4) before the
next one starts; meta/stats.json holds LeRobot's per-feature statistics (`_Stats`).
"""

from __future__ import annotations

import json
import os
import shutil
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from tqdm import tqdm

from policy.artifacts import atomic_path, atomic_write_json, temp_dir_beside
from policy.errors import DatasetError, InputError
from training.features import dataset_features
from training.lerobot_layout import (
    CHUNKS_SIZE,
    IMAGE_PREFIX,
    INDEX_FEATURES,
    V3_DATA_PATH,
    V3_EPISODES_PATH,
    V3_VIDEO_PATH,
    V30,
)
from training.manifest import iter_episodes, load_manifest
from training.video import encoder

DATA_FILE_MB, VIDEO_FILE_MB = 100, 200  # LeRobot's defaults: a new file once one would grow past these
QUANTILES = (0.01, 0.10, 0.50, 0.90, 0.99)


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
