"""`mot recipe run`: a tiny version of the default recipe end to end, killed mid-stage and resumed;
what it writes is readable by others (0644 files, 0755 folders under umask 022)."""

import json
import os
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from policy.errors import InputError
from training.recipe import CONFIGS, load_recipe, run_recipe

REPO = Path(__file__).resolve().parents[2]

TINY = {"stages": [
    {"name": "demos", "kind": "collect", "args": {"tasks": "reach,place", "episodes": 4, "workers": 1, "image_size": 64}},
    {"name": "align", "kind": "train", "args": {"stage": "align", "data": "${demos}", "preset": "tiny", "batch_size": 4,
                                                 "warmup": 1, "log_every": 1, "ckpt_every": 1,
                                                 "phases": [{"steps": 2, "eval_every": 2},
                                                            {"steps": 3, "eval_every": 3, "pad_referents": 0.5}]}},
    {"name": "policy", "kind": "train", "args": {"stage": "policy", "data": "${demos}", "init": "${align}/checkpoint",
                                                  "preset": "tiny", "steps": 40, "batch_size": 4, "warmup": 1,
                                                  "log_every": 1, "eval_every": 40, "ckpt_every": 1,
                                                  "target_points": "model", "prefix_pool": 2}},
    {"name": "pack", "kind": "pack", "args": {"checkpoint": "${policy}/checkpoint", "dtype": "int8"}},
    {"name": "eval", "kind": "eval", "args": {"checkpoint": "${pack}", "episodes": 1, "tasks": "reach", "split": "train"}},
]}


def _recipe(tmp_path, doc=TINY) -> Path:
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


def _start(recipe: Path, out: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "training.cli", "recipe", "run", str(recipe), "--out", str(out)],
                            cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: os.umask(0o022))


def test_tiny_recipe_runs_every_stage_resumes_after_a_kill_and_writes_readable_files(tmp_path):
    recipe, out = _recipe(tmp_path), tmp_path / "run"
    proc = _start(recipe, out)
    state = out / "policy" / "train_state.pt"
    deadline = time.monotonic() + 400
    while not state.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.2)
    assert proc.poll() is None, proc.communicate()[1][-3000:]
    proc.send_signal(signal.SIGKILL)  # mid-stage: the policy stage has checkpointed at least one step
    proc.wait()
    assert not (out / "policy" / ".recipe-done.json").exists() and (out / "align" / ".recipe-done.json").exists()

    proc = _start(recipe, out)
    stdout, stderr = proc.communicate(timeout=600)
    assert proc.returncode == 0, stderr[-3000:]
    assert "demos (collect): done, skipped" in stderr and "align (train): done, skipped" in stderr
    assert "resuming" in stderr + stdout  # the policy stage continued from its train_state.pt
    record = json.loads((out / "recipe.json").read_text())
    assert list(record["stages"]) == ["demos", "align", "policy", "pack", "eval"]
    assert record["stages"]["demos"]["figures"]["episodes"] + record["stages"]["demos"]["figures"]["dropped"] == 4
    assert all(s["seconds"] > 0 for s in record["stages"].values())
    assert set(record["stages"]["eval"]["figures"]) == {"train"}
    assert (out / "eval" / "eval.json").is_file() and (out / "eval" / "eval.episodes.jsonl").is_file()
    # One model that points, then acts: the align run's grounding head is in the packed checkpoint, no pointer/ beside it.
    packed = json.loads((out / "pack" / "config.json").read_text())
    assert (packed["target_points"], packed["prefix_pool"]) == ("model", 2) and not (out / "pack" / "pointer").exists()
    # The align stage ran both phases: 3 steps in all, the last one with pad referents.
    assert json.loads((out / "align" / "result.json").read_text())["steps"] == 3

    # Everything collect/train/pack/eval wrote: 0644 files, 0755 folders (the process umask, not mkstemp's 0600).
    modes = {p.relative_to(out): stat.S_IMODE(p.stat().st_mode) for p in out.rglob("*")}
    wrong = {str(p): oct(m) for p, m in modes.items() if m != (0o755 if (out / p).is_dir() else 0o644)}
    assert not wrong, wrong
    for stage in ("demos", "align", "policy", "pack", "eval"):
        assert any(p.parts[0] == stage and (out / p).is_file() for p in modes), stage

    # Run again: every stage is done; a changed setting of a finished stage is refused, not reused.
    assert run_recipe(recipe, out)["stages"].keys() == record["stages"].keys()
    changed = json.loads(json.dumps(TINY))
    changed["stages"][0]["args"]["episodes"] = 5
    with pytest.raises(InputError, match=r"stage 'demos' finished in .* with other settings"):
        run_recipe(_recipe(tmp_path, changed), out)


def test_bad_recipes_are_refused_with_the_stage_and_field(tmp_path):
    def refused(doc, match):
        with pytest.raises(InputError, match=match):
            load_recipe(_recipe(tmp_path, doc))

    refused({"stages": []}, "non-empty list 'stages'")
    refused({"stages": [{"name": "x", "kind": "fly", "args": {}}]}, r"stage 'x': kind expected one of")
    refused({"stages": [{"name": "x", "kind": "train", "args": {"stage": "policy", "lr_typo": 1}}]},
            r"stage 'x' \(train\): unknown field\(s\) \['lr_typo'\]")
    refused({"stages": [{"name": "x", "kind": "eval"}, {"name": "x", "kind": "eval"}]}, "unique name")
    stages = load_recipe(_recipe(tmp_path, {"stages": [{"name": "p", "kind": "pack", "args": {"checkpoint": "${later}"}}]}))
    with pytest.raises(InputError, match=r"refers to \$\{later\}, expected the name of an earlier stage"):
        stages[0].resolved(tmp_path, set())
    # The shipped recipe parses, and every stage's args build its command's config.
    shipped = load_recipe(REPO / "recipes" / "tabletop.yaml")
    assert [s.kind for s in shipped] == ["collect", "collect", "train", "train", "pack", "eval"]
    earlier = set()
    for stage in shipped:
        args = stage.resolved(tmp_path, earlier)
        earlier.add(stage.name)
        for phase in args.pop("phases", None) or [{}]:
            CONFIGS[stage.kind](**{**args, **phase, "out": tmp_path / stage.name})
