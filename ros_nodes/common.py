"""rclpy plumbing shared by the nodes: QoS profiles, parameter helpers, safe decoding, a main() wrapper."""

from __future__ import annotations

import gc
import json
import os
import signal
import struct
import sys
import threading
from typing import Any, Callable, Iterable

import rclpy
from rclpy.node import Node
from rclpy.qos import HistoryPolicy, QoSProfile, ReliabilityPolicy, qos_profile_sensor_data
from std_msgs.msg import String

# Camera frames: best effort, keep only the newest (a late frame is worth less than the next one).
# A best-effort subscriber also matches a reliable publisher, so third-party camera drivers work.
IMAGE_QOS = qos_profile_sensor_data
# Commands, states, instructions, e-stop: reliable, a short queue.
RELIABLE_QOS = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE, history=HistoryPolicy.KEEP_LAST)


# -- real-time hygiene ---------------------------------------------------------------------------------
MCL_CURRENT, MCL_FUTURE = 1, 2  # <sys/mman.h>


def memory_lock_flags(memlock_limit: int) -> int:
    """mlockall flags for an RLIMIT_MEMLOCK soft limit: MCL_FUTURE only when the limit is unlimited,
    because with MCL_FUTURE every later allocation past the limit would fail (a MemoryError mid-run)."""
    import resource

    return MCL_CURRENT | MCL_FUTURE if memlock_limit == resource.RLIM_INFINITY else MCL_CURRENT


def lock_process_memory(log: Callable[[str], None]) -> bool:
    """Lock the process's pages in RAM (mlockall), as ros2_control's ``lock_memory`` does.

    A control process must not stall on a page fault: when the kernel pages out "cold" memory (memory
    pressure, or a proactive-reclaim daemon), the next inference or camera callback would wait on the
    disk to read code or weights back in. Returns False (and logs why) where locking is not permitted.
    """
    import ctypes
    import os
    import resource

    soft, _ = resource.getrlimit(resource.RLIMIT_MEMLOCK)
    flags = memory_lock_flags(soft)
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.mlockall(flags) != 0:
        errno = ctypes.get_errno()
        log(f"lock_memory: mlockall failed ({os.strerror(errno)}); running with pageable memory "
            f"(raise RLIMIT_MEMLOCK, e.g. `ulimit -l unlimited` or limits.conf, to lock)")
        return False
    if not flags & MCL_FUTURE:
        log("lock_memory: RLIMIT_MEMLOCK is limited: locked the current pages only, not later allocations")
    return True


CPU_DMA_LATENCY = "/dev/cpu_dma_latency"  # Linux PM QoS: the most any CPU may take to leave its idle state


