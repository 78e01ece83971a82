"""training/video.py: H.264 mp4 that decodes back to what was composed, labels, step counter, outcome banner,
input validation, atomic writes with the umask's mode, and the encoder fallback."""

from __future__ import annotations

import os

import av
import numpy as np
import pytest

from training import video
from training.video import banner, compose, encoder, mark_outcome, write_video


def scene(t: int = 0, h: int = 21, widths=(16, 15)) -> dict[str, np.ndarray]:
    """Two smooth, differently coloured cameras (odd sizes) that change with t: {camera: (h, w, 3) uint8}."""
    out = {}
    for name, w, hue in zip(("wrist", "front"), widths, ((220, 40, 30), (30, 60, 210))):
        y, x = np.mgrid[:h, :w]
        img = np.stack([np.full((h, w), c, np.float32) for c in hue], -1)
        img[..., 1] += (x + y + 3 * t) % 40
        out[name] = img.clip(0, 255).astype(np.uint8)
    return out


def decode(path, crop: tuple[int, int] | None = None) -> tuple[str, list[np.ndarray]]:
    """-> (codec name, decoded (H', W', 3) RGB frames, cut to crop=(H, W) when given: drops the even padding)."""
    with av.open(str(path)) as c:
        name = c.streams.video[0].codec_context.name
        frames = [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]
    return name, [f[:crop[0], :crop[1]] for f in frames] if crop else frames


def h264_encoder_available() -> bool:
    try:
        return av.codec.Codec("libx264", "w") is not None
    except Exception:
        return False


def plain(n: int = 12, shade: int = 128) -> list[np.ndarray]:
    """n grey frames of compose's layout: (BAND + 63, 93, 3)."""
    return [compose({k: np.full_like(v, shade) for k, v in scene().items()}, "grey", step=i) for i in range(n)]


def test_h264_roundtrip_size_count_and_content(tmp_path):
    frames = [compose(scene(t), "put the red cube on the pad", step=t) for t in range(15)]
    h, w = frames[0].shape[:2]
    assert (h, w) == (video.BAND + 63, 93)  # both odd: must be padded
    path = write_video(tmp_path / "v.mp4", frames, fps=10)
    assert path == tmp_path / "v.mp4" and path.is_file()
    name, got = decode(path)
    if h264_encoder_available():
        assert encoder() in ("libx264", "h264") and name == "h264"
    else:  # this PyAV build has no H.264 encoder: the fallback is reported and is what the file holds
        assert encoder() == "mpeg4" == name
    assert len(got) == len(frames)
    assert got[0].shape == (h + 1, w + 1, 3)
    for want, have in zip(frames, got):
        assert np.abs(have[:h, :w].astype(int) - want).mean() < 8  # codec tolerance (measured ~4 with libx264)
        assert have[h:].mean() < 30 and have[:, w:].mean() < 30  # black padding (4:2:0 chroma bleeds into it)
    # frames keep their order (the scene moves with t)
    assert np.abs(got[3][:h, :w].astype(int) - frames[3]).mean() < np.abs(got[3][:h, :w].astype(int) - frames[9]).mean()


def test_other_sizes_resized_to_first(tmp_path):
    frames = [np.full((40, 60, 3), 90, np.uint8), np.full((20, 30, 3), 200, np.uint8)]
    _, got = decode(write_video(tmp_path / "v.mp4", frames))
    assert [g.shape for g in got] == [(40, 60, 3)] * 2
    assert abs(got[1].mean() - 200) < 4


@pytest.mark.parametrize("outcome,channel", [("success", 1), (True, 1), ("failure", 0), (False, 0)])
def test_outcome_banner_on_last_second_only(tmp_path, outcome, channel):
    frames = plain(25)
    _, got = decode(write_video(tmp_path / "v.mp4", frames, fps=10, outcome=outcome), frames[0].shape[:2])
    bottom = [g[-8:].reshape(-1, 3).mean(0) for g in got]  # the banner's band, below its text
    def dominant(rgb):
        return all(rgb[channel] > rgb[c] + 80 for c in range(3) if c != channel)
    assert dominant(bottom[-1]) and dominant(bottom[15])  # the last 10 frames (1 s at 10 fps)
    assert not dominant(bottom[0]) and not dominant(bottom[14])
    assert abs(bottom[0].mean() - 128) < 6  # untouched grey


