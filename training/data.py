"""The training dataset: (observation, action chunk) samples from episodes (`ChunkDataset`), and the
episode split for holdout.

The dataset format lives in the modules below this one, and its names are importable from here too:
`training.episodes` (an episode in memory and as a file's bytes), `training.manifest` (a dataset
directory: manifest, reading and storing episodes) and `training.features` (what a policy needs to know
about a dataset: `DatasetFeatures`).

Batches (`ChunkDataset.batch`): images {cam: (B, H, W, 3) uint8} (None with images=False), state (B, S)
float32 (+ 4C target points with `target_points`), instruction [B str], actions (B, horizon, A) float32,
and grounding targets {GROUNDING_KEYS: (B, 3), `*_pixels`: (B, cameras, 2)}, NaN where unknown.
"""

from __future__ import annotations

import numpy as np

from policy.artifacts import atomic_write_bytes, sha256_bytes  # noqa: F401  (re-exported: the one atomic writer)
from training.episodes import (  # noqa: F401  (re-exported: the dataset format's names, as before the split)
    GROUNDING_KEYS,
    JPEG_QUALITY,
    Episode,
    SceneTrack,
    encode_frame,
    episode_filename,
    episode_from_bytes,
    episode_to_bytes,
)
from training.features import DatasetFeatures, dataset_features, default_delta_mask  # noqa: F401
from training.manifest import (  # noqa: F401
    FORMAT,
    describe_episode,
    episode_entry,
    iter_episodes,
    load_manifest,
    new_manifest,
    read_episodes,
    save_manifest,
)

# Align-stage referring expressions for one object of the scene, by its name in the env's info.
REFERRING_TEMPLATES = ("{}", "the {}", "find the {}", "where is the {}", "look at the {}", "the {} on the table")
# ... and for an object and a pad of the scene together, in the order push/place instructions name them.
PAIR_TEMPLATES = ("the {} and the {}", "the {} on the {}", "the {} to the {}", "find the {} and the {}")



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
