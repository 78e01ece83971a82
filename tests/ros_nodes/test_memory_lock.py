"""lock_memory (policy_node, sim_node): mlockall, in a child process so the test runner stays pageable."""

import resource
import subprocess
import sys
from pathlib import Path

from ros_nodes.common import MCL_CURRENT, MCL_FUTURE, memory_lock_flags

ROOT = Path(__file__).resolve().parents[2]

CHILD = """
import resource, sys
limit = int(sys.argv[1])
resource.setrlimit(resource.RLIMIT_MEMLOCK, (limit, resource.getrlimit(resource.RLIMIT_MEMLOCK)[1]))
from ros_nodes.common import lock_process_memory
def locked_kb():
    return int(dict(line.split(":", 1) for line in open("/proc/self/status"))["VmLck"].split()[0])
messages = []
locked = lock_process_memory(messages.append)
before = locked_kb()
block = bytearray(64 << 20)  # an allocation after locking must work either way
print(locked, before, locked_kb() - before, "|".join(messages))
"""


def _child(limit: str) -> tuple[bool, int, int, str]:
    out = subprocess.run([sys.executable, "-c", CHILD, limit], cwd=ROOT, capture_output=True, text=True,
                         timeout=120, check=True).stdout.strip()
    locked, before, growth, message = out.split(" ", 3)
    return locked == "True", int(before), int(growth), message


def test_future_allocations_are_locked_only_without_a_limit():
    assert memory_lock_flags(resource.RLIM_INFINITY) == MCL_CURRENT | MCL_FUTURE
    assert memory_lock_flags(64 << 20) == MCL_CURRENT


def test_limited_memlock_locks_only_the_current_pages_and_says_so():
    locked, before, growth, message = _child(str(1 << 20))
    if locked:  # root (CAP_IPC_LOCK) may lock past the limit: the current pages are locked
        assert before > 10_000 and "current pages only" in message
    else:
        assert before == 0 and "mlockall failed" in message and "RLIMIT_MEMLOCK" in message
    assert growth < 1 << 10  # later allocations are never locked under a limit
