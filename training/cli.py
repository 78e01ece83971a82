"""The `mot` command: a table of subcommands, each a module with its own argparse `main(argv)`.

Subcommand modules are imported only when they run, so `mot say` does not import torch and
`mot --help` answers instantly. Each package owns its subcommands; this table only names them.
"""

from __future__ import annotations

import importlib
import sys

# name -> ("module:function", one-line help). The function takes argv (list[str]) and returns an exit code.
COMMANDS: dict[str, tuple[str, str]] = {
    "demo": ("training.demo:main", "the main job on the default embedded setup (what `make demo` runs)"),
    "bench": ("training.bench:main", "benchmarks: `mot bench inference|sim|train|ros` (prints JSON)"),
    "pack": ("policy.checkpoint:main", "re-store a checkpoint (int8 / float16) and bundle a pointer into it"),
    "export": ("policy.export:main", "export a checkpoint to ONNX (text encoder, observation encoder, denoiser)"),
    "collect": ("training.collect:main", "scripted-expert demonstrations to disk (resumable, parallel)"),
    "data": ("training.data_cli:main", "inspect a dataset: `mot data info DIR`, `mot data video DIR --episode K`"),
    "train": ("training.train:main", "train a stage: --stage align (grounding) or --stage policy (flow matching)"),
    "eval": ("training.evaluate:main", "success per task family on the train and held-out splits, videos, JSON"),
    "run": ("training.run:main", "the main job: `mot run \"put the red cube on the blue pad\"` in sim"),
    "say": ("ros_nodes.say:main", "publish a typed instruction (ROS 2); --wait for the episode result"),
    "stack": ("ros_nodes.stack:main", "run the ROS 2 nodes of a launch file in one process: `mot stack sim`"),
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


def main(argv: list[str] | None = None) -> int:
    picked = pick(argv, COMMANDS, _usage(), "mot")
    if isinstance(picked, int):
        return picked
    name, rest = picked
    module_name, func_name = COMMANDS[name][0].split(":")
    func = getattr(importlib.import_module(module_name), func_name)
    return int(func(rest) or 0)


if __name__ == "__main__":
    sys.exit(main())
