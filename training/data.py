"""Demonstrations on disk: episode files, the dataset manifest, and the training dataset.

Layout of a dataset directory:

    manifest.json           format, env, cameras, per-episode {file, sha256, steps, task, ...}, dropped seeds
    episode_000042.npz      one episode per file (seed 42): states, actions, JPEG frames per camera

Every file is written through `policy.artifacts.atomic_write_bytes` (a temporary name, fsync, rename); the
manifest likewise, after every episode. A killed collection therefore loses at most the episode in flight, and re-running the same
command resumes from the manifest. On load every file is checked against its sha256; a corrupted
episode is skipped with a warning, never trained on.

Frames are stored as JPEG (quality 95) per step: `<cam>_jpeg` holds the concatenated bytes and
`<cam>_offsets` (T + 1,) the boundaries. Grounding facts from the env's `info` (where the referred
object and pad are) are stored per episode for the "align" stage; when the env's `info` lists its
`objects` and `pads` ({name, pos}), their per-frame positions are stored too (`SceneTrack`), so align
trains on where things are *now* and on referring expressions for every object in view.

Time: the manifest's `fps` is the control rate the episodes were recorded at (`mot collect`: the env's;
imports: the source's), and each episode stores per-frame `timestamps` (float64 seconds from its first
frame). Datasets collected before these existed still load: their `fps` is None (unknown) and their
episodes' `timestamps` None.

What a policy needs to know about a dataset (cameras, image size, state/action sizes, fps, which action
dimensions may be learned relative to the state) comes from `dataset_features`, for datasets collected
here and imported ones alike (`mot data import lerobot|rosbag` write this same format, with `source`
naming where they came from).
"""

from __future__ import annotations

import dataclasses
import io
import json
import warnings
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from policy.artifacts import atomic_write_bytes, sha256_bytes  # noqa: F401  (re-exported: the one atomic writer)
from policy.errors import DatasetError

FORMAT = "mot-dataset/1"
JPEG_QUALITY = 95
# Numeric facts copied from info at reset (NaN when the env does not provide them or they are None).
GROUNDING_KEYS = ("target_object_pos", "target_pad_pos")
# Align-stage referring expressions for one object of the scene, by its name in the env's info.
REFERRING_TEMPLATES = ("{}", "the {}", "find the {}", "where is the {}", "look at the {}", "the {} on the table")
# ... and for an object and a pad of the scene together, in the order push/place instructions name them.
PAIR_TEMPLATES = ("the {} and the {}", "the {} on the {}", "the {} to the {}", "find the {} and the {}")


# -- episodes --------------------------------------------------------------------------------------
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


# -- manifest --------------------------------------------------------------------------------------
def new_manifest(env: str, expert: str, cameras: list[str], image_size: int, split: str,
                 fps: float | None = None, source: dict | None = None) -> dict:
    """An empty manifest. `source`: where the episodes come from ({"format": "mot collect"} when None;
    imports name theirs, e.g. {"format": "lerobot/v3.0", "path": ...})."""
    return {"format": FORMAT, "env": env, "expert": expert, "cameras": cameras, "image_size": image_size,
            "split": split, "fps": fps, "source": source or {"format": "mot collect"}, "episodes": {}, "dropped": {}}


def load_manifest(directory: str | Path) -> dict:
    directory = Path(directory)
    path = directory / "manifest.json"
    if not path.is_file():
        raise DatasetError(f"dataset: expected {path}; is {directory} a dataset made by `mot collect` or "
                           f"`mot data import`?")
    try:
        manifest = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise DatasetError(f"dataset: expected {path} to be JSON, received unreadable text ({e})") from e
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        got = manifest.get("format") if isinstance(manifest, dict) else type(manifest).__name__
        raise DatasetError(f"dataset: expected format {FORMAT!r}, received {got!r}")
    return manifest


def save_manifest(directory: Path, manifest: dict) -> None:
    atomic_write_bytes(Path(directory) / "manifest.json", json.dumps(manifest, indent=1, sort_keys=True).encode())


