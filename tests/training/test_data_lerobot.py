"""`mot data import lerobot` / `mot data export --format lerobot`: LeRobot v3.0 and v2.1 on disk <-> ours."""

import json
import os
import subprocess
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

from policy.errors import InputError
from training.data import dataset_features, read_episodes
from training.data_cli import info, main
from training.lerobot_export import export_lerobot
from training.lerobot_import import import_lerobot, lerobot_features

# LeRobot's own reader, in a separate venv (never the project's): see test_lerobots_own_reader_loads_the_export.
LEROBOT_PYTHON = Path(os.environ.get("MOT_LEROBOT_PYTHON", "/tmp/lerobot-venv/bin/python"))


@pytest.fixture(scope="module")
def exported(sim_dataset, tmp_path_factory):
    out = tmp_path_factory.mktemp("lerobot") / "v3"
    assert main(["export", str(sim_dataset), "--format", "lerobot", "--out", str(out), "--no-progress"]) == 0
    return out


def test_export_follows_the_published_v3_layout(sim_dataset, exported):
    """Reader-independent: the files, columns and metadata LeRobot v3.0 defines, consistent with each other."""
    manifest, episodes = read_episodes(sim_dataset)
    meta = json.loads((exported / "meta" / "info.json").read_text())
    assert meta["codebase_version"] == "v3.0" and meta["fps"] == 10
    assert meta["data_path"] == "data/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet"
    assert meta["video_path"] == "videos/{video_key}/chunk-{chunk_index:03d}/file-{file_index:03d}.mp4"
    assert (meta["total_episodes"], meta["total_frames"]) == (len(episodes), sum(ep.steps for ep in episodes))
    assert meta["splits"] == {"train": f"0:{len(episodes)}"} and meta["total_tasks"] == len({e.instruction for e in episodes})
    feats = meta["features"]
    assert feats["observation.state"] == {"dtype": "float32", "shape": [7], "names": list(feats["action"]["names"])}
    assert feats["action"]["names"][-1] == "gripper"
    for cam in ("front", "wrist"):
        ft = feats[f"observation.images.{cam}"]
        assert ft["dtype"] == "video" and ft["shape"] == [64, 64, 3] and ft["names"] == ["height", "width", "channels"]
        assert ft["info"]["video.codec"] in ("h264", "mpeg4") and ft["info"]["video.fps"] == 10
    for key in ("timestamp", "frame_index", "episode_index", "index", "task_index"):
        assert feats[key]["shape"] == [1]

    data = pq.read_table(exported / "data" / "chunk-000" / "file-000.parquet")
    assert set(data.column_names) == {"observation.state", "action", "timestamp", "frame_index", "episode_index",
                                      "index", "task_index"}
    assert data.schema.field("observation.state").type == pa.list_(pa.float32(), 7)
    assert data.column("index").to_pylist() == list(range(meta["total_frames"]))
    tasks = pq.read_table(exported / "meta" / "tasks.parquet")
    assert json.loads(tasks.schema.metadata[b"pandas"])["index_columns"] == ["task"]  # pandas: the task is the index
    task_text = dict(zip(tasks.column("task_index").to_pylist(), tasks.column("task").to_pylist()))

    eps = pq.read_table(exported / "meta" / "episodes" / "chunk-000" / "file-000.parquet").to_pylist()
    assert [e["episode_index"] for e in eps] == list(range(len(episodes)))
    stats = json.loads((exported / "meta" / "stats.json").read_text())
    assert set(stats["observation.state"]) >= {"min", "max", "mean", "std", "count", "q01", "q50", "q99"}
    assert np.array(stats["observation.images.front"]["mean"]).shape == (3, 1, 1)
    for ep, row in zip(episodes, eps):
        assert row["length"] == ep.steps and row["tasks"] == [ep.instruction]
        assert row["dataset_to_index"] - row["dataset_from_index"] == ep.steps
        rows = data.slice(row["dataset_from_index"], ep.steps)
        assert set(rows.column("episode_index").to_pylist()) == {row["episode_index"]}
        assert task_text[rows.column("task_index")[0].as_py()] == ep.instruction
        np.testing.assert_array_equal(np.stack(rows.column("action").to_pylist()), ep.actions)
        np.testing.assert_allclose(rows.column("timestamp").to_numpy(), np.arange(ep.steps) / 10, atol=1e-6)
        assert row["videos/observation.images.front/to_timestamp"] - row["videos/observation.images.front/from_timestamp"] \
            == pytest.approx(ep.steps / 10)
        assert (row["mot/seed"], row["mot/task"]) == (ep.seed, ep.task)
    # Several episodes in one mp4, one frame per row, each at from_timestamp + timestamp.
    with av.open(str(exported / "videos" / "observation.images.front" / "chunk-000" / "file-000.mp4")) as c:
        times = [f.time for f in c.decode(video=0)]
    assert len(times) == meta["total_frames"]
    np.testing.assert_allclose(times, np.arange(meta["total_frames"]) / 10, atol=1e-6)


