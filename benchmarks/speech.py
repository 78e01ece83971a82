"""Spoken e-stop on noisy audio: latency and miss rate per SNR, before/after (audio_node's pipeline).

espeak-ng speaks each phrase in several voices; the phrase is mixed into noise (white by default,
--noise pink) at each SNR (speech active level over noise power, in dB), with 1 s of noise before
and 2 s after it. The audio is streamed through the listener exactly as audio_node streams a
microphone, in 32 ms VAD frames, in *audio time*: a segment the VAD emits at audio time t is
transcribed starting at max(t, the end of the previous transcription), taking the measured compute
time, so queueing behind a slow transcription counts as it would live. Prints one JSON object:

- stop_latency_ms (median / p90 / max): from the end of the spoken stop phrase to the e-stop decision;
- miss_rate: stop phrases with no e-stop by the end of the trial (2 s after the phrase);
- false_stop_rate: e-stops on the other phrases (instructions) and on noise alone;
- instruction_accuracy: instructions transcribed to exactly the spoken command.

    python benchmarks/speech.py --json                    # both pipelines, white noise, 20/10/0 dB
    mot bench speech --json --pipeline current --noise pink

Pipelines: "baseline" is audio_node before issue 19 (utterances end after 400 ms of silence, a full
30 s-window Whisper pass, stop words "stop"/"halt"); "current" is audio_node's defaults now (stop
phrases incl. "freeze"/"don't move", an early stop check after 160 ms of silence, partial checks every
0.5 s in long utterances, each with the fast short-window ``Transcriber.spot``). The spoken stop is a
convenience, not a safety e-stop: see docs/ros.md.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from policy.errors import InputError  # noqa: E402
from policy.options import parse  # noqa: E402
from ros_nodes.audio_node import PARAMETERS as AUDIO_NODE_PARAMETERS  # noqa: E402
from ros_nodes.commands import stop_phrases, words  # noqa: E402
from ros_nodes.speech import (DEFAULT_PROMPT, SAMPLE_RATE, VAD_FRAME, CommandListener, SileroVAD,  # noqa: E402
                              Transcriber, UtteranceSegmenter, load_wav, resample)
from training.cli import run_command  # noqa: E402

STOP = ["stop", "freeze", "halt", "don't move"]
OTHER = ["pick up the red cube", "push the blue block"]
# espeak-ng voice, words per minute, pitch: four speakers
VOICES = [("en-us", 160, 50), ("en", 175, 35), ("en-us+f3", 150, 65), ("en+m3", 185, 45)]
LEAD_S, TAIL_S = 1.0, 2.0
BASELINE_PROMPT = ("Commands for a robot arm: pick up the red cube, put the green block on the blue pad, "
                   "push the yellow cylinder, stop, halt.")


def speak(text: str, voice: tuple[str, int, int], folder: Path) -> np.ndarray:
    name, speed, pitch = voice
    path = folder / "phrase.wav"
    subprocess.run(["espeak-ng", "-v", name, "-s", str(speed), "-p", str(pitch), "-w", str(path), text],
                   check=True, timeout=30)
    samples, rate = load_wav(path)
    audio = resample(samples, rate)
    loud = np.flatnonzero(np.abs(audio) > 0.01 * np.abs(audio).max())
    return audio[loud[0]:loud[-1] + 1]  # trimmed: the phrase starts and ends where speech does


def active_power(speech: np.ndarray, frame: int = 320) -> float:
    """Mean power over 20 ms frames within 30 dB of the loudest (an active speech level, as P.56)."""
    n = speech.size // frame
    energy = (speech[: n * frame].reshape(n, frame) ** 2).mean(axis=1)
    return float(energy[energy > energy.max() * 1e-3].mean())


def noise(kind: str, n: int, rng: np.random.Generator) -> np.ndarray:
    white = rng.normal(0.0, 1.0, n)
    if kind == "white":
        return white
    spectrum = np.fft.rfft(white)
    spectrum[1:] /= np.sqrt(np.arange(1, spectrum.size))  # 1/f power
    spectrum[0] = 0
    pink = np.fft.irfft(spectrum, n)
    return pink / pink.std()


def mix(speech: np.ndarray, snr_db: float, kind: str, rng: np.random.Generator) -> tuple[np.ndarray, float, float]:
    """-> (audio, speech start s, speech end s). Noise runs through the whole clip."""
    lead, tail = int(LEAD_S * SAMPLE_RATE), int(TAIL_S * SAMPLE_RATE)
    clean = np.concatenate([np.zeros(lead), speech, np.zeros(tail)])
    scale = np.sqrt(active_power(speech) / 10 ** (snr_db / 10))
    audio = clean + scale * noise(kind, clean.size, rng)
    peak = np.abs(audio).max()
    audio = audio / peak * 0.7 if peak > 0.7 else audio  # a microphone's gain, never clipping
    return audio.astype(np.float32), lead / SAMPLE_RATE, (lead + speech.size) / SAMPLE_RATE


TUNING: dict = {}  # --early-silence-ms / --partial-every-ms overrides of audio_node's defaults ("current")


def make_listener(pipeline: str, transcriber, vad):
    """A fresh listener (one per trial: stream positions start at 0) on a reset, shared VAD model."""
    vad.reset()
    if pipeline == "baseline":
        segmenter = UtteranceSegmenter(vad, min_silence_ms=400)
        return CommandListener(segmenter, transcriber, phrases=(("halt",), ("stop",)), early_stop=False)
    P = {**AUDIO_NODE_PARAMETERS, **TUNING}
    segmenter = UtteranceSegmenter(vad, threshold=P["vad_threshold"], min_silence_ms=P["min_silence_ms"],
                                   early_silence_ms=P["early_silence_ms"], partial_every_ms=P["partial_every_ms"])
    return CommandListener(segmenter, transcriber, phrases=stop_phrases(), early_stop=True)


def run_trial(new_listener, audio: np.ndarray) -> list[tuple[float, object]]:
    """Stream ``audio`` through a new listener in audio time -> [(decision time s, Heard), ...]."""
    listener = new_listener()

    busy_until, decisions = 0.0, []
    for start in range(0, audio.size, VAD_FRAME):
        for heard in listener.feed(audio[start:start + VAD_FRAME]):
            busy_until = max(heard.end / SAMPLE_RATE, busy_until) + heard.compute_s
            decisions.append((busy_until, heard))
    for heard in listener.flush():
        busy_until = max(audio.size / SAMPLE_RATE, busy_until) + heard.compute_s
        decisions.append((busy_until, heard))
    return decisions


def stats_ms(values: list[float]) -> dict:
    if not values:
        return {"n": 0}
    v = np.asarray(values) * 1e3
    return {"n": int(v.size), "median": round(float(np.median(v))), "p90": round(float(np.percentile(v, 90))),
            "max": round(float(v.max()))}


def evaluate(pipeline: str, transcriber, clips: dict, snrs: list[float], kind: str, seed: int) -> dict:
    vad = SileroVAD()

    def listener():
        return make_listener(pipeline, transcriber, vad)
    results = {}
    for snr in snrs:
        rng = np.random.default_rng(seed)
        latencies, onset_latencies, misses, false_stops, others, correct = [], [], [], 0, 0, 0
        for (phrase, voice), speech in clips.items():
            audio, start, end = mix(speech, snr, kind, rng)
            decisions = run_trial(listener, audio)
            stops = [t for t, heard in decisions if heard.estop]
            if phrase in STOP:
                if stops:
                    latencies.append(stops[0] - end)
                    onset_latencies.append(stops[0] - start)
                else:
                    misses.append(f"{phrase} ({voice[0]})")
            else:
                others += 1
                false_stops += bool(stops)
                heard = " | ".join(h.instruction for _, h in decisions if h.instruction)
                correct += heard == " ".join(words(phrase))
        # Noise alone, as long as a trial and as loud as in the trials at this SNR: does anything stop?
        level = np.sqrt(np.mean([active_power(c) for c in clips.values()]) / 10 ** (snr / 10))
        for _ in range(4):
            quiet = level * noise(kind, int((LEAD_S + TAIL_S + 1.0) * 16_000), rng)
            quiet = quiet / np.abs(quiet).max() * 0.7 if np.abs(quiet).max() > 0.7 else quiet
            others += 1
            false_stops += any(h.estop for _, h in run_trial(listener, quiet.astype(np.float32)))
        n_stop = len(latencies) + len(misses)
        results[f"{snr:g}"] = {
            "stop_latency_ms": stats_ms(latencies), "stop_latency_from_onset_ms": stats_ms(onset_latencies),
            "miss_rate": round(len(misses) / n_stop, 3),
            "miss_rate_by_phrase": {phrase: round(sum(m.startswith(phrase + " (") for m in misses) /
                                                  sum(p == phrase for p, _ in clips), 3)
                                    for phrase in STOP if any(p == phrase for p, _ in clips)},
            "misses": misses,
            "false_stop_rate": round(false_stops / others, 3),
            "instruction_accuracy": round(correct / max(1, sum(p in OTHER for p, _ in clips)), 3)}
    return results


@dataclass
class SpeechBenchConfig:
    pipeline: Literal["baseline", "current", "both"] = "both"
    """audio_node before issue 19 (baseline), its defaults now (current), or both"""
    snr: tuple[float, ...] = (20.0, 10.0, 0.0)
    """SNRs in dB (speech active level over noise power)"""
    noise: Literal["white", "pink"] = "white"
    """the noise mixed into the speech"""
    voices: int = len(VOICES)
    """how many of the espeak-ng voices speak each phrase"""
    threads: int = 1
    """Whisper CPU threads (audio_node's default: 1)"""
    seed: int = 0
    """noise seed"""
    early_silence_ms: int | None = None
    """override audio_node's early_silence_ms (current pipeline only)"""
    partial_every_ms: int | None = None
    """override audio_node's partial_every_ms (current pipeline only)"""
    json: bool = False
    """print only the JSON result"""

    def __post_init__(self) -> None:
        if not self.snr:
            raise InputError("snr: expected at least one SNR in dB, received none")
        if not 1 <= self.voices <= len(VOICES):
            raise InputError(f"voices: expected an int in 1..{len(VOICES)}, received {self.voices}")
        if self.threads < 1:
            raise InputError(f"threads: expected an int >= 1, received {self.threads}")
        for name in ("early_silence_ms", "partial_every_ms"):
            if getattr(self, name) is not None and getattr(self, name) <= 0:
                raise InputError(f"{name}: expected milliseconds > 0, received {getattr(self, name)}")


def main(argv: list[str] | None = None) -> int:
    args = parse(SpeechBenchConfig, argv, "mot bench speech", __doc__.split("\n\n")[0])
    TUNING.clear()
    TUNING.update({k: v for k, v in (("early_silence_ms", args.early_silence_ms),
                                     ("partial_every_ms", args.partial_every_ms)) if v is not None})
    if shutil.which("espeak-ng") is None:
        print("benchmarks/speech.py: needs espeak-ng (apt-get install espeak-ng)", file=sys.stderr)
        return 2
    log = (lambda *a: None) if args.json else (lambda *a: print(*a, file=sys.stderr))

    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        clips = {(phrase, voice): speak(phrase, voice, Path(tmp)) for phrase in STOP + OTHER
                 for voice in VOICES[: args.voices]}
    pipelines = ["baseline", "current"] if args.pipeline == "both" else [args.pipeline]
    out = {"benchmark": "speech", "noise": args.noise, "snr_db": list(args.snr), "voices": [v[0] for v in VOICES[: args.voices]],
           "stop_phrases_spoken": STOP, "other_phrases": OTHER, "trials_per_snr": len(clips) + 4,
           "latency_from": "end of the spoken stop phrase (stop_latency_ms) / its onset (..._from_onset_ms)"}
    for pipeline in pipelines:
        log(f"{pipeline} ...")
        transcriber = Transcriber(prompt=BASELINE_PROMPT if pipeline == "baseline" else DEFAULT_PROMPT,
                                  threads=args.threads)
        out[pipeline] = evaluate(pipeline, transcriber, clips, args.snr, args.noise, args.seed)
    if TUNING:
        out["current_overrides"] = dict(TUNING)
    out.update(threads=args.threads, cpu=platform.processor() or platform.machine(), cpu_count=os.cpu_count(),
               wall_s=round(time.perf_counter() - started, 1))
    print(json.dumps(out, indent=None if args.json else 2))
    return 0


if __name__ == "__main__":  # as a script too: a mistake is one line and exit 2, as under `mot bench`
    sys.exit(run_command("bench speech", main, sys.argv[1:]))
