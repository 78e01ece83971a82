"""benchmarks/ros_latency.py in its launch layout: sim_node in its own process, as `ros2 launch` runs it.
A short run of the tiny preset (--random-weights) checks the plumbing; the figures themselves are a benchmark's."""

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from policy.errors import InputError
from ros_nodes.common import CPU_DMA_LATENCY
from tests.ros_nodes.conftest import next_domain_id

ROOT = Path(__file__).resolve().parents[2]


def test_latency_benchmark_runs_the_sim_in_its_own_process():
    env = {**os.environ, "ROS_AUTOMATIC_DISCOVERY_RANGE": "LOCALHOST", "MUJOCO_GL": os.environ.get("MUJOCO_GL", "egl")}
    out = subprocess.run([sys.executable, "benchmarks/ros_latency.py", "--random-weights", "--preset", "tiny", "--backend", "torch",
                          "--duration", "2", "--layout", "launch", "--domain-id", str(next_domain_id()), "--json"],
                         cwd=ROOT, env=env, capture_output=True, text=True, timeout=240)
    assert out.returncode == 0, out.stderr[-2000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    # "hold": on a loaded machine the sim's frames can go stale for a moment and the watchdog holds.
    assert result["layout"] == "launch" and result["final_mode"] in ("running", "hold"), result
    assert result["weights"].startswith("random") and result["preset"] == "tiny" and result["checkpoint"] is None
    assert result["chunks"] >= 1 and result["latency_ms"]["median_ms"] > 0, result
    # sim.yaml asks for polling idle CPUs; the JSON says whether the request was held
    assert result["cpu_dma_latency_us"] == (0 if os.access(CPU_DMA_LATENCY, os.W_OK) else None), result
    # The benchmark stops the sim process it started: nothing is left publishing on the domain.
    assert not [p for p in Path("/proc").glob("[0-9]*/cmdline") if _is_sim_node(p)], "sim_node left running"


def _is_sim_node(cmdline: Path) -> bool:
    try:
        return b"ros_nodes.sim_node\x00--ros-args" in cmdline.read_bytes()
    except OSError:  # the process ended while we looked
        return False


def test_latency_benchmark_times_the_shipped_checkpoint_unless_told_otherwise():
    bench = _load()
    assert bench.RosLatencyConfig().checkpoint == ROOT / "checkpoints" / "default"
    with pytest.raises(InputError, match="checkpoint: expected a checkpoint directory"):
        bench.parse(bench.RosLatencyConfig, ["--checkpoint", str(ROOT / "no-such-checkpoint")], "mot bench ros", "")
    assert bench.parse(bench.RosLatencyConfig, ["--random-weights", "--preset", "tiny"], "mot bench ros", "").random_weights


def _load():
    spec = importlib.util.spec_from_file_location("ros_latency_bench", ROOT / "benchmarks" / "ros_latency.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its config dataclass looks its module up there
    spec.loader.exec_module(module)
    return module
