"""benchmarks/ros_latency.py in its launch layout: sim_node in its own process, as `ros2 launch` runs it.
A short run of the tiny preset checks the plumbing; the figures themselves are a benchmark's."""

import json
import os
import subprocess
import sys
from pathlib import Path

from tests.ros_nodes.conftest import next_domain_id

ROOT = Path(__file__).resolve().parents[2]


def test_latency_benchmark_runs_the_sim_in_its_own_process():
    env = {**os.environ, "ROS_AUTOMATIC_DISCOVERY_RANGE": "LOCALHOST", "MUJOCO_GL": os.environ.get("MUJOCO_GL", "egl")}
    out = subprocess.run([sys.executable, "benchmarks/ros_latency.py", "--preset", "tiny", "--backend", "torch",
                          "--duration", "2", "--layout", "launch", "--domain-id", str(next_domain_id()), "--json"],
                         cwd=ROOT, env=env, capture_output=True, text=True, timeout=240)
    assert out.returncode == 0, out.stderr[-2000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    # "hold": on a loaded machine the sim's frames can go stale for a moment and the watchdog holds.
    assert result["layout"] == "launch" and result["final_mode"] in ("running", "hold"), result
    assert result["chunks"] >= 1 and result["latency_ms"]["median_ms"] > 0, result
    # The benchmark stops the sim process it started: nothing is left publishing on the domain.
    assert not [p for p in Path("/proc").glob("[0-9]*/cmdline") if _is_sim_node(p)], "sim_node left running"


def _is_sim_node(cmdline: Path) -> bool:
    try:
        return b"ros_nodes.sim_node\x00--ros-args" in cmdline.read_bytes()
    except OSError:  # the process ended while we looked
        return False
