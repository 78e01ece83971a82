"""Command-line options from config dataclasses (tyro), and what a CLI mistake looks like.

Every `mot` command declares its options as a dataclass: each field's docstring is its help text, its
default is shown by `--help`, validation lives in `__post_init__`, and a recipe file (training/recipe.py)
sets the same fields by name. `parse` is the one place that turns argv into such a config.

A mistake on the command line (an unknown option, a bad choice, a value `__post_init__` refuses) is an
`InputError` with one line of text: tyro's boxed error message squashed into one line, without the box
or the help text (`mot <cmd> --help` shows that). The `mot` entry point prints it and exits 2.

No torch here: `mot say` and `mot --help` parse options without importing the model.
"""

from __future__ import annotations

import contextlib
import io
import re
import sys
from typing import TypeVar

import tyro

from policy.errors import InputError

T = TypeVar("T")

# Box-drawing characters of tyro's error panels, and the parts of a panel that are not the message.
# (tyro draws them with ASCII -, |, + when stderr is not UTF-8.)
_BOX = re.compile(r"[\u2500-\u257f]+|[-=+]{3,}|(?<!\S)[|+](?!\S)")
_TAILS = ("For full helptext", "Argument helptext:")


def one_line(panel: str) -> str:
    """tyro's (possibly multi-line, boxed, coloured) error text -> its message on one line."""
    text = re.sub(r"\x1b\[[0-9;]*m", "", panel)  # ANSI colours, when stderr was a terminal
    for tail in _TAILS:
        text = text.split(tail)[0]
    text = " ".join(_BOX.sub(" ", text).split())
    for title in ("Value error", "Invalid choice", "Required options", "Unrecognized options", "Parsing error"):
        text = text.removeprefix(title).strip()
    return re.sub(r"^.*?Error parsing [^:]+: ", "", text) or "invalid arguments"


def parse(cls: type[T], argv: list[str] | None, prog: str, description: str, default: T | None = None) -> T:
    """argv -> a validated `cls` instance (its fields as --options). `--help` prints and exits 0; any
    mistake raises InputError with a one-line message."""
    captured = io.StringIO()
    try:
        with contextlib.redirect_stderr(captured):
            args = sys.argv[1:] if argv is None else list(argv)  # a script's `main()`: its own command line
            return tyro.cli(cls, args=args, prog=prog, description=description, default=default)
    except SystemExit as e:
        if e.code in (0, None):
            raise
        raise InputError(one_line(captured.getvalue())) from None
