"""What a policy needs to know about a dataset, from its metadata alone: `DatasetFeatures`.

Cameras, image shapes, state/action sizes and names, fps, and which action dimensions may be learned
relative to the state, for datasets collected here and imported ones alike (`dataset_features`).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

from policy.errors import DatasetError
from training.manifest import describe_episode, iter_episodes, load_manifest


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