def episode_entry(ep: Episode, name: str, data: bytes) -> dict:
    """The manifest's record of an episode file `name` holding `data` (its bytes)."""
    return {"file": name, "sha256": sha256_bytes(data), "steps": ep.steps, "task": ep.task,
            "instruction": ep.instruction, "bytes": len(data)}


def describe_episode(manifest: dict, ep: Episode, state_names: list[str] | None = None,
                     action_names: list[str] | None = None) -> None:
    """Fills the manifest's per-dataset facts from its first episode (cameras, image shapes, state/action
    sizes and names) where they are missing; later episodes must agree with them."""
    shapes = {cam: list(ep.decode_frame(cam, 0).shape[:2]) for cam in sorted(ep.frames) if ep.frames[cam]}
    if not manifest.get("cameras"):
        manifest["cameras"] = sorted(ep.frames)
    manifest.setdefault("image_shapes", shapes)
    manifest.setdefault("state_dim", int(ep.states.shape[1]))
    manifest.setdefault("action_dim", int(ep.actions.shape[1]))
    if state_names is not None:
        manifest.setdefault("state_names", list(state_names))
    if action_names is not None:
        manifest.setdefault("action_names", list(action_names))
    for field, value in (("state_dim", ep.states.shape[1]), ("action_dim", ep.actions.shape[1])):
        if manifest[field] != value:
            raise DatasetError(f"{field}: expected {manifest[field]} in every episode (the first one's), "
                               f"received {value} in episode {ep.seed}")


def read_episodes(directory: str | Path, warn: bool = True) -> tuple[dict, list[Episode]]:
    """All episodes listed in the manifest whose sha256 verifies; corrupted ones are skipped with a warning."""
    manifest = load_manifest(directory)
    return manifest, list(iter_episodes(directory, manifest, warn))


def iter_episodes(directory: str | Path, manifest: dict | None = None, warn: bool = True):
    """read_episodes one episode at a time (an export of a large dataset never holds all of it)."""
    directory = Path(directory)
    manifest = manifest or load_manifest(directory)
    for key, meta in sorted(manifest["episodes"].items()):
        path = directory / meta["file"]
        try:
            data = path.read_bytes()
        except OSError as e:
            if warn:
                warnings.warn(f"dataset: skipping episode {key}: cannot read {path} ({e})", stacklevel=2)
            continue
        if sha256_bytes(data) != meta["sha256"]:
            if warn:
                warnings.warn(f"dataset: skipping episode {key}: {path.name} is corrupted (sha256 mismatch)",
                              stacklevel=2)
            continue
        yield episode_from_bytes(data, manifest["cameras"])


# -- what a policy is built from ---------------------------------------------------------------------
def default_delta_mask(state_names: list[str] | None, action_names: list[str] | None) -> tuple[bool, ...] | None:
    """Which action dimensions may be learned relative to the state (PolicyConfig.delta_action_mask), when
    the names say so: action i is the target of state i (same name), and grippers stay absolute (an
    open/close command, not a joint offset). None when the names are unknown or do not pair up."""
    if not state_names or not action_names:
        return None
    return tuple(i < len(state_names) and state_names[i] == name and "gripper" not in name.lower()
                 for i, name in enumerate(action_names))


@dataclass(frozen=True)
class DatasetFeatures:
    """What a policy trained on a dataset reads and writes, from the dataset's metadata alone.

    cameras: camera names, in the dataset's order. image_shapes: camera -> (H, W) at the source resolution
    (frames are stored as recorded, never resized). image_size: the (H, W) all cameras share, None when they
    differ. state_dim / action_dim: vector sizes; state_names / action_names: one per dimension when known.
    fps: the recording's control rate, None when unknown (datasets from before it was recorded).
    delta_action_mask: per action dimension, True where it may be learned relative to the state (a joint
    target), False where it stays absolute (the gripper); None when unknown. source_format: "mot collect",
    "lerobot/v3.0", "lerobot/v2.1", "rosbag2/mcap", "rosbag2/sqlite3", ...
    """

    cameras: tuple[str, ...]
    image_shapes: dict[str, tuple[int, int]]
    state_dim: int
    action_dim: int
    fps: float | None
    delta_action_mask: tuple[bool, ...] | None
    state_names: tuple[str, ...] | None
    action_names: tuple[str, ...] | None
    source_format: str

    @property
    def image_size(self) -> tuple[int, int] | None:
        shapes = set(self.image_shapes.values())
        return shapes.pop() if len(shapes) == 1 else None

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["image_size"] = self.image_size
        return d


