"""Rollout videos that browsers play: H.264 mp4 through PyAV, written atomically.

compose(images, caption, step=...)  {camera: (H, W, 3) uint8 RGB} -> one (28 + H*scale, sum(W)*scale, 3) frame:
    cameras side by side (sorted by name), each labelled with its name, the caption (and "step N") on a top band.
mark_points(images, points, cameras)  copies of the camera images with the policy's target points drawn on them
    (a magenta cross on the object point, a cyan one on the pad point): where the policy pointed.
write_video(path, frames, fps, outcome=...)  (H, W, 3) uint8 RGB frames -> mp4 (libx264, yuv420p, sizes padded
    to even); with an outcome, the last second carries a green SUCCESS / red FAILED banner.
encoder()  the encoder this PyAV build uses: the first of CODECS that opens ("libx264", else "h264", else "mpeg4").
"""

from __future__ import annotations

import functools
from fractions import Fraction
from pathlib import Path

import av
import cv2
import numpy as np

from policy.artifacts import atomic_path

CODECS = ("libx264", "h264", "mpeg4")  # H.264 first; MPEG-4 part 2 only where the build has no H.264 encoder
OUTCOME_SECONDS = 1.0  # how long before the end the outcome banner shows
BAND = 28  # caption band height, px
FONT = cv2.FONT_HERSHEY_SIMPLEX
WHITE, BLACK = (255, 255, 255), (0, 0, 0)
OBJECT_MARK, PAD_MARK = (255, 0, 255), (0, 255, 255)  # magenta: the object point; cyan: the pad point


@functools.cache
def _first_working(candidates: tuple[str, ...]) -> str:
    for name in candidates:
        try:
            ctx = av.CodecContext.create(name, "w")
            ctx.width, ctx.height, ctx.pix_fmt, ctx.time_base = 64, 64, "yuv420p", Fraction(1, 10)
            ctx.open()
            return name
        except Exception:  # unknown to this build, or present but unusable (a hardware encoder without its device)
            continue
    raise RuntimeError(f"video: no usable encoder in this PyAV build; tried {', '.join(candidates)}")


def encoder() -> str:
    """The encoder write_video uses: the first of CODECS this PyAV build can open (probed once)."""
    return _first_working(tuple(CODECS))


def _label(view: np.ndarray, name: str) -> None:
    """`name` in white on a black box in the view's top-left corner (draws in place)."""
    name = _fit(name, view.shape[1] - 8, 0.4)
    (tw, th), _ = cv2.getTextSize(name, FONT, 0.4, 1)
    cv2.rectangle(view, (0, 0), (tw + 7, th + 8), BLACK, cv2.FILLED)
    cv2.putText(view, name, (4, th + 4), FONT, 0.4, WHITE, 1, cv2.LINE_AA)


def _fit(text: str, width: int, scale: float) -> str:
    """`text`, shortened with "..." until it is at most `width` px wide."""
    while text and cv2.getTextSize(text, FONT, scale, 1)[0][0] > width:
        text = text[:-4] + "..." if len(text) > 4 else ""
    return text


def compose(images: dict[str, np.ndarray], caption: str, scale: int = 3, step: int | None = None,
            labels: bool = True) -> np.ndarray:
    """{camera: (H, W, 3) uint8 RGB} -> (BAND + H*scale, sum(W)*scale, 3) uint8 RGB: cameras side by side
    (sorted by name), upscaled, each with its name in its top-left corner (labels=True); the caption on a
    band on top, and "step N" at the band's right end when `step` is given."""
    views = []
    for name in sorted(images):
        view = cv2.resize(images[name], None, fx=scale, fy=scale, interpolation=cv2.INTER_NEAREST)
        if labels:
            _label(view, name)
        views.append(view)
    row = np.concatenate(views, axis=1)
    band = np.zeros((BAND, row.shape[1], 3), np.uint8)
    right = row.shape[1] - 6
    if step is not None:
        counter = f"step {step}"
        right -= cv2.getTextSize(counter, FONT, 0.5, 1)[0][0]
        cv2.putText(band, counter, (right, 19), FONT, 0.5, (255, 220, 0), 1, cv2.LINE_AA)
        right -= 12
    cv2.putText(band, _fit(caption, right - 6, 0.5), (6, 19), FONT, 0.5, WHITE, 1, cv2.LINE_AA)
    return np.concatenate([band, row], axis=0)


