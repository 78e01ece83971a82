"""Test audio: espeak-ng speaks a sentence to a WAV (22.05 kHz), surrounded by silence like a real mic."""

import shutil
import subprocess
import wave
from pathlib import Path

import numpy as np
import pytest


def speak(text: str, path: Path, silence_s: float = 0.5) -> Path:
    if shutil.which("espeak-ng") is None:
        pytest.skip("espeak-ng not installed (make setup installs it: apt-get install espeak-ng)")
    raw = path.with_name(f".{path.stem}.raw.wav")  # hidden: a watched directory must not play it
    subprocess.run(["espeak-ng", "-w", str(raw), text], check=True, timeout=30)
    with wave.open(str(raw)) as f:
        rate, frames = f.getframerate(), np.frombuffer(f.readframes(f.getnframes()), "<i2")
    pad = np.zeros(int(silence_s * rate), np.int16)
    tmp = path.with_name("." + path.name)  # written under a hidden name, renamed in: never read half-written
    with wave.open(str(tmp), "wb") as f:
        f.setnchannels(1), f.setsampwidth(2), f.setframerate(rate)
        f.writeframes(np.concatenate([pad, frames, pad]).tobytes())
    raw.unlink()
    tmp.rename(path)
    return path
