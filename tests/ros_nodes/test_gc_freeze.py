"""freeze_loaded_objects (run_node, `mot stack`, `mot bench ros`): what is alive once loaded leaves the cyclic
GC's full passes; garbage from loading is freed first. In a child process, so the test runner's GC is untouched."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

CHILD = """
import gc, weakref
from ros_nodes.common import freeze_loaded_objects

class Box:
    pass

loaded = [Box() for _ in range(1000)]  # stands for weights and nodes: alive when the loop starts
garbage = Box()
garbage.self = garbage  # a reference cycle dropped during loading: only the cyclic GC frees it
dropped = weakref.ref(garbage)
del garbage
gc.disable()  # no automatic pass in between: freeze_loaded_objects must collect it itself
frozen = freeze_loaded_objects()
tracked = {id(o) for o in gc.get_objects(generation=2)}
after = Box()  # allocated by the control loop: still the GC's to walk
print(frozen == gc.get_freeze_count() > 1000, dropped() is None, any(id(b) in tracked for b in loaded),
      any(id(o) == id(after) for g in range(3) for o in gc.get_objects(generation=g)))
"""


def test_loaded_objects_are_frozen_and_loading_garbage_is_freed_first():
    out = subprocess.run([sys.executable, "-c", CHILD], cwd=ROOT, capture_output=True, text=True, timeout=120,
                         check=True).stdout.split()
    counted, garbage_freed, loaded_still_walked, loop_objects_walked = out
    assert counted == "True"  # it returns how many objects it froze, and that includes the loaded ones
    assert garbage_freed == "True"
    assert loaded_still_walked == "False"
    assert loop_objects_walked == "True"