def dataset_features(dataset: str | Path | dict) -> DatasetFeatures:
    """A dataset directory (or its loaded manifest) -> DatasetFeatures.

    Facts the manifest lacks (datasets collected before they were recorded) are read off the first
    readable episode when a directory is given: state/action sizes, image shapes (else the square
    `image_size` the collect asked for). A manifest dict without them raises DatasetError.
    """
    directory = None if isinstance(dataset, dict) else Path(dataset)
    manifest = dataset if directory is None else load_manifest(directory)
    missing = [k for k in ("state_dim", "action_dim", "image_shapes") if k not in manifest]
    if missing and directory is not None and manifest["episodes"]:
        first = next(iter_episodes(directory, {**manifest, "episodes": dict([min(manifest["episodes"].items())])},
                                   warn=False), None)
        if first is not None:
            manifest = dict(manifest)
            describe_episode(manifest, first)
            missing = []
    if missing and not (missing == ["image_shapes"] and manifest.get("image_size")):
        raise DatasetError(f"dataset: expected {missing} in the manifest, received a manifest without them "
                           f"(a dataset from before they were recorded): pass the dataset directory instead")
    cameras = tuple(manifest["cameras"])
    shapes = manifest.get("image_shapes") or {c: [manifest["image_size"]] * 2 for c in cameras}
    state_names, action_names = manifest.get("state_names"), manifest.get("action_names")
    mask = manifest.get("delta_action_mask")
    mask = tuple(bool(m) for m in mask) if mask is not None else default_delta_mask(state_names, action_names)
    fps = manifest.get("fps")
    return DatasetFeatures(cameras, {c: tuple(int(x) for x in shapes[c]) for c in cameras}, int(manifest["state_dim"]),
                           int(manifest["action_dim"]), float(fps) if fps is not None else None, mask,
                           tuple(state_names) if state_names else None, tuple(action_names) if action_names else None,
                           (manifest.get("source") or {}).get("format", "mot collect"))


# -- target points (PolicyConfig.target_points) ------------------------------------------------------
def target_point_vector(object_pixels: np.ndarray, pad_pixels: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Where the instruction's object and pad appear per camera, (C, 2) each as (u, v) (pad: NaN when the
    task names none) -> float32 (4C,): object (u, v) per camera, then pad (u, v) per camera.

    Points are clipped into the image, [0, 1]: off-image, the nearest edge, which is as much as a pointing
    head can say. Without a pad the pad slot holds a random point (from `rng`): the body must learn to
    read it only when the words name a pad, and so ignores whatever a head points at for "pick up ...".
    """
    pad = rng.uniform(0.0, 1.0, pad_pixels.shape) if np.isnan(pad_pixels).any() else np.clip(pad_pixels, 0.0, 1.0)
    return np.concatenate([np.clip(object_pixels, 0.0, 1.0).ravel(), pad.ravel()]).astype(np.float32)


def pixels_from_info(info: dict, cameras: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """The env's `info` -> (object pixels, pad pixels), (C, 2) each in `cameras` order; NaN pad without one."""
    def find(items: list[dict], name: str | None, key: str) -> np.ndarray:
        for item in items or []:
            if item["name"] == name:
                return np.array([item["pixels"][c] for c in cameras], np.float32)
        if name is None:
            return np.full((len(cameras), 2), np.nan, np.float32)
        raise ValueError(f"info: expected {key!r} to list {name!r} with pixels, received {[i['name'] for i in items or []]}")

    return find(info.get("objects"), info["target_object"], "objects"), find(info.get("pads"), info.get("target_pad"), "pads")


