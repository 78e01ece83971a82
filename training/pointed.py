"""A pointer's target points for every training frame: what a target-points body meets on a robot.

A body trained on the simulator's exact points (PolicyConfig.target_points) is run on a pointer's points,
which miss by a few pixels and, now and then, name another object. Training it on those, for a share of
the samples, shows it the errors it must tolerate (as openpi/LeRobot train on the observations the robot
will have, not on privileged ones):

    mot train --stage policy --target-points sim --train-points-from ALIGN_RUN --pointed-share 0.5 ...

The pointer runs once over every frame; its points are kept next to the prefix cache, under a key that
hashes the pointer (`Pointer.fingerprint`) and the frames (`hash_frames`), so a resumed or repeated run
loads them in a second.
"""

from __future__ import annotations

import hashlib
import io
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from training.data import ChunkDataset, atomic_write_bytes
from training.prefix_cache import hash_frames


def pointed_key(pointer, data: ChunkDataset) -> str:
    h = hashlib.sha256(pointer.fingerprint().encode())
    hash_frames(h, data)
    return h.hexdigest()


def pointed_points(pointer, data: ChunkDataset, directory: str | Path, batch_size: int = 32,
                   progress: bool = True) -> np.ndarray:
    """float32 (len(data), 4 * point cameras): the pointer's points for every frame of `data`, in data.index
    order; loaded from directory/pointed-<key>.npy when there, else computed and saved (temp file + rename)."""
    path = Path(directory) / f"pointed-{pointed_key(pointer, data)}.npy"
    if path.is_file():
        points = np.load(path)
        if points.shape[0] != len(data):
            raise ValueError(f"pointed points {path}: expected {len(data)} frames, received {points.shape[0]}")
        return points
    out = []
    for start in tqdm(range(0, len(data), batch_size), desc="pointer over the frames", disable=not progress):
        batch = data.batch(np.arange(start, min(start + batch_size, len(data))))
        frames = torch.from_numpy(np.stack([batch["images"][c] for c in pointer.model.cfg.cameras], axis=1))
        out.append(pointer.batch(frames, batch["instruction"]))
    points = np.concatenate(out)
    buffer = io.BytesIO()
    np.save(buffer, points)
    atomic_write_bytes(path, buffer.getvalue())
    return points


def swap_points(state: np.ndarray, pointed: np.ndarray, share: float, rng: np.random.Generator) -> np.ndarray:
    """Training states (B, S) whose last P entries are exact target points, the pointer's (B, P) for the same
    frames -> the states with, per sample and with probability `share`, the pointer's points instead."""
    if pointed.shape != (len(state), pointed.shape[1]) or pointed.shape[1] > state.shape[1]:
        raise ValueError(f"pointed: expected ({len(state)}, P <= {state.shape[1]}) points, received {pointed.shape}")
    out = state.copy()
    swap = rng.random(len(state)) < share
    out[swap, -pointed.shape[1]:] = pointed[swap]
    return out
