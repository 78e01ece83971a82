"""A dataset directory on disk: its manifest, and reading and storing the episodes it lists.

Layout of a dataset directory:

    manifest.json           format, env, cameras, per-episode {file, sha256, steps, task, ...}, dropped seeds
    episode_000042.npz      one episode per file (seed 42): see `training.episodes`

Every file is written through `policy.artifacts.atomic_write_bytes` (a temporary name, fsync, rename); the
manifest likewise, after every episode. A killed collection therefore loses at most the episode in flight, and re-running the same
command resumes from the manifest. On load every file is checked against its sha256; a corrupted
episode is skipped with a warning, never trained on.

Time: the manifest's `fps` is the control rate the episodes were recorded at (`mot collect`: the env's;
imports: the source's), and each episode stores per-frame `timestamps` (float64 seconds from its first
frame). Datasets collected before these existed still load: their `fps` is None (unknown) and their
episodes' `timestamps` None.

`mot data import lerobot|rosbag` write this same format, with the manifest's `source` naming where the
episodes came from.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

from policy.artifacts import atomic_write_bytes, sha256_bytes
from policy.errors import DatasetError
from training.episodes import Episode, episode_filename, episode_from_bytes, episode_to_bytes

FORMAT = "mot-dataset/1"


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


def store_episode(directory: Path, manifest: dict, episode: Episode) -> None:
    """Writes one episode file (named by its seed) and records it in the manifest, which is saved after
    every episode: an import killed half-way resumes where it stopped."""
    describe_episode(manifest, episode)
    data = episode_to_bytes(episode)
    name = episode_filename(episode.seed)
    atomic_write_bytes(directory / name, data)
    manifest["episodes"][str(episode.seed)] = episode_entry(episode, name, data)
    save_manifest(directory, manifest)
