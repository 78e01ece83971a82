import numpy as np
import pytest

from ros_nodes.commands import parse_command
from ros_nodes.speech import SAMPLE_RATE, SileroVAD, Transcriber, UtteranceSegmenter, load_wav, resample
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
    ("", False, ""), ("Put the green block on the blue pad", False, "put the green block on the blue pad")])
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
