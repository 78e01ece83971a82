"""ROS 2 latency benchmark: camera frame received -> JointTrajectory published, at the control rate.

Runs sim_node + policy_node (the `mot stack sim` graph, in this process, over real DDS on localhost)
for --duration seconds on one long episode and prints JSON:

- latency: from the arrival of the newest camera frame an inference used to the publication of the
  chunk it produced (median, p99, max), as policy_node measures it;
- missed_cycles: control ticks at which the robot had no planned point left (it would have stalled
  on its last target): 0 means re-planning always finished in time;
- late_chunks: chunks that finished after their whole horizon had passed (dropped).

    python benchmarks/ros_latency.py --json                                # shipped checkpoint, onnxruntime, 60 s
    mot bench ros --backend torch --duration 10 --json
    mot bench ros --random-weights --preset tiny --json                    # an untrained preset instead

It times the shipped checkpoint (checkpoints/default) unless --checkpoint names another; an untrained
--preset only with --random-weights (built to point, then act, as the shipped one: its target points come
from its own grounding head inside the observation pass), and the JSON says which in "weights". Targets (issue): p99 < 100 ms
and 0 missed cycles with onnxruntime.

--layout single (default) runs both nodes in this process, as `mot stack sim` does; --layout launch
runs sim_node in its own process, as `ros2 launch mot_policy sim.launch.py` does. On this 2-core
machine the launch layout stalls now and then: the sim process's frames go stale for > 0.5 s while
the two processes compete for the cores, the watchdog holds, and cycles are missed.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

os.environ.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")  # before rclpy initialises anything
os.environ.setdefault("MUJOCO_GL", "egl")
ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import rclpy  # noqa: E402
from rclpy.executors import MultiThreadedExecutor  # noqa: E402
from std_msgs.msg import String  # noqa: E402

from policy import MoTPolicy, PolicyConfig  # noqa: E402
from policy.checkpoint import save_checkpoint  # noqa: E402
from policy.errors import InputError  # noqa: E402
from policy.options import parse  # noqa: E402
from ros_nodes.common import freeze_loaded_objects  # noqa: E402
from ros_nodes.stack import build_nodes, params_file  # noqa: E402
from training.cli import run_command  # noqa: E402

DEFAULT_CHECKPOINT = ROOT / "checkpoints" / "default"
TARGET_P99_MS = 100.0


@dataclass
class RosLatencyConfig:
    checkpoint: Path = DEFAULT_CHECKPOINT
    """the checkpoint policy_node runs (default: the shipped one, what users run)"""
    random_weights: bool = False
    """run an untrained --preset policy instead of a checkpoint (its figures are labelled random weights)"""
    preset: Literal["tiny", "small"] = "small"
    """with --random-weights: the preset to build"""
    backend: Literal["torch", "onnxruntime", "tensorrt"] = "onnxruntime"
    """which runtime policy_node runs the graphs with"""
    duration: float = 60.0
    """seconds of closed-loop running, measured after the first chunk"""
    domain_id: int = int(os.environ.get("ROS_DOMAIN_ID", 42))
    """ROS domain id of the benchmark's graph"""
    layout: Literal["single", "launch"] = "single"
    """sim_node in this process (single, as `mot stack`) or in its own (launch, as `ros2 launch`)"""
    json: bool = False
    """print only the JSON result"""

    def __post_init__(self) -> None:
        if not self.duration > 0:
            raise InputError(f"duration: expected seconds > 0, received {self.duration}")
        if not 0 <= self.domain_id <= 232:
            raise InputError(f"domain_id: expected an int in 0..232, received {self.domain_id}")
        if not self.random_weights and not (self.checkpoint / "manifest.json").is_file():
            raise InputError(f"checkpoint: expected a checkpoint directory (with manifest.json), received "
                             f"{self.checkpoint}; or --random-weights --preset tiny|small for an untrained policy")