def test_round_trip_export_import_gives_back_the_episodes(sim_dataset, exported, tmp_path):
    _, before = read_episodes(sim_dataset)
    out = tmp_path / "back"
    assert main(["import", "lerobot", str(exported), "--out", str(out), "--no-progress"]) == 0
    manifest, after = read_episodes(out)
    assert [e.seed for e in after] == [e.seed for e in before]
    for a, b in zip(before, after):
        assert (b.instruction, b.task, b.steps) == (a.instruction, a.task, a.steps)
        np.testing.assert_array_equal(b.states, a.states)  # bit-exact
        np.testing.assert_array_equal(b.actions, a.actions)
        np.testing.assert_allclose(b.timestamps, np.arange(a.steps) / 10, atol=1e-6)
        for cam in ("front", "wrist"):
            diff = np.abs(np.stack([b.decode_frame(cam, t).astype(int) - a.decode_frame(cam, t) for t in range(a.steps)]))
            # JPEG -> H.264 (crf 18, 4:2:0 chroma) -> JPEG, on 64 px frames: a few levels of 255 on average
            assert diff.mean() < 5.0 and np.percentile(diff, 99) < 40, (cam, diff.mean(), np.percentile(diff, 99))
    features = dataset_features(out)
    assert features == dataset_features(sim_dataset).__class__(**{**dataset_features(sim_dataset).__dict__,
                                                                   "source_format": "lerobot/v3.0"})
    assert lerobot_features(exported) == features
    shown = info(out)
    assert (shown["source_format"], shown["fps"], shown["episodes"]) == ("lerobot/v3.0", 10.0, len(before))
    assert info(exported)["frames"] == sum(e.steps for e in before)
    # Resumable: a second run finds every episode in its manifest and rewrites none.
    stamp = {p.name: p.stat().st_mtime_ns for p in out.glob("episode_*.npz")}
    import_lerobot(exported, out, progress=False)
    assert {p.name: p.stat().st_mtime_ns for p in out.glob("episode_*.npz")} == stamp
    # Our export again (import of an import): same metadata
    again = tmp_path / "again"
    export_lerobot(out, again, progress=False)
    assert json.loads((again / "meta" / "info.json").read_text())["features"]["observation.state"] == \
        json.loads((exported / "meta" / "info.json").read_text())["features"]["observation.state"]