def mark_points(images: dict[str, np.ndarray], points: np.ndarray, cameras: tuple[str, ...]) -> dict[str, np.ndarray]:
    """{camera: (H, W, 3) uint8 RGB} and target points (4 * cams,: object (u, v) in [0, 1] per camera in `cameras`
    order, then pad; PolicyRunner.last_points) -> the same dict with copies of those cameras' images marked:
    an OBJECT_MARK cross on the object point, a PAD_MARK cross on the pad point (drawn before compose upscales)."""
    n = len(cameras)
    points = np.asarray(points, np.float64)
    if points.shape != (4 * n,):
        raise ValueError(f"points: expected shape ({4 * n},) (object and pad (u, v) per camera), received {points.shape}")
    out = dict(images)
    for i, camera in enumerate(cameras):
        if camera not in images:
            continue
        view = np.ascontiguousarray(images[camera]).copy()
        h, w = view.shape[:2]
        for k, color in enumerate((OBJECT_MARK, PAD_MARK)):
            u, v = np.clip(np.nan_to_num(points[2 * (k * n + i):2 * (k * n + i) + 2]), 0.0, 1.0)
            at = (min(int(u * w), w - 1), min(int(v * h), h - 1))
            cv2.drawMarker(view, at, color, cv2.MARKER_CROSS, max(5, w // 10), 1)
        out[camera] = view
    return out


def banner(frame: np.ndarray, outcome: bool | str) -> np.ndarray:
    """(H, W, 3) uint8 RGB -> a copy with the outcome on a band across its bottom sixth: True / "success" ->
    green "SUCCESS", False / "failure" -> red "FAILED", any other string -> itself, upper-cased, on grey."""
    key = outcome if isinstance(outcome, bool) else str(outcome).strip().lower()
    if key is True or key in ("success", "succeeded", "ok", "true"):
        text, color = "SUCCESS", (0, 170, 0)
    elif key is False or key in ("failure", "failed", "fail", "false"):
        text, color = "FAILED", (200, 0, 0)
    else:
        text, color = str(outcome).strip().upper(), (90, 90, 90)
    out = frame.copy()
    h, w = out.shape[:2]
    top = h - max(16, h // 6)
    out[top:] = color
    size = (h - top) / 36
    text = _fit(text, w - 8, size)
    tw, th = cv2.getTextSize(text, FONT, size, 2)[0]
    cv2.putText(out, text, ((w - tw) // 2, top + (h - top + th) // 2), FONT, size, WHITE, 2, cv2.LINE_AA)
    return out


def mark_outcome(frames: list[np.ndarray], outcome: bool | str, fps: float = 10) -> list[np.ndarray]:
    """A copy of `frames` whose last OUTCOME_SECONDS (at least the last frame) carry banner(outcome): for
    a video of several episodes, mark each episode's frames before joining them."""
    start = len(frames) - max(1, round(fps * OUTCOME_SECONDS))
    return [banner(f, outcome) if i >= start else f for i, f in enumerate(frames)]


def _check(i: int, frame) -> np.ndarray:
    if not isinstance(frame, np.ndarray) or frame.dtype != np.uint8 or frame.ndim != 3 or frame.shape[2] != 3:
        got = f"{frame.dtype} {frame.shape}" if isinstance(frame, np.ndarray) else type(frame).__name__
        raise ValueError(f"frames[{i}]: expected an (H, W, 3) uint8 RGB array, received {got}")
    return frame


def write_video(path: str | Path, frames: list[np.ndarray], fps: float = 10,
                outcome: bool | str | None = None) -> Path:
    """(H, W, 3) uint8 RGB frames -> an mp4 at `path` (encoder(): H.264 where available, yuv420p; H and W
    padded to even with black). Frames of another size than the first are resized to it. With `outcome`,
    the last second shows it (see mark_outcome). The file appears only once complete. Returns the path."""
    if not frames:
        raise ValueError("frames: expected at least one (H, W, 3) uint8 RGB frame, received none")
    path, codec = Path(path), encoder()
    h, w = _check(0, frames[0]).shape[:2]
    rate = Fraction(fps).limit_denominator(1000)
    marked_from = len(frames) - max(1, round(fps * OUTCOME_SECONDS)) if outcome is not None else len(frames)
    with atomic_path(path, suffix=".mp4") as tmp:
        with av.open(str(tmp), "w", format="mp4", options={"movflags": "+faststart"}) as container:
            stream = container.add_stream(codec, rate=rate)
            stream.width, stream.height, stream.pix_fmt = w + w % 2, h + h % 2, "yuv420p"
            for i, frame in enumerate(frames):
                frame = _check(i, frame)
                if frame.shape[:2] != (h, w):
                    frame = cv2.resize(frame, (w, h), interpolation=cv2.INTER_AREA)
                if i >= marked_from:
                    frame = banner(frame, outcome)
                frame = np.pad(frame, ((0, h % 2), (0, w % 2), (0, 0)))
                container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
            container.mux(stream.encode(None))
    return path