def test_outcome_at_least_last_frame_and_free_text(tmp_path):
    _, got = decode(write_video(tmp_path / "v.mp4", plain(3), fps=0.5, outcome="timeout"), plain(1)[0].shape[:2])
    assert np.abs(got[-1][-8:].astype(int) - 128).mean() > 20  # grey band of another shade
    assert np.abs(got[0][-8:].astype(int) - 128).mean() < 6
    marked = mark_outcome(plain(30), "success", fps=10)
    assert sum(not np.array_equal(m, p) for m, p in zip(marked, plain(30))) == 10
    assert not np.array_equal(banner(plain(1)[0], "timeout"), banner(plain(1)[0], "stuck"))


def test_compose_labels_and_step_counter():
    imgs = scene()
    base = compose(imgs, "cap")
    assert base.shape == (video.BAND + 63, 93, 3) and base.dtype == np.uint8
    bare = compose(imgs, "cap", labels=False)
    band = video.BAND
    assert np.array_equal(base[:band], bare[:band])  # labels leave the caption band alone...
    diff = np.abs(base.astype(int) - bare).sum(-1)
    assert diff[band:band + 20, :48].any() and diff[band:band + 20, 48:].any()  # ...and mark both views
    small, small_bare = compose(imgs, "cap", scale=2), compose(imgs, "cap", scale=2, labels=False)
    assert small.shape == (band + 42, 62, 3) and not np.array_equal(small[band:], small_bare[band:])
    # sorted by name: 'front' (blue) left, 'wrist' (red) right
    assert bare[-1, 0, 2] > 150 and bare[-1, -1, 0] > 150
    wide = {k: np.repeat(v, 4, axis=1) for k, v in imgs.items()}  # room for the counter
    s12, s13, none = (compose(wide, "cap", step=s) for s in (12, 13, None))
    assert not np.array_equal(s12[:band], none[:band]) and not np.array_equal(s12[:band], s13[:band])
    assert np.array_equal(s12[band:], none[band:])  # the counter sits on the band only
    right = s12.shape[1] // 2
    assert not np.array_equal(s12[:band, right:], none[:band, right:])  # at its right end


@pytest.mark.parametrize("frames,needle", [
    ([], "frames: expected at least one"),
    ([np.zeros((8, 8, 3), np.float32)], "frames[0]: expected an (H, W, 3) uint8 RGB array, received float32 (8, 8, 3)"),
    ([np.zeros((8, 8, 3), np.uint8), np.zeros((8, 8), np.uint8)],
     "frames[1]: expected an (H, W, 3) uint8 RGB array, received uint8 (8, 8)"),
    ([np.zeros((8, 8, 4), np.uint8)], "received uint8 (8, 8, 4)"),
    (["not a frame"], "received str"),
])
def test_invalid_frames_raise(tmp_path, frames, needle):
    with pytest.raises(ValueError) as e:
        write_video(tmp_path / "v.mp4", frames)
    assert needle in str(e.value)
    assert list(tmp_path.iterdir()) == []


def test_atomic_failure_mid_way_leaves_previous_file_and_no_temp(tmp_path):
    out = tmp_path / "out"
    good = plain(6)
    path = write_video(out / "v.mp4", good)
    before = path.read_bytes()
    bad = good[:3] + [good[3].astype(np.float32)] + good[4:]
    with pytest.raises(ValueError, match=r"frames\[3\]"):
        write_video(path, bad)
    assert sorted(p.name for p in out.iterdir()) == ["v.mp4"] and path.read_bytes() == before
    with pytest.raises(ValueError, match=r"frames\[3\]"):
        write_video(out / "new.mp4", bad)
    assert sorted(p.name for p in out.iterdir()) == ["v.mp4"]


def test_mode_follows_umask(tmp_path):
    old = os.umask(0o022)
    try:
        path = write_video(tmp_path / "v.mp4", plain(2))
    finally:
        os.umask(old)
    assert path.stat().st_mode & 0o777 == 0o644


def test_fallback_encoder_is_used_and_reported(tmp_path, monkeypatch):
    monkeypatch.setattr(video, "CODECS", ("no-such-encoder", "mpeg4"))
    assert encoder() == "mpeg4"
    frames = plain(4)
    name, got = decode(write_video(tmp_path / "v.mp4", frames), frames[0].shape[:2])
    assert name == "mpeg4" and len(got) == 4
    assert all(np.abs(g.astype(int) - f).mean() < 8 for g, f in zip(got, frames))
    monkeypatch.setattr(video, "CODECS", ("no-such-encoder",))
    with pytest.raises(RuntimeError, match="no-such-encoder"):
        write_video(tmp_path / "w.mp4", plain(2))
    assert [p.name for p in tmp_path.iterdir()] == ["v.mp4"]
