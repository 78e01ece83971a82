"""User mistakes on the `mot` command line: one line on stderr naming what is wrong, exit code 2, no
traceback; a bug (any other exception) keeps its traceback."""

import subprocess
import sys
from pathlib import Path

import pytest

from training.cli import run_command

REPO = Path(__file__).resolve().parents[2]


def _mot(*args):
    return subprocess.run([sys.executable, "-m", "training.cli", *map(str, args)], cwd=REPO, capture_output=True,
                          text=True, timeout=300)


@pytest.fixture(scope="module")
def corrupt_checkpoint(tmp_path_factory):
    path = tmp_path_factory.mktemp("corrupt")
    (path / "manifest.json").write_text("{not json")
    return path


WRONG_USES = {
    "missing checkpoint": (["eval", "--checkpoint"], "--checkpoint"),
    "nonexistent checkpoint": (["run", "pick up the red cube", "--checkpoint", "/nonexistent/ckpt"],
                               "expected a checkpoint directory at /nonexistent/ckpt"),
    "corrupt checkpoint": (["export", "--checkpoint", "{corrupt}"], "is not valid JSON"),
    "random folder as dataset": (["train", "--stage", "policy", "--data", str(REPO / "docs"), "--out", "{tmp}/run",
                                  "--preset", "tiny"], "data"),
    "zero episodes": (["collect", "--episodes", "0", "--out", "{tmp}/demos"], "episodes: expected"),
    "negative episodes": (["eval", "--episodes", "-3"], "episodes: expected an int > 0, received -3"),
    "negative lr": (["train", "--stage", "policy", "--data", "x", "--out", "{tmp}/r", "--lr", "-1"],
                    "lr: expected a finite number > 0, received -1.0"),
    "bad task name": (["eval", "--tasks", "reach,juggle"], "tasks: expected 'all' or families among"),
    "bad split": (["eval", "--split", "test"], "invalid choice 'test' for argument '--split'"),
    "empty instruction": (["run", ""], "instruction: expected words"),
}


@pytest.mark.parametrize("use", list(WRONG_USES), ids=list(WRONG_USES))
def test_a_wrong_use_gives_one_line_and_exit_2(use, tmp_path, corrupt_checkpoint):
    args, expected = WRONG_USES[use]
    args = [a.format(tmp=tmp_path, corrupt=corrupt_checkpoint) for a in args]
    done = _mot(*args)
    assert done.returncode == 2, (done.returncode, done.stderr[-2000:])
    assert "Traceback" not in done.stderr
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith(f"mot {args[0]}: "), done.stderr
    assert expected in lines[0], lines[0]


def test_a_bug_keeps_its_traceback():
    def buggy(argv):
        raise KeyError("not a user error")

    with pytest.raises(KeyError):
        run_command("x", buggy, [])


def test_every_option_of_every_command_has_help_and_a_shown_default():
    """`mot <cmd> --help` (tyro): every option carries help text and says its default (or that it is required)."""
    for command in ("train", "eval", "collect", "run", "pack", "export"):
        done = _mot(command, "--help")
        assert done.returncode == 0, done.stderr
        table = done.stdout[done.stdout.index("─ options"):]  # the options box, after the description
        options = [line for line in table.splitlines() if line.strip("│ ").startswith("--")]
        assert len(options) >= 2, done.stdout
        body = table.replace("\n", " ")
        for line in options:
            flag = line.strip("│ ").split()[0].split(",")[0]
            if flag in ("-h", "--help"):
                continue
            after = body.split(flag, 1)[1].split("│ --", 1)[0]
            assert "(default:" in after or "(required)" in after, (command, flag, after[:200])