# -- the training dataset --------------------------------------------------------------------------
class ChunkDataset:
    """(observation at t, action chunk t .. t + horizon - 1) samples from in-memory episodes.

    Chunks that run past the episode end repeat the last action (the robot holds still), as LeRobot
    pads action chunks. Frames stay JPEG in memory and are decoded per batch.
    """

    def __init__(self, episodes: list[Episode], cameras: list[str], horizon: int, target_points: bool = False,
                 point_cameras: list[str] | tuple[str, ...] | None = None):
        """target_points: append `target_point_vector` (the sim's ground truth of where the instruction's
        object and pad appear) to every state (PolicyConfig.target_points); needs scene tracks with pixels.
        point_cameras: the cameras whose points are appended, in `cameras` order (None: all of them)."""
        if not episodes:
            raise ValueError("dataset: expected at least one readable episode, received none")
        if target_points:
            missing = [ep.seed for ep in episodes if ep.track is None or ep.track.object_pixels is None]
            if missing:
                raise ValueError(f"target_points: expected scene tracks with pixels in every episode, "
                                 f"{len(missing)} have none (seeds {missing[:5]}...); collect with the current `mot collect`")
        self.episodes, self.cameras, self.horizon = episodes, list(cameras), horizon
        self.target_points = target_points
        unknown = sorted(set(point_cameras or ()) - set(self.cameras))
        if unknown:
            raise ValueError(f"point_cameras: expected names among the dataset's cameras {self.cameras}, received {unknown}")
        # rows of the tracks' (cameras, 2) pixels that the points carry
        self.point_rows = [i for i, c in enumerate(self.cameras) if point_cameras is None or c in point_cameras]
        self.index = np.array([(e, t) for e, ep in enumerate(episodes) for t in range(ep.steps)], dtype=np.int64)

    def __len__(self) -> int:
        return len(self.index)

    def chunk(self, ep: Episode, t: int) -> np.ndarray:
        idx = np.minimum(np.arange(t, t + self.horizon), ep.steps - 1)
        return ep.actions[idx]

    def batch(self, indices: np.ndarray, images: bool = True, referent_prob: float = 0.0,
              rng: np.random.Generator | None = None, pad_referent_prob: float = 0.0) -> dict:
        """Sample indices (B,) -> a policy batch (images, state, instruction, actions) + grounding targets.

        images=False skips JPEG decoding (the policy stage with a cached prefix never looks at pixels).
        grounding: where the instruction's object and pad are in this frame (`ChunkDataset.grounding`:
        GROUNDING_KEYS -> (B, 3) world positions, `*_pixels` -> (B, cameras, 2)), NaN where unknown.
        referent_prob: per sample with a track, the chance that the instruction is replaced by a
        referring expression for a random object of the scene ("the red cube") whose position becomes
        the target (align stage). The same frame then asks for different answers with different words,
        so grounding must read the text rather than memorise the scene.
        pad_referent_prob: per referring expression in a scene with pads, the chance that it names a random
        pad too ("the red cube on the blue pad"), which becomes the pad target: two colour words in one
        phrase, and the object head must take the object's, not the pad's.
        """
        rows = self.index[indices]
        eps = [self.episodes[e] for e, _ in rows]
        frames = {cam: np.stack([ep.decode_frame(cam, t) for ep, (_, t) in zip(eps, rows)]) for cam in self.cameras} \
            if images else None
        instructions = [ep.instruction for ep in eps]
        targets = [self.grounding(ep, t) for ep, (_, t) in zip(eps, rows)]
        if referent_prob > 0:
            rng = rng or np.random.default_rng()
            for i, (ep, (_, t)) in enumerate(zip(eps, rows)):
                if ep.track is None or not ep.track.object_names or rng.random() >= referent_prob:
                    continue
                k = int(rng.integers(len(ep.track.object_names)))
                if pad_referent_prob > 0 and ep.track.pad_names and rng.random() < pad_referent_prob:
                    j = int(rng.integers(len(ep.track.pad_names)))
                    template = PAIR_TEMPLATES[int(rng.integers(len(PAIR_TEMPLATES)))]
                    instructions[i] = template.format(ep.track.object_names[k], ep.track.pad_names[j])
                    targets[i] = self.grounding(ep, t, obj=k, pad=j)
                    continue
                template = REFERRING_TEMPLATES[int(rng.integers(len(REFERRING_TEMPLATES)))]
                instructions[i] = template.format(ep.track.object_names[k])
                targets[i] = self.grounding(ep, t, obj=k, pad=-1)
        state = np.stack([ep.states[t] for ep, (_, t) in zip(eps, rows)]).astype(np.float32)
        if self.target_points:  # the instruction's own targets (never a referring expression's)
            own = [self.grounding(ep, t) for ep, (_, t) in zip(eps, rows)]
            # The random pad point of a task without one is fixed per frame (seeded by episode and step).
            points = [target_point_vector(g["target_object_pixels"][self.point_rows], g["target_pad_pixels"][self.point_rows],
                                          np.random.default_rng([ep.seed, int(t)])) for g, ep, (_, t) in zip(own, eps, rows)]
            state = np.concatenate([state, np.stack(points)], axis=1)
        return {
            "images": frames,
            "state": state,
            "instruction": instructions,
            "actions": np.stack([self.chunk(ep, t) for ep, (_, t) in zip(eps, rows)]).astype(np.float32),
            "grounding": {k: np.stack([g[k] for g in targets]) for k in targets[0]},
        }

    def grounding(self, ep: Episode, t: int, obj: int | None = None, pad: int | None = None) -> dict[str, np.ndarray]:
        """Where an object and a pad are in frame t: GROUNDING_KEYS -> (3,) world positions, and
        `*_pixels` -> (cameras, 2) image positions in this dataset's camera order; NaN where unknown.

        obj/pad: indices into the episode's SceneTrack (-1: none); default the instruction's own.
        Without a track: the positions at the episode's start, no pixels.
        """
        out = {k: np.asarray(ep.grounding.get(k, np.full(3, np.nan)), np.float32).copy() for k in GROUNDING_KEYS}
        nan_pixels = np.full((len(self.cameras), 2), np.nan, np.float32)
        out.update(target_object_pixels=nan_pixels, target_pad_pixels=nan_pixels.copy())
        track = ep.track
        if track is None or track.target_object < 0:
            return out
        obj = track.target_object if obj is None else obj
        pad = track.target_pad if pad is None else pad
        for kind, index, pos, pixels in (("object", obj, track.object_pos, track.object_pixels),
                                         ("pad", pad, track.pad_pos, track.pad_pixels)):
            if index < 0:
                out[f"target_{kind}_pos"][:] = np.nan
                continue
            out[f"target_{kind}_pos"] = pos[t, index]
            if pixels is not None:
                cams = [track.cameras.index(c) if c in track.cameras else None for c in self.cameras]
                out[f"target_{kind}_pixels"] = np.stack([pixels[t, index, c] if c is not None else nan_pixels[0]
                                                         for c in cams])
        return out

    def all_states_chunks(self) -> tuple[np.ndarray, np.ndarray]:
        """Every sample's state (N, S) and action chunk (N, horizon, A): what normalisation stats see."""
        batch = self.batch(np.arange(len(self)), images=False)
        return batch["state"], batch["actions"]


def split_episodes(episodes: list[Episode], holdout_fraction: float, seed: int = 0) -> tuple[list, list]:
    """Deterministic split by episode (never by frame: frames of one scene are near-duplicates)."""
    order = np.random.default_rng(seed).permutation(len(episodes))
    n_hold = int(round(len(episodes) * holdout_fraction)) if len(episodes) > 1 else 0
    hold = set(order[:n_hold].tolist())
    return [e for i, e in enumerate(episodes) if i not in hold], [e for i, e in enumerate(episodes) if i in hold]
