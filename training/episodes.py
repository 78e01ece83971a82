"""One demonstration episode in memory (`Episode`, `SceneTrack`) and as an episode file's bytes.

An episode file (`episode_000042.npz`, seed 42) is an uncompressed npz of:

    states (T, S) float32, actions (T, A) float32, seed () int64, instruction / task  UTF-8 as uint8
    timestamps (T,) float64      seconds from the first frame (absent in datasets from before fps)
    <cam>_jpeg (bytes,) uint8    the T JPEG frames (quality 95) of camera <cam>, concatenated
    <cam>_offsets (T + 1,) int64 where each frame starts and ends in <cam>_jpeg
    grounding_<key> (3,) float32 GROUNDING_KEYS at reset, NaN where the env does not say
    track_*                      the SceneTrack (per-frame object/pad positions and pixels), when recorded

Grounding facts from the env's `info` (where the referred object and pad are) are stored per episode
for the "align" stage; when the env's `info` lists its `objects` and `pads` ({name, pos}), their
per-frame positions are stored too (`SceneTrack`), so align trains on where things are *now*.
"""

from __future__ import annotations

import dataclasses
import io
from dataclasses import dataclass

import cv2
import numpy as np

JPEG_QUALITY = 95
# Numeric facts copied from info at reset (NaN when the env does not provide them or they are None).
GROUNDING_KEYS = ("target_object_pos", "target_pad_pos")


@dataclass
class SceneTrack:
    """Where every named object and pad is, per frame (from the env's `info`): align-stage targets."""

    object_names: list[str]
    object_pos: np.ndarray  # float32 (T, n_objects, 3)
    pad_names: list[str]
    pad_pos: np.ndarray  # float32 (T, n_pads, 3)
    target_object: int  # index of the instruction's object in object_names
    target_pad: int  # index of the instruction's pad in pad_names; -1 when the task has none
    # Where each one appears in each camera's image, (u, v) in [0, 1] (off [0, 1]: out of view), when
    # the env reports `pixels`: float32 (T, n, len(cameras), 2).
    cameras: list[str] = dataclasses.field(default_factory=list)
    object_pixels: np.ndarray | None = None
    pad_pixels: np.ndarray | None = None

    @classmethod
    def from_infos(cls, infos: list[dict]) -> "SceneTrack | None":
        """One info dict per stored frame -> track; None when the env does not list objects."""
        first = infos[0]
        if not first.get("objects"):
            return None
        objects = [o["name"] for o in first["objects"]]
        pads = [p["name"] for p in first.get("pads") or []]
        cameras = sorted(first["objects"][0].get("pixels") or {})

        def positions(key: str, n: int) -> np.ndarray:
            return np.array([[x["pos"] for x in info.get(key) or []] for info in infos], np.float32).reshape(len(infos), n, 3)

        def pixels(key: str, n: int) -> np.ndarray:
            return np.array([[[x["pixels"][c] for c in cameras] for x in info.get(key) or []] for info in infos],
                            np.float32).reshape(len(infos), n, len(cameras), 2)

        target_pad = first.get("target_pad")
        return cls(objects, positions("objects", len(objects)), pads, positions("pads", len(pads)),
                   objects.index(first["target_object"]) if first.get("target_object") in objects else -1,
                   pads.index(target_pad) if target_pad in pads else -1, cameras,
                   pixels("objects", len(objects)) if cameras else None, pixels("pads", len(pads)) if cameras else None)