def main(argv: list[str] | None = None) -> int:
    args = parse(RosLatencyConfig, argv, "mot bench ros", __doc__.split("\n\n")[0])
    log = (lambda *a: None) if args.json else (lambda *a: print(*a, file=sys.stderr))

    with tempfile.TemporaryDirectory() as tmp:
        checkpoint = str(args.checkpoint.resolve())
        if args.random_weights:
            checkpoint = str(Path(tmp) / args.preset)
            untrained = MoTPolicy(PolicyConfig.preset(args.preset))
            untrained.set_target_points("model")  # the shipped checkpoint's layout: it points, then acts
            save_checkpoint(untrained, checkpoint)
        context = rclpy.Context()
        rclpy.init(context=context, domain_id=args.domain_id)
        overrides = {"policy_node": {"checkpoint": checkpoint, "backend": args.backend,  # e-stop files: not the user's
                                     "estop_latch_file": str(Path(tmp) / "estop.json"),
                                     "estop_token_file": str(Path(tmp) / "estop_token")},
                     "sim_node": {"max_episode_steps": 1_000_000}}  # one episode for the whole run
        log(f"building nodes (backend {args.backend}, layout {args.layout}) ...")
        nodes = build_nodes("sim", overrides, context=context, only=["policy_node"] if args.layout == "launch" else None)
        policy = next(n for n in nodes if n.get_name() == "policy_node")
        if hasattr(policy.runner, "warmup"):
            policy.runner.warmup()  # first calls pay lazy initialisation; a robot warms up before moving too
        freeze_loaded_objects()  # as `mot stack` and every node's console script do once loaded
        executor = MultiThreadedExecutor(num_threads=4, context=context)
        for node in nodes:
            executor.add_node(node)
        spinner = threading.Thread(target=executor.spin, daemon=True)
        spinner.start()
        sim_process = None
        try:
            if args.layout == "launch":
                # What `ros2 launch` runs for sim_node: its console script's module, its YAML, own process.
                quiet = subprocess.DEVNULL if args.json else None
                sim_process = subprocess.Popen(
                    [sys.executable, "-m", "ros_nodes.sim_node", "--ros-args", "-r", "__node:=sim_node",
                     "--params-file", str(params_file("sim")), "-p", "max_episode_steps:=1000000"],
                    env={**os.environ, "ROS_DOMAIN_ID": str(args.domain_id)}, cwd=ROOT,
                    stdout=quiet, stderr=quiet)
            helper = rclpy.create_node("ros_latency", context=context)
            executor.add_node(helper)
            publisher = helper.create_publisher(String, "instruction", 10)
            deadline = time.monotonic() + 60
            while publisher.get_subscription_count() < 2:  # policy_node and sim_node
                if sim_process is not None and sim_process.poll() is not None:
                    raise RuntimeError(f"sim_node exited with code {sim_process.returncode} (run without --json to see why)")
                if time.monotonic() > deadline:
                    raise RuntimeError("sim_node and policy_node did not both subscribe to /instruction within 60 s")
                time.sleep(0.05)
            instruction = String(data="pick up the red cube")

            def restart_finished_episodes(msg: String) -> None:
                # An episode that ends (success) is restarted so the policy keeps running the whole time.
                if json.loads(msg.data).get("done"):
                    publisher.publish(instruction)

            helper.create_subscription(String, "status", restart_finished_episodes, 10)
            publisher.publish(instruction)
            # Measure only the steady state: start counting once the first chunk is out.
            deadline = time.monotonic() + 30
            while policy.controller.metrics.chunks == 0 and time.monotonic() < deadline:
                time.sleep(0.05)
            metrics = policy.controller.metrics
            with policy.controller._lock:
                metrics.latencies.clear()
                metrics.inference_times.clear()
                start_counts = (metrics.chunks, metrics.starved_ticks, metrics.late_chunks, metrics.holds)
            log(f"running {args.duration:.0f} s ...")
            time.sleep(args.duration)
            with policy.controller._lock:
                summary = metrics.summary()
                mode = policy.controller.mode
        finally:
            executor.shutdown(timeout_sec=2)
            spinner.join(timeout=5)  # no callback may run on a node while it is being destroyed
            for node in nodes:
                node.close()
                node.destroy_node()
            context.try_shutdown()
            if sim_process is not None:
                sim_process.terminate()
                try:
                    sim_process.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    sim_process.kill()

    latency = summary["latency"]
    missed = summary["starved_ticks"] - start_counts[1]
    result = {
        "benchmark": "ros_latency",
        "backend": args.backend,
        "layout": args.layout,
        "weights": "random (untrained preset): not the product's figures" if args.random_weights else "checkpoint",
        "preset": args.preset if args.random_weights else None,
        "checkpoint": None if args.random_weights else str(args.checkpoint),
        "target_points": policy.runner.config.target_points,
        "inference_threads": getattr(policy.runner.backend, "threads", None),  # onnxruntime's intra-op threads
        "cpu_dma_latency_us": policy.cpu_dma_latency_us,  # the PM QoS request held (None: the system's idle states)
        "duration_s": args.duration,
        "control_hz": policy.config.control_hz,
        "replan_steps": policy.config.replan_steps,
        "chunks": summary["chunks"] - start_counts[0],
        "latency_ms": {k: latency.get(k) for k in ("median_ms", "p99_ms", "max_ms")},
        "inference_ms": {k: summary["inference"].get(k) for k in ("median_ms", "p99_ms", "max_ms")},
        "missed_cycles": missed,
        "late_chunks": summary["late_chunks"] - start_counts[2],
        "holds": summary["holds"] - start_counts[3],
        "final_mode": mode,
        "cpu": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "meets_targets": bool(latency.get("p99_ms") is not None and latency["p99_ms"] < TARGET_P99_MS and missed == 0),
    }
    print(json.dumps(result, indent=None if args.json else 2))
    return 0


if __name__ == "__main__":  # as a script too: a mistake is one line and exit 2, as under `mot bench`
    sys.exit(run_command("bench ros", main, sys.argv[1:]))