def _mp4(path: Path, frames: list[np.ndarray], fps: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w") as c:
        s = c.add_stream("libx264" if "libx264" in av.codecs_available else "mpeg4", rate=Fraction(fps))
        s.width, s.height, s.pix_fmt = frames[0].shape[1], frames[0].shape[0], "yuv420p"
        for i, img in enumerate(frames):
            f = av.VideoFrame.from_ndarray(img, format="rgb24")
            f.pts = i
            c.mux(s.encode(f))
        c.mux(s.encode(None))


def make_v21(root: Path, episodes: int = 3, fps: int = 15) -> list[dict]:
    """A LeRobot v2.1 dataset as LeRobot writes one: a parquet and an mp4 per episode, jsonl metadata; one
    camera as video, one as PNG images in the parquet; the state split over two features."""
    import cv2

    tasks = ["stack the cups", "open the drawer"]
    meta = root / "meta"
    meta.mkdir(parents=True)
    truth = []
    for e in range(episodes):
        n = 5 + e
        arm = np.random.default_rng(e).normal(size=(n, 5)).astype(np.float32)
        grip = np.random.default_rng(e + 9).uniform(size=(n, 1)).astype(np.float32)
        action = np.random.default_rng(e + 99).normal(size=(n, 6)).astype(np.float32)
        top = [np.full((48, 40, 3), 20 * e + 5 * t, np.uint8) for t in range(n)]
        side = [np.full((32, 32, 3), 200 - 10 * t, np.uint8) for t in range(n)]
        _mp4(root / f"videos/chunk-000/observation.images.top/episode_{e:06d}.mp4", top, fps)
        png = [{"bytes": cv2.imencode(".png", img)[1].tobytes(), "path": None} for img in side]
        table = pa.table({"observation.arm": pa.FixedSizeListArray.from_arrays(pa.array(arm.ravel()), 5),
                          "observation.gripper": pa.FixedSizeListArray.from_arrays(pa.array(grip.ravel()), 1),
                          "action": pa.FixedSizeListArray.from_arrays(pa.array(action.ravel()), 6),
                          "observation.images.side": pa.array(png, pa.struct([("bytes", pa.binary()), ("path", pa.string())])),
                          "timestamp": pa.array(np.arange(n, dtype=np.float32) / fps),
                          "frame_index": pa.array(np.arange(n)), "episode_index": pa.array(np.full(n, e)),
                          "index": pa.array(np.arange(n) + 100 * e), "task_index": pa.array(np.full(n, e % 2))})
        path = root / f"data/chunk-000/episode_{e:06d}.parquet"
        path.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(table, path)
        truth.append({"arm": arm, "grip": grip, "action": action, "top": top, "side": side, "task": tasks[e % 2]})
    (meta / "episodes.jsonl").write_text("".join(json.dumps({"episode_index": e, "tasks": [tasks[e % 2]],
                                                             "length": 5 + e}) + "\n" for e in range(episodes)))
    (meta / "tasks.jsonl").write_text("".join(json.dumps({"task_index": i, "task": t}) + "\n" for i, t in enumerate(tasks)))
    (meta / "info.json").write_text(json.dumps({
        "codebase_version": "v2.1", "robot_type": "so100", "fps": fps, "chunks_size": 1000, "total_episodes": episodes,
        "data_path": "data/chunk-{episode_chunk:03d}/episode_{episode_index:06d}.parquet",
        "video_path": "videos/chunk-{episode_chunk:03d}/{video_key}/episode_{episode_index:06d}.mp4",
        "features": {
            "observation.images.top": {"dtype": "video", "shape": [48, 40, 3], "names": ["height", "width", "channels"]},
            "observation.images.side": {"dtype": "image", "shape": [3, 32, 32], "names": ["channels", "height", "width"]},
            "observation.arm": {"dtype": "float32", "shape": [5], "names": {"motors": [f"m{i}" for i in range(5)]}},
            "observation.gripper": {"dtype": "float32", "shape": [1], "names": ["gripper"]},
            "action": {"dtype": "float32", "shape": [6], "names": [*(f"m{i}" for i in range(5)), "gripper"]},
            "timestamp": {"dtype": "float32", "shape": [1], "names": None}}}))
    return truth


def test_v21_import_with_a_mapping_file(tmp_path):
    truth = make_v21(tmp_path / "v21")
    (tmp_path / "map.yaml").write_text(yaml.safe_dump({
        "cameras": {"main": "observation.images.top", "side": "observation.images.side"},
        "state": ["observation.arm", "observation.gripper"], "action": "action"}))
    out = tmp_path / "ours"
    assert main(["import", "lerobot", str(tmp_path / "v21"), "--out", str(out), "--map", str(tmp_path / "map.yaml"),
                 "--no-progress"]) == 0
    manifest, episodes = read_episodes(out)
    assert manifest["source"]["format"] == "lerobot/v2.1" and manifest["fps"] == 15.0
    assert [ep.seed for ep in episodes] == [0, 1, 2]
    for ep, t in zip(episodes, truth):
        assert ep.instruction == t["task"] and ep.steps == len(t["arm"])
        np.testing.assert_array_equal(ep.states, np.concatenate([t["arm"], t["grip"]], axis=1))
        np.testing.assert_array_equal(ep.actions, t["action"])
        np.testing.assert_allclose(ep.timestamps, np.arange(ep.steps) / 15, atol=1e-6)
        for k in range(ep.steps):
            assert np.abs(ep.decode_frame("main", k).astype(int) - t["top"][k]).mean() < 3
            assert np.abs(ep.decode_frame("side", k).astype(int) - t["side"][k]).mean() < 2
    features = dataset_features(out)
    assert features.cameras == ("main", "side") and features.image_shapes == {"main": (48, 40), "side": (32, 32)}
    assert (features.state_dim, features.action_dim, features.fps) == (6, 6, 15.0)
    assert features.state_names == ("m0", "m1", "m2", "m3", "m4", "gripper")
    assert features.delta_action_mask == (True,) * 5 + (False,)  # the gripper stays absolute
    assert lerobot_features(tmp_path / "v21", tmp_path / "map.yaml") == features.__class__(
        **{**features.__dict__, "source_format": "lerobot/v2.1"})


def test_mapping_errors_name_the_field(tmp_path):
    make_v21(tmp_path / "v21", episodes=1)
    for mapping, message in [
        ({"cameras": {"main": "observation.images.nope"}}, r"map.cameras.main: expected an image or video feature"),
        ({"state": ["observation.images.top"]}, r"map.state: expected 1-D numeric features"),
        ({"camera": {}}, r"map: expected keys among cameras, state, action"),
        ({"state": ["observation.arm"], "delta_action_mask": [True]}, r"map.delta_action_mask: expected 6 booleans"),
    ]:
        (tmp_path / "map.yaml").write_text(yaml.safe_dump(mapping))
        with pytest.raises(InputError, match=message):
            import_lerobot(tmp_path / "v21", tmp_path / "out", tmp_path / "map.yaml", progress=False)
    # the default mapping needs observation.state, which this dataset splits over two features
    with pytest.raises(InputError, match=r"map.state: expected at least one feature key"):
        import_lerobot(tmp_path / "v21", tmp_path / "out", progress=False)


def test_export_needs_a_frame_rate(sim_dataset, tmp_path):
    import shutil

    from training.data import load_manifest, save_manifest

    old = tmp_path / "old"
    shutil.copytree(sim_dataset, old)
    manifest = load_manifest(old)
    manifest["fps"] = None
    save_manifest(old, manifest)
    with pytest.raises(InputError, match="fps: expected the dataset's frame rate"):
        export_lerobot(old, tmp_path / "x", progress=False)
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "file").write_text("x")
    with pytest.raises(InputError, match="out: expected a new or empty directory"):
        export_lerobot(old, tmp_path / "full", fps=5, progress=False)
    assert export_lerobot(old, tmp_path / "full", fps=5, overwrite=True, progress=False)["fps"] == 5
    assert not (tmp_path / "full" / "file").exists()


