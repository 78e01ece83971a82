"""`mot bench <name> [args...]`: runs a benchmark script's `main(argv)` (each prints one JSON object).

    mot bench inference --backend onnxruntime --json   -> benchmarks/inference.py
    mot bench sim ...                                  -> benchmarks/sim.py
    mot bench train ...                                -> benchmarks/train.py
    mot bench ros ...                                  -> benchmarks/ros_latency.py
    mot bench language --json                          -> benchmarks/language.py
    mot bench grounding --data DIR --json              -> benchmarks/grounding.py

benchmarks/ is a folder of scripts, not a package: each script is loaded by path.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

from training.cli import pick

BENCHMARKS_DIR = Path(__file__).resolve().parents[1] / "benchmarks"
SCRIPTS = {"inference": "inference.py", "sim": "sim.py", "train": "train.py", "ros": "ros_latency.py",
           "language": "language.py", "speech": "speech.py", "grounding": "grounding.py"}


def load_script(name: str):
    """Imports benchmarks/<script> by path and returns the module."""
    path = BENCHMARKS_DIR / SCRIPTS[name]
    if not path.is_file():
        raise FileNotFoundError(f"mot bench {name}: expected {path}, it does not exist")
    spec = importlib.util.spec_from_file_location(f"mot_benchmarks_{name}", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses (the scripts' configs) look their module up there
    spec.loader.exec_module(module)
    if not callable(getattr(module, "main", None)):
        raise AttributeError(f"mot bench {name}: {path} has no main(argv) function")
    return module


def _usage() -> str:
    rows = "\n".join(f"  {n.ljust(10)} benchmarks/{s}" for n, s in SCRIPTS.items())
    return f"usage: mot bench <name> [args...]   (each prints one JSON object)\n\nbenchmarks:\n{rows}"


def main(argv: list[str] | None = None) -> int:
    picked = pick(argv, SCRIPTS, _usage(), "mot bench", kind="benchmark")
    if isinstance(picked, int):
        return picked
    name, rest = picked
    try:
        module = load_script(name)
    except (FileNotFoundError, AttributeError) as e:
        print(str(e), file=sys.stderr)
        return 2
    return int(module.main(rest) or 0)


if __name__ == "__main__":
    sys.exit(main())
