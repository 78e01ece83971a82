"""cpu_dma_latency_us (policy_node): a Linux PM QoS request held while the node runs, dropped when it closes."""

import os
import struct

import pytest

from ros_nodes.common import CPU_DMA_LATENCY, check_cpu_dma_latency, hold_cpu_dma_latency
from ros_nodes.policy_node import PolicyNode
from tests.ros_nodes.test_inference_priority import _Runner
from tests.ros_nodes.test_policy_node_safety import SIM_YAML

needs_device = pytest.mark.skipif(not os.access(CPU_DMA_LATENCY, os.W_OK),
                                  reason=f"{CPU_DMA_LATENCY} is missing or not writable here (root's by default); "
                                         "the file-level tests cover the request itself")


def system_latency_us() -> int:
    """The kernel's current constraint: the lowest request any process holds (2e9 when none does)."""
    with open(CPU_DMA_LATENCY, "rb") as device:
        return struct.unpack("i", device.read(4))[0]


def test_the_request_is_written_as_a_native_int_and_held_open(tmp_path):
    path, messages = tmp_path / "cpu_dma_latency", []
    path.touch()
    handle = hold_cpu_dma_latency(25, messages.append, str(path))
    assert handle is not None and not handle.closed and messages == []
    handle.close()
    assert path.read_bytes() == struct.pack("i", 25)


def test_a_device_it_cannot_open_is_one_warning_naming_the_parameter(tmp_path):
    messages = []
    assert hold_cpu_dma_latency(0, messages.append, str(tmp_path / "absent" / "cpu_dma_latency")) is None
    assert len(messages) == 1 and messages[0].startswith("cpu_dma_latency_us: could not hold 0 us")


@pytest.mark.parametrize("value", [-1, 0, 100])
def test_check_accepts_off_and_microseconds(value):
    assert check_cpu_dma_latency(value) == value


@pytest.mark.parametrize("value", [-2, True, 2.5, "0"])
def test_check_refuses_anything_else_naming_the_parameter(value):
    with pytest.raises(ValueError, match=r"cpu_dma_latency_us: expected an int >= 0 \(microseconds\) or -1"):
        check_cpu_dma_latency(value)


@needs_device
def test_the_kernel_applies_the_request_only_while_the_file_is_open():
    before = system_latency_us()
    handle = hold_cpu_dma_latency(0, pytest.fail)
    assert system_latency_us() == 0
    handle.close()
    assert system_latency_us() == before


def _node(ros, tmp_path, latency: int) -> PolicyNode:
    args = ["--ros-args", "--params-file", str(SIM_YAML), "-p", "cameras:=[front,wrist]", "-p", "lock_memory:=false",
            "-p", f"cpu_dma_latency_us:={latency}", "-p", f"estop_latch_file:={tmp_path / 'estop.json'}",
            "-p", f"estop_token_file:={tmp_path / 'token'}"]
    return ros.add(PolicyNode(runner=_Runner(), cli_args=args, context=ros.context))


@needs_device
def test_policy_node_holds_the_request_while_it_runs(ros, tmp_path):
    before = system_latency_us()
    node = _node(ros, tmp_path, 0)
    assert system_latency_us() == 0 and node.cpu_dma_latency_us == 0
    ros.retire(node)  # close(): the final hold, then the request goes
    assert system_latency_us() == before


def test_minus_one_leaves_the_system_alone(ros, tmp_path):
    node = _node(ros, tmp_path, -1)
    assert node.cpu_dma_latency_us is None