READER_SCRIPT = r"""
import json, sys
import numpy as np
from ledataset.datasets.lerobot_dataset import LeRobotDataset
ds = LeRobotDataset("local/export", root=sys.argv[1], delta_timestamps={"action": [0.0, 0.1, 0.2]})
out = {"episodes": ds.num_episodes, "frames": ds.num_frames, "fps": ds.fps, "cameras": ds.meta.camera_keys, "items": []}
for i in [0, 7, len(ds) - 1]:
    item = ds[i]
    out["items"].append({"index": int(item["index"]), "episode_index": int(item["episode_index"]),
                         "frame_index": int(item["frame_index"]), "task": item["task"],
                         "state": item["observation.state"].tolist(), "action": item["action"].tolist(),
                         "front": (item["observation.images.front"].numpy() * 255).round().astype(int).tolist()})
print(json.dumps(out))
"""


def _lerobot_reader_missing() -> str | None:
    if not LEROBOT_PYTHON.is_file():
        return f"no LeRobot reader venv at {LEROBOT_PYTHON} (set MOT_LEROBOT_PYTHON; see this test's docstring)"
    probe = subprocess.run([str(LEROBOT_PYTHON), "-c", "import ledataset.datasets.lerobot_dataset"], capture_output=True,
                           text=True, env=_reader_env(), timeout=120)
    return None if probe.returncode == 0 else f"LeRobot's reader does not import in {LEROBOT_PYTHON}: " \
                                              f"{probe.stderr.strip().splitlines()[-1:]}"


