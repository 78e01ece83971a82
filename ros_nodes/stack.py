"""`mot stack sim|robot`: the nodes of a launch file, from the same YAML, in one process.

For development without a ROS install (launch / launch_ros are not on PyPI): each node is built with
``--ros-args --params-file <yaml>``, exactly the parameters `ros2 launch` would give it, and all of
them spin in one multi-threaded rclpy executor. Other processes (`mot say`, `ros2 topic echo`) see
the same topics over DDS.

    mot stack sim --checkpoint runs/small            # sim_node + policy_node
    mot stack sim --checkpoint runs/small --audio    # + audio_node on the microphone
    mot stack sim --checkpoint runs/small --record runs/sim.bag   # + bag_recorder: the topics into a bag
"""

from __future__ import annotations

import importlib
import os
import sys
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Callable, Literal

import rclpy
import tyro
import yaml
from rclpy.executors import MultiThreadedExecutor
from rclpy.signals import SignalHandlerOptions

from policy.errors import InputError
from policy.options import parse
from ros_nodes.ament import share_directory
from ros_nodes.common import close_node, freeze_loaded_objects, install_stop_signals, spin_until

# Which nodes each graph starts: (node name in the YAML, factory "module:Class"). Mirrors launch/*.launch.py
# (tests/ros_nodes/test_launch.py checks that the two agree).
GRAPHS: dict[str, list[tuple[str, str]]] = {
    "sim": [("sim_node", "ros_nodes.sim_node:SimNode"), ("policy_node", "ros_nodes.policy_node:PolicyNode")],
    "robot": [("front_camera", "ros_nodes.camera_node:CameraNode"), ("wrist_camera", "ros_nodes.camera_node:CameraNode"),
              ("audio_node", "ros_nodes.audio_node:AudioNode"), ("policy_node", "ros_nodes.policy_node:PolicyNode")],
}
OPTIONAL = {"audio_node": "ros_nodes.audio_node:AudioNode"}
# `--record BAG`: one more node in the graph (no launch file starts it; `ros2 bag record` does that job there).
RECORDER = ("bag_recorder", "ros_nodes.bag_recorder:BagRecorder")


def params_file(graph: str) -> Path:
    return share_directory() / "config" / f"{graph}.yaml"


def _factory(spec: str) -> Callable:
    module, name = spec.split(":")
    return getattr(importlib.import_module(module), name)


def build_nodes(graph: str, overrides: dict[str, dict], extra: list[tuple[str, str]] = (),
                params: Path | None = None, context=None, only: list[str] | None = None) -> list:
    """Instantiate the graph's nodes (or the ``only`` named ones) with the YAML's parameters plus
    per-node ``overrides``."""
    params = params or params_file(graph)
    declared = yaml.safe_load(params.read_text())
    nodes = []
    try:
        for name, spec in [*GRAPHS[graph], *extra]:
            if only is not None and name not in only:
                continue
            args = ["--ros-args", "-r", f"__node:={name}"]
            if name in declared:
                args += ["--params-file", str(params)]
            for key, value in overrides.get(name, {}).items():
                args += ["-p", f"{key}:={yaml.safe_dump(value, default_flow_style=True).strip().removesuffix('...').strip()}"]
            nodes.append(_factory(spec)(cli_args=args, context=context))
    except Exception:
        for node in nodes:
            _close(node)
        raise
    return nodes


def _close(node) -> None:
    close_node(node)


@dataclass
class StackConfig:
    graph: tyro.conf.Positional[Annotated[Literal["robot", "sim"], tyro.conf.arg(metavar="{robot,sim}")]]
    """which launch file's nodes to run"""
    checkpoint: Path
    """policy checkpoint directory"""
    backend: Literal["torch", "onnxruntime", "tensorrt"] | None = None
    """policy_node's runtime (default: the YAML's)"""
    audio: bool = False
    """(sim) also run audio_node"""
    audio_source: Path | None = None
    """audio_node source: a .wav file or a directory of them (implies --audio in the sim)"""
    dry_run: bool = False
    """policy_node computes and logs, publishes no command"""
    params: Path | None = None
    """a parameter YAML instead of the installed one"""
    record: Path | None = None
    """(sim) also record the graph's topics into this new ROS 2 bag directory (mcap; see
    ros_nodes/bag_recorder.py): `mot data import rosbag BAG --topics launch/config/sim_topics.yaml`"""

    def __post_init__(self) -> None:
        if self.params is not None and not self.params.is_file():
            raise InputError(f"params: expected a parameter YAML file, received {self.params} (no such file)")
        if self.audio_source is not None and not self.audio_source.exists():
            raise InputError(f"audio_source: expected a .wav file or a directory, received {self.audio_source} "
                             "(no such file or directory)")
        if self.record is not None:
            if self.graph != "sim":
                raise InputError(f"record: expected the sim graph (the recorder's topics are the sim stack's), "
                                 f"received graph {self.graph!r}")
            if self.record.exists():
                raise InputError(f"record: expected a new bag directory, received {self.record} (it exists)")


def main(argv: list[str] | None = None) -> int:
    args = parse(StackConfig, argv, "mot stack", __doc__)
    policy = {"checkpoint": str(args.checkpoint.resolve()), "dry_run": args.dry_run}
    if args.backend:
        policy["backend"] = args.backend
    overrides: dict[str, dict] = {"policy_node": policy}
    if args.audio_source:
        overrides["audio_node"] = {"source": str(args.audio_source.resolve())}
    extra = [("audio_node", OPTIONAL["audio_node"])] if args.graph == "sim" and (args.audio or args.audio_source) else []
    if args.record is not None:
        extra.append(RECORDER)
        overrides["bag_recorder"] = {"path": str(args.record.resolve()), "storage": "mcap"}

    # Our own SIGINT/SIGTERM handling (not rclpy's, which would shut the context down under the
    # nodes): the spin loop ends, the executor stops, policy_node publishes its final hold, and only
    # then does the context go down. Ctrl-C exits 0 without a traceback.
    rclpy.init(args=["mot_stack"], signal_handler_options=SignalHandlerOptions.NO)
    stop = threading.Event()
    restore = install_stop_signals(stop)
    nodes, executor = [], None
    try:
        nodes = build_nodes(args.graph, overrides, extra, params=args.params)
        freeze_loaded_objects()  # loaded: full GC passes now walk only what the loop allocates
        executor = MultiThreadedExecutor(num_threads=max(2, os.cpu_count() or 2))
        for node in nodes:
            executor.add_node(node)
        print(f"mot stack {args.graph}: running {[n.get_name() for n in nodes]} (Ctrl-C to stop)", flush=True)
        spin_until(executor, stop)
    except Exception as exc:
        print(f"mot stack: {exc}", file=sys.stderr)
        return 1
    finally:
        if executor is not None:
            executor.shutdown(timeout_sec=2.0)
        # policy_node first (its final hold goes out), then the others, the recorder (finishing its bag) last.
        for node in sorted(reversed(nodes), key=lambda n: {"policy_node": 0, "bag_recorder": 2}.get(n.get_name(), 1)):
            _close(node)
        rclpy.try_shutdown()
        restore()
        if stop.is_set():
            print(f"mot stack {args.graph}: stopped", flush=True)
    return 0


if __name__ == "__main__":  # python -m ros_nodes.stack: as `mot stack` reports a mistake, one line and exit 2
    try:
        raise SystemExit(main())
    except InputError as exc:
        print(f"mot stack: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
