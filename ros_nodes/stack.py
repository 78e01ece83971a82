"""`mot stack sim|robot`: the nodes of a launch file, from the same YAML, in one process.

For development without a ROS install (launch / launch_ros are not on PyPI): each node is built with
``--ros-args --params-file <yaml>``, exactly the parameters `ros2 launch` would give it, and all of
them spin in one multi-threaded rclpy executor. Other processes (`mot say`, `ros2 topic echo`) see
the same topics over DDS.

    mot stack sim --checkpoint runs/small            # sim_node + policy_node
    mot stack sim --checkpoint runs/small --audio    # + audio_node on the microphone
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Callable

import yaml

from ros_nodes.ament import share_directory
from ros_nodes.common import close_node

# Which nodes each graph starts: (node name in the YAML, factory "module:Class"). Mirrors launch/*.launch.py
# (tests/ros_nodes/test_launch.py checks that the two agree).
GRAPHS: dict[str, list[tuple[str, str]]] = {
    "sim": [("sim_node", "ros_nodes.sim_node:SimNode"), ("policy_node", "ros_nodes.policy_node:PolicyNode")],
    "robot": [("front_camera", "ros_nodes.camera_node:CameraNode"), ("wrist_camera", "ros_nodes.camera_node:CameraNode"),
              ("audio_node", "ros_nodes.audio_node:AudioNode"), ("policy_node", "ros_nodes.policy_node:PolicyNode")],
}
OPTIONAL = {"audio_node": "ros_nodes.audio_node:AudioNode"}


def params_file(graph: str) -> Path:
    return share_directory() / "config" / f"{graph}.yaml"


def _factory(spec: str) -> Callable:
    import importlib

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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="mot stack", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("graph", choices=sorted(GRAPHS), help="which launch file's nodes to run")
    parser.add_argument("--checkpoint", required=True, help="policy checkpoint directory")
    parser.add_argument("--backend", default=None, help="torch | onnxruntime | tensorrt (default: the YAML's)")
    parser.add_argument("--audio", action="store_true", help="(sim) also run audio_node")
    parser.add_argument("--audio-source", default=None, help="audio_node source: a .wav file or directory")
    parser.add_argument("--dry-run", action="store_true", help="policy_node computes and logs, publishes no command")
    parser.add_argument("--params", type=Path, default=None, help="a parameter YAML instead of the installed one")
    args = parser.parse_args(argv)

    import threading

    import rclpy
    from rclpy.executors import MultiThreadedExecutor
    from rclpy.signals import SignalHandlerOptions

    from ros_nodes.common import install_stop_signals, spin_until

    policy = {"checkpoint": str(Path(args.checkpoint).resolve()), "dry_run": bool(args.dry_run)}
    if args.backend:
        policy["backend"] = args.backend
    overrides: dict[str, dict] = {"policy_node": policy}
    if args.audio_source:
        overrides["audio_node"] = {"source": str(Path(args.audio_source).resolve())}
    extra = [("audio_node", OPTIONAL["audio_node"])] if args.graph == "sim" and (args.audio or args.audio_source) else []

    # Our own SIGINT/SIGTERM handling (not rclpy's, which would shut the context down under the
    # nodes): the spin loop ends, the executor stops, policy_node publishes its final hold, and only
    # then does the context go down. Ctrl-C exits 0 without a traceback.
    rclpy.init(args=["mot_stack"], signal_handler_options=SignalHandlerOptions.NO)
    stop = threading.Event()
    restore = install_stop_signals(stop)
    nodes, executor = [], None
    try:
        nodes = build_nodes(args.graph, overrides, extra, params=args.params)
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
        for node in reversed(nodes):  # policy_node (last in every graph) first: its final hold goes out
            _close(node)
        rclpy.try_shutdown()
        restore()
        if stop.is_set():
            print(f"mot stack {args.graph}: stopped", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