def check_cpu_dma_latency(value: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < -1:
        raise ValueError(f"cpu_dma_latency_us: expected an int >= 0 (microseconds) or -1 (leave the system's), "
                         f"received {value!r}")
    return value


def hold_cpu_dma_latency(max_us: int, log: Callable[[str], None], path: str = CPU_DMA_LATENCY):
    """Keep every CPU's idle-exit latency at most ``max_us`` microseconds while the returned file stays open.

    The Linux PM QoS request that cyclictest and tuned's latency-performance profile make: with 0 an idle CPU
    polls instead of halting. A control loop that sleeps between cycles wakes through a halted CPU; in a virtual
    machine that is a VM exit and a host reschedule, and on this project's 2-vCPU VM such wake-ups stalled the
    single-process ROS loop for 100-800 ms (docs/experiments.md). The kernel drops the request when the file is
    closed, so a crashed process never leaves the machine polling. Returns None (and logs why) where the file
    is missing or not writable (it is root's by default: a udev rule can grant a group).
    """
    try:
        handle = open(path, "wb", buffering=0)
        handle.write(struct.pack("i", max_us))  # the kernel reads a native 32-bit int
    except OSError as exc:
        log(f"cpu_dma_latency_us: could not hold {max_us} us on {path} ({exc.strerror or exc}); idle CPUs may "
            "halt and wake the control loop late (grant write access to it, e.g. a udev rule, or set -1)")
        return None
    return handle


def thread_ids() -> set[int]:
    """This process's kernel thread ids (Linux /proc/self/task; empty where there is none)."""
    try:
        return {int(tid) for tid in os.listdir("/proc/self/task")}
    except OSError:
        return set()


def freeze_loaded_objects() -> int:
    """Take everything alive now (models, nodes, modules) out of the cyclic GC's reach; returns how many.

    Call once the process has loaded, before it starts its control loop. A full (generation 2) collection
    walks every tracked object, and while it runs no thread of the process holds the GIL: with ~230k objects
    after loading (policy_node and sim_node in one process) each one paused every node for 110-155 ms, a
    dozen times a minute in one `mot bench ros --layout single` run (docs/experiments.md). After
    ``gc.freeze()`` a full collection walks only what the loop allocated since. Garbage is collected first,
    so none of it is frozen; nothing frozen is ever freed, which is what loaded weights and nodes want.
    """
    gc.collect()
    gc.freeze()
    return gc.get_freeze_count()


def check_nice(value: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not -20 <= value <= 19:
        raise ValueError(f"inference_nice: expected an int in -20..19 (0: normal priority), received {value!r}")
    return value


def set_thread_nice(tids: Iterable[int], nice: int, log: Callable[[str], None]) -> bool:
    """Give threads the nice value `nice` (-20 .. 19, lower is scheduled first), as ros2_control raises its
    control loop's priority; False (and logs why) where the kernel refuses.

    On Linux, nice is per thread and a new thread starts with its creator's. Inference runs on the node's own
    thread and on the backend's pool: onnxruntime creates its pool with the session, so the node sets it here by
    id; threads a backend starts later from the inference thread inherit its value. A negative value needs
    CAP_SYS_NICE (root, or a `nice` entry in limits.conf).
    """
    for tid in tids:
        try:
            os.setpriority(os.PRIO_PROCESS, tid, nice)
        except ProcessLookupError:  # a pool thread that has exited meanwhile
            continue
        except PermissionError:
            log(f"inference_nice: nice {nice} refused (needs CAP_SYS_NICE: root, or a limits.conf 'nice' entry); "
                "inference runs at normal priority and competes with every other process for the cores")
            return False
    return True


def now_s(node: Node) -> float:
    return node.get_clock().now().nanoseconds * 1e-9


def declare(node: Node, defaults: dict[str, Any]) -> dict[str, Any]:
    """Declare every parameter in ``defaults`` (the node's whole parameter surface) and read them back.

    Keeping each node's parameters in one module-level dict is what lets the launch-file test check
    that YAML and launch files name only parameters a node declares.
    """
    for name, value in defaults.items():
        node.declare_parameter(name, value)
    return {name: node.get_parameter(name).value for name in defaults}


# CDR encapsulation identifiers (first two bytes of a serialized message): big- / little-endian, for
# plain CDR and XCDR2 (std_msgs/String is a final type, laid out the same in both).
_CDR_LITTLE_ENDIAN = {b"\x00\x01", b"\x00\x07"}
_CDR_BIG_ENDIAN = {b"\x00\x00", b"\x00\x06"}


def string_from_cdr(raw: bytes) -> str:
    """A serialized std_msgs/String -> its text, decoded as strict UTF-8. Raises ValueError otherwise.

    Parsed here rather than with ``rclpy.serialization.deserialize_message``, which decodes invalid
    UTF-8 with replacement characters: a corrupted instruction would reach the policy as U+FFFD text
    instead of being dropped. Layout: 4-byte encapsulation header, uint32 length (including the
    terminating NUL), the bytes, NUL, then up to 3 bytes of alignment padding.
    """
    raw = bytes(raw)
    if len(raw) < 8 or raw[:2] not in _CDR_LITTLE_ENDIAN | _CDR_BIG_ENDIAN:
        raise ValueError(f"instruction: expected a serialized std_msgs/String, received {len(raw)} bytes "
                         f"starting {raw[:4].hex() or 'with nothing'}")
    length = int.from_bytes(raw[4:8], "little" if raw[:2] in _CDR_LITTLE_ENDIAN else "big")
    if length < 1 or 8 + length > len(raw) or raw[8 + length - 1] != 0:
        raise ValueError(f"instruction: expected a NUL-terminated string of {length} bytes, received a "
                         f"{len(raw)}-byte buffer")
    try:
        return raw[8:8 + length - 1].decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ValueError(f"instruction: expected UTF-8 text, received undecodable bytes ({exc.reason} at byte "
                         f"{exc.start})") from exc


def decode_string(raw: bytes) -> str:
    """A serialized std_msgs/String -> its text. Raises ValueError for bytes that are not UTF-8.

    Subscriptions to text topics are raw: rclpy would otherwise decode inside the executor (and
    replace invalid bytes with U+FFFD), so a non-UTF-8 payload from a misbehaving publisher is a
    logged drop, never an instruction.
    """
    return string_from_cdr(raw)


def json_string(payload: dict) -> String:
    return String(data=json.dumps(payload, sort_keys=True))


def install_stop_signals(stop: threading.Event) -> Callable[[], None]:
    """SIGINT and SIGTERM set ``stop`` (nothing is raised anywhere); returns a function that restores
    the previous handlers. Used with ``rclpy.init(signal_handler_options=SignalHandlerOptions.NO)``:
    rclpy's own handler would shut the context down at once, after which no node can publish its
    final hold, and threads still using the context would die with a traceback.
    """
    previous = {}

    def on_signal(signum, frame) -> None:
        stop.set()

    for sig in (signal.SIGINT, signal.SIGTERM):
        previous[sig] = signal.signal(sig, on_signal)

    def restore() -> None:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return restore


def spin_until(executor, stop: threading.Event, context=None) -> None:
    """Spin ``executor`` on this thread until ``stop`` is set or the context shuts down."""
    context = context or rclpy.get_default_context()
    while not stop.is_set() and context.ok():
        executor.spin_once(timeout_sec=0.1)


def close_node(node: Node) -> None:
    close = getattr(node, "close", None)
    if close:
        close()  # policy_node publishes its final hold here, while the context is still up
    node.destroy_node()


def run_node(factory: Callable[[], Node], argv: list[str] | None = None, threads: int = 2) -> int:
    """Console-script body: init, build the node, spin a multi-threaded executor, shut down cleanly.

    SIGINT/SIGTERM end the spin loop; then the executor stops, the node closes (policy_node: final
    hold), and only then is the context shut down. Exit code 0, and no traceback.
    """
    from rclpy.executors import MultiThreadedExecutor
    from rclpy.signals import SignalHandlerOptions

    rclpy.init(args=sys.argv if argv is None else ["node", *argv], signal_handler_options=SignalHandlerOptions.NO)
    stop = threading.Event()
    restore = install_stop_signals(stop)
    node = executor = None
    try:
        node = factory()
        freeze_loaded_objects()  # loaded: full GC passes now walk only what the loop allocates
        executor = MultiThreadedExecutor(num_threads=threads)
        executor.add_node(node)
        spin_until(executor, stop)
    except Exception as exc:  # a node that cannot start (missing checkpoint, bad parameters) says why
        print(f"{factory.__name__ if hasattr(factory, '__name__') else 'node'}: {exc}", file=sys.stderr)
        return 1
    finally:
        if executor is not None:
            executor.shutdown(timeout_sec=2.0)
        if node is not None:
            close_node(node)
        rclpy.try_shutdown()
        restore()
    return 0
