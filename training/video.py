"""Rollout videos with OpenCV: frames side by side, the instruction drawn on top, atomic mp4 files."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import cv2
import numpy as np


def compose(images: dict[str, np.ndarray], caption: str, scale: int = 3) -> np.ndarray:
    """{camera: (H, W, 3) uint8 RGB} -> one RGB frame: cameras side by side, upscaled, caption on a band."""
    row = np.concatenate([images[k] for k in sorted(images)], axis=1)
    row = cv2.resize(row, (row.shape[1] * scale, row.shape[0] * scale), interpolation=cv2.INTER_NEAREST)
    band = np.zeros((28, row.shape[1], 3), np.uint8)
    cv2.putText(band, caption[:90], (6, 19), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (255, 255, 255), 1, cv2.LINE_AA)
    return np.concatenate([band, row], axis=0)


def write_video(path: str | Path, frames: list[np.ndarray], fps: int = 10) -> Path:
    """RGB frames (all the same size) -> mp4 at `path`, via a temporary file and a rename."""
    if not frames:
        raise ValueError("frames: expected at least one frame, received none")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=".mp4", dir=path.parent)
    os.close(fd)
    h, w = frames[0].shape[:2]
    writer = cv2.VideoWriter(tmp, cv2.VideoWriter_fourcc(*"mp4v"), fps, (w, h))
    try:
        if not writer.isOpened():
            raise RuntimeError(f"video: OpenCV cannot write mp4 to {tmp}")
        for frame in frames:
            if frame.shape[:2] != (h, w):
                frame = cv2.resize(frame, (w, h))
            writer.write(cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
        writer.release()
        os.replace(tmp, path)
    except BaseException:
        writer.release()
        Path(tmp).unlink(missing_ok=True)
        raise
    return path
