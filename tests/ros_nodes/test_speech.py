import numpy as np
import pytest

from ros_nodes.commands import parse_command, stop_phrases
from ros_nodes.speech import (SAMPLE_RATE, VAD_FRAME, CommandListener, SileroVAD, Transcriber, UtteranceSegmenter,
                              load_wav, resample)
from tests.ros_nodes.speech_audio import speak


def test_resample_keeps_the_tone_and_the_duration():
    rate = 22_050
    t = np.arange(rate) / rate
    tone = np.sin(2 * np.pi * 440 * t).astype(np.float32)
    out = resample(tone, rate, SAMPLE_RATE)
    assert out.size == SAMPLE_RATE
    spectrum = np.abs(np.fft.rfft(out))
    assert abs(np.argmax(spectrum) * SAMPLE_RATE / out.size - 440) < 2


def test_resample_removes_what_16k_cannot_hold():
    rate = 22_050
    t = np.arange(rate) / rate
    out = resample(np.sin(2 * np.pi * 10_000 * t).astype(np.float32), rate, SAMPLE_RATE)  # above 8 kHz Nyquist
    assert np.abs(out).max() < 0.05


@pytest.mark.parametrize("text,estop,instruction", [
    ("Pick up the red cube.", False, "pick up the red cube"), ("Stop!", True, ""), ("please HALT now", True, ""),
    ("", False, ""), ("Put the green block on the blue pad", False, "put the green block on the blue pad"),
    ("Freeze!", True, ""), ("Don\u2019t move.", True, ""), ("do not move the arm", True, ""),
    ("don't remove the cube", False, "don't remove the cube"), ("the robot should move", False, "the robot should move")])
def test_parse_command(text, estop, instruction):
    command = parse_command(text)
    assert command.estop == estop and command.instruction == instruction


def test_silence_is_not_speech():
    segmenter = UtteranceSegmenter(SileroVAD())
    noise = np.random.default_rng(0).normal(0, 0.001, SAMPLE_RATE * 2).astype(np.float32)
    assert segmenter.feed(noise) == [] and segmenter.flush() is None


def test_spoken_instruction_is_segmented_and_transcribed(tmp_path):
    samples, rate = load_wav(speak("pick up the red cube", tmp_path / "pick.wav"))
    audio = resample(samples, rate)
    segmenter = UtteranceSegmenter(SileroVAD())
    utterances = segmenter.feed(audio)
    tail = segmenter.flush()
    utterances += [tail] if tail is not None else []
    assert len(utterances) == 1
    assert 0.8 < utterances[0].size / SAMPLE_RATE < 3.0
    assert parse_command(Transcriber()(utterances[0])).instruction == "pick up the red cube"


def test_configured_stop_phrases_add_to_the_defaults():
    phrases = stop_phrases(["abort", "emergency stop now", ""])
    assert parse_command("Abort!", phrases).estop and parse_command("freeze", phrases).estop
    assert not parse_command("abort", stop_phrases()).estop
    assert parse_command("emergency stop now", phrases).estop


@pytest.fixture(scope="module")
def transcriber():
    return Transcriber()


def _stream(listener, audio):
    """Feed 32 ms frames like a microphone -> [(stream seconds when emitted, Heard)]."""
    heard = []
    for start in range(0, audio.size, VAD_FRAME):
        heard += [(h.end / SAMPLE_RATE, h) for h in listener.feed(audio[start:start + VAD_FRAME])]
    return heard + [(audio.size / SAMPLE_RATE, h) for h in listener.flush()]


def test_a_spoken_stop_is_caught_before_the_utterance_ends(tmp_path, transcriber):
    samples, rate = load_wav(speak("freeze", tmp_path / "freeze.wav", silence_s=1.0))
    audio = resample(samples, rate)
    listener = CommandListener(UtteranceSegmenter(SileroVAD(), early_silence_ms=160, partial_every_ms=500),
                               transcriber)
    heard = _stream(listener, audio)
    stops = [(t, h) for t, h in heard if h.estop]
    final = next(t for t, h in heard if h.kind == "final")
    assert stops and stops[0][1].kind in ("early", "partial") and stops[0][0] < final
    assert len(stops) == 1 and all(not h.instruction for _, h in heard)  # one stop, and no instruction from it


def test_early_checks_never_publish_an_instruction(tmp_path, transcriber):
    samples, rate = load_wav(speak("pick up the red cube", tmp_path / "pick.wav"))
    listener = CommandListener(UtteranceSegmenter(SileroVAD(), early_silence_ms=160, partial_every_ms=300),
                               transcriber)
    heard = [h for _, h in _stream(listener, resample(samples, rate))]
    assert [h.instruction for h in heard if h.instruction] == ["pick up the red cube"]
    assert all(h.kind == "final" for h in heard if h.instruction) and not any(h.estop for h in heard)