@dataclass
class Episode:
    states: np.ndarray  # float32 (T, S)
    actions: np.ndarray  # float32 (T, A)
    frames: dict[str, list[bytes]]  # camera -> T JPEG blobs
    instruction: str
    task: str
    seed: int
    grounding: dict[str, np.ndarray]  # GROUNDING_KEYS -> float32 (3,), NaN if absent
    track: SceneTrack | None = None  # per-frame object/pad positions, when the env reports them
    timestamps: np.ndarray | None = None  # float64 (T,) seconds from the first frame; None in old datasets

    @property
    def steps(self) -> int:
        return len(self.states)

    def decode_frame(self, camera: str, t: int) -> np.ndarray:
        """(H, W, 3) uint8 RGB."""
        bgr = cv2.imdecode(np.frombuffer(self.frames[camera][t], np.uint8), cv2.IMREAD_COLOR)
        return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def encode_frame(rgb: np.ndarray) -> bytes:
    ok, buf = cv2.imencode(".jpg", cv2.cvtColor(np.ascontiguousarray(rgb), cv2.COLOR_RGB2BGR),
                           [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])
    if not ok:
        raise RuntimeError("frame: JPEG encoding failed")
    return buf.tobytes()


def episode_to_bytes(ep: Episode) -> bytes:
    arrays = {"states": ep.states.astype(np.float32), "actions": ep.actions.astype(np.float32),
              "instruction": np.frombuffer(ep.instruction.encode(), np.uint8),
              "task": np.frombuffer(ep.task.encode(), np.uint8), "seed": np.array(ep.seed, np.int64)}
    if ep.timestamps is not None:
        arrays["timestamps"] = np.asarray(ep.timestamps, np.float64)
    for cam, blobs in ep.frames.items():
        arrays[f"{cam}_jpeg"] = np.frombuffer(b"".join(blobs), np.uint8)
        arrays[f"{cam}_offsets"] = np.cumsum([0] + [len(b) for b in blobs]).astype(np.int64)
    for key, value in ep.grounding.items():
        arrays[f"grounding_{key}"] = np.asarray(value, np.float32)
    if ep.track is not None:
        t = ep.track
        arrays.update(track_object_names=np.array(t.object_names, dtype=str), track_object_pos=t.object_pos,
                      track_pad_names=np.array(t.pad_names, dtype=str), track_pad_pos=t.pad_pos,
                      track_targets=np.array([t.target_object, t.target_pad], np.int64))
        if t.object_pixels is not None:
            arrays.update(track_cameras=np.array(t.cameras, dtype=str), track_object_pixels=t.object_pixels,
                          track_pad_pixels=t.pad_pixels)
    buf = io.BytesIO()
    np.savez(buf, **arrays)  # JPEG payloads are already compressed
    return buf.getvalue()


def episode_from_bytes(data: bytes, cameras: list[str]) -> Episode:
    with np.load(io.BytesIO(data), allow_pickle=False) as z:
        frames = {}
        for cam in cameras:
            blob, offsets = z[f"{cam}_jpeg"].tobytes(), z[f"{cam}_offsets"]
            frames[cam] = [blob[offsets[i]:offsets[i + 1]] for i in range(len(offsets) - 1)]
        grounding = {k.removeprefix("grounding_"): z[k] for k in z.files if k.startswith("grounding_")}
        track = None
        if "track_object_pos" in z.files:  # datasets collected before tracks existed have none
            pixels = "track_object_pixels" in z.files
            track = SceneTrack(z["track_object_names"].tolist(), z["track_object_pos"], z["track_pad_names"].tolist(),
                               z["track_pad_pos"], *(int(i) for i in z["track_targets"]),
                               z["track_cameras"].tolist() if pixels else [],
                               z["track_object_pixels"] if pixels else None, z["track_pad_pixels"] if pixels else None)
        timestamps = z["timestamps"] if "timestamps" in z.files else None  # none before fps was recorded
        return Episode(z["states"], z["actions"], frames, z["instruction"].tobytes().decode(),
                       z["task"].tobytes().decode(), int(z["seed"]), grounding, track, timestamps)


def episode_filename(seed: int) -> str:
    return f"episode_{seed:06d}.npz"


def unknown_grounding() -> dict[str, np.ndarray]:
    """GROUNDING_KEYS -> NaN positions: the grounding of an episode whose source does not say (imports)."""
    return {k: np.full(3, np.nan, np.float32) for k in GROUNDING_KEYS}