def _reader_env() -> dict:
    lib = next(LEROBOT_PYTHON.parent.parent.glob("lib/python3*/site-packages/torch/lib"), None)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    if lib is not None:
        env["LD_LIBRARY_PATH"] = f"{lib}:{env.get('LD_LIBRARY_PATH', '')}"
    return env


def test_lerobots_own_reader_loads_the_export(sim_dataset, exported):
    """LeRobot's LeRobotDataset (the standalone `lerobot-dataset` 0.4.4 package, in its own venv) loads the
    export offline: counts, fps, cameras, tasks, states, action chunks (delta_timestamps) and video frames.

    The venv: python3 -m venv /tmp/lerobot-venv; pip install lerobot-dataset==0.4.4 torch==2.13.0 torchcodec;
    torchvision 0.28 and torchcodec from the registry are CUDA builds: on a CPU-only machine they load against
    stub libtorch_cuda/libc10_cuda/libnvrtc libraries in torch/lib (never called), and torchcodec needs the
    FFmpeg 5 runtime libraries (libavcodec59 ...). Skipped where no such venv exists."""
    reason = _lerobot_reader_missing()
    if reason:
        pytest.skip(reason)
    done = subprocess.run([str(LEROBOT_PYTHON), "-c", READER_SCRIPT, str(exported)], capture_output=True, text=True,
                          env=_reader_env(), timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    got = json.loads(done.stdout.strip().splitlines()[-1])
    manifest, episodes = read_episodes(sim_dataset)
    assert (got["episodes"], got["frames"], got["fps"]) == (len(episodes), sum(e.steps for e in episodes), 10)
    assert got["cameras"] == ["observation.images.front", "observation.images.wrist"]
    rows = [(e, ep, t) for e, ep in enumerate(episodes) for t in range(ep.steps)]
    for item in got["items"]:
        e, ep, t = rows[item["index"]]
        assert (item["episode_index"], item["frame_index"], item["task"]) == (e, t, ep.instruction)
        np.testing.assert_array_equal(np.float32(item["state"]), ep.states[t])
        chunk = ep.actions[np.minimum(np.arange(t, t + 3), ep.steps - 1)]  # LeRobot pads with the last action too
        np.testing.assert_array_equal(np.float32(item["action"]), chunk)
        front = np.transpose(np.array(item["front"]), (1, 2, 0))
        assert np.abs(front - ep.decode_frame("front", t)).mean() < 5.0
