"""`mot recipe`: a whole pipeline (collect -> align -> policy -> pack -> eval) from one YAML file.

    mot recipe run  recipes/tabletop.yaml --out runs/tabletop     # every stage, in order
    mot recipe show recipes/tabletop.yaml                         # the stages and their settings

A recipe is a list of stages. Each stage has a `name` (its output is OUT/<name>), a `kind` (collect,
train, bridge, pack, eval) and `args`: the fields of that command's config dataclass (CollectConfig,
TrainConfig, BridgeConfig, PackConfig, EvalConfig), the same names as the command line's options, validated the same
way. `${name}` in a value is the output directory of an earlier stage, e.g. `init: ${align}/checkpoint`.
A train stage may have `phases`: runs of the same directory one after another, each with its own
overrides (e.g. a longer schedule, then a phase with another data mix), resumed from the previous one.

Running: stages that finished (OUT/<name>/.recipe-done.json, written last, atomically, and holding the
stage's settings) are skipped; a stage whose settings changed since is refused rather than silently
reused. An interrupted stage resumes: collect keeps its finished episodes, train continues from its
train_state.pt, pack rewrites its directory atomically, eval keeps the episodes in its JSON-lines log.
OUT/recipe.json records the status and wall time of every stage.
"""

from __future__ import annotations

import dataclasses
import json
import re
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import tyro
import yaml

from policy.artifacts import atomic_write_json
from policy.cli import PackConfig, pack
from policy.errors import InputError
from policy.options import parse
from training.collect import CollectConfig, collect, task_families
from training.config import TrainConfig
from training.bridge import BridgeConfig, bridge_language
from training.evaluate import EvalConfig, run_eval
from training.train import train

DONE = ".recipe-done.json"
REFERENCE = re.compile(r"\$\{([A-Za-z0-9_-]+)\}")


# -- running one stage of each kind ------------------------------------------------------------------
def run_collect(args: dict, out: Path) -> dict:
    cfg = CollectConfig(**args, out=out)
    tasks = task_families(cfg.env) if cfg.tasks == "all" else [t.strip() for t in cfg.tasks.split(",") if t.strip()]
    manifest = collect(cfg.out, cfg.episodes, tasks, cfg.split, cfg.workers, cfg.seed, cfg.image_size, cfg.env,
                       cfg.expert, progress=sys.stderr.isatty(), action_noise=cfg.action_noise)
    return {"episodes": len(manifest["episodes"]), "dropped": len(manifest["dropped"])}


def run_train(args: dict, out: Path) -> dict:
    """A train stage, phase by phase (each phase = args + its overrides, resuming the previous one's state)."""
    args = dict(args)
    phases = args.pop("phases", None) or [{}]
    result: dict = {}
    for phase in phases:
        cfg = TrainConfig(**{**args, **phase, "out": str(out), "resume": True})
        result = train(cfg, progress=sys.stderr.isatty())
    return {k: v for k, v in result.items() if isinstance(v, (int, float, str))}


def run_bridge(args: dict, out: Path) -> dict:
    report = bridge_language(BridgeConfig(**args, out=str(out)))
    return {"ridge": report["ridge"], "instructions": report["instructions"]}


def run_pack(args: dict, out: Path) -> dict:
    return pack(PackConfig(**args, out=out))


def run_eval_stage(args: dict, out: Path) -> dict:
    out.mkdir(parents=True, exist_ok=True)
    result = run_eval(EvalConfig(**{"out": out / "eval.json", "summary": out / "eval.png", **args}),
                      progress=sys.stderr.isatty())
    return {split: round(r["overall"], 4) for split, r in result["splits"].items()}


KINDS: dict[str, Callable[[dict, Path], dict]] = {"collect": run_collect, "train": run_train, "bridge": run_bridge,
                                                  "pack": run_pack, "eval": run_eval_stage}
CONFIGS = {"collect": CollectConfig, "train": TrainConfig, "bridge": BridgeConfig, "pack": PackConfig,
           "eval": EvalConfig}


# -- the recipe file ---------------------------------------------------------------------------------
@dataclass
class Stage:
    name: str
    kind: str
    args: dict[str, Any]

    def resolved(self, out: Path, earlier: set[str]) -> dict:
        """args with every ${stage} replaced by that stage's output directory (an earlier stage only)."""
        def sub(value):
            if isinstance(value, str):
                for ref in REFERENCE.findall(value):
                    if ref not in earlier:
                        raise InputError(f"recipe: stage {self.name!r} refers to ${{{ref}}}, expected the name of an "
                                         f"earlier stage among {sorted(earlier)}")
                return REFERENCE.sub(lambda m: str(out / m.group(1)), value)
            if isinstance(value, list):
                return [sub(v) for v in value]
            if isinstance(value, dict):
                return {k: sub(v) for k, v in value.items()}
            return value
        return sub(self.args)


def load_recipe(path: str | Path) -> list[Stage]:
    """The stages of a recipe file, each checked: known kind, unique name, fields of its config."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"recipe: expected a YAML file, {path} does not exist")
    try:
        doc = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise InputError(f"recipe: {path} is not valid YAML ({' '.join(str(e).split())})") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("stages"), list) or not doc["stages"]:
        raise InputError(f"recipe: expected a mapping with a non-empty list 'stages' in {path}")
    stages, names = [], set()
    for i, entry in enumerate(doc["stages"]):
        if not isinstance(entry, dict) or set(entry) - {"name", "kind", "args"} or "name" not in entry:
            raise InputError(f"recipe: stages[{i}]: expected keys name, kind, args; received {entry!r}")
        name, kind, args = str(entry["name"]), entry.get("kind"), entry.get("args") or {}
        if kind not in KINDS:
            raise InputError(f"recipe: stage {name!r}: kind expected one of {sorted(KINDS)}, received {kind!r}")
        if name in names or not re.fullmatch(r"[A-Za-z0-9_-]+", name):
            raise InputError(f"recipe: stage {name!r}: expected a unique name of letters, digits, '_' or '-'")
        fields = {f.name for f in dataclasses.fields(CONFIGS[kind])} - {"out"} | ({"phases"} if kind == "train" else set())
        unknown = sorted(set(args) - fields)
        if unknown:
            raise InputError(f"recipe: stage {name!r} ({kind}): unknown field(s) {unknown}; expected among {sorted(fields)}")
        names.add(name)
        stages.append(Stage(name, kind, args))
    return stages


# -- running the recipe ------------------------------------------------------------------------------
def run_recipe(path: str | Path, out: str | Path, until: str | None = None) -> dict:
    """Runs the recipe's stages in order into `out` (skipping finished ones); returns OUT/recipe.json's record."""
    stages, out = load_recipe(path), Path(out)
    if until is not None and until not in {s.name for s in stages}:
        raise InputError(f"until: expected a stage name among {[s.name for s in stages]}, received {until!r}")
    out.mkdir(parents=True, exist_ok=True)
    log_path = out / "recipe.json"
    record = json.loads(log_path.read_text()) if log_path.is_file() else {}
    record.update(recipe=str(path), stages=record.get("stages", {}))
    earlier: set[str] = set()
    for stage in stages:
        args = stage.resolved(out, earlier)
        stage_out, done = out / stage.name, out / stage.name / DONE
        settings = {"kind": stage.kind, "args": args}
        if done.is_file():
            if json.loads(done.read_text())["settings"] != settings:
                raise InputError(f"recipe: stage {stage.name!r} finished in {stage_out} with other settings than the "
                                 f"recipe's now; remove {stage_out} to run it again, or use another --out")
            print(f"recipe: {stage.name} ({stage.kind}): done, skipped", file=sys.stderr)
        else:
            print(f"recipe: {stage.name} ({stage.kind}) -> {stage_out}", file=sys.stderr)
            t0 = time.perf_counter()
            figures = KINDS[stage.kind](args, stage_out)
            seconds = round(time.perf_counter() - t0, 1)
            atomic_write_json(done, {"settings": settings, "figures": figures, "seconds": seconds})
            record["stages"][stage.name] = {"kind": stage.kind, "seconds": seconds, "figures": figures}
            atomic_write_json(log_path, record)
        earlier.add(stage.name)
        if stage.name == until:
            break
    return record


# -- the command line --------------------------------------------------------------------------------
@dataclass
class RunArgs:
    recipe: tyro.conf.Positional[Path]
    """the recipe file (YAML), e.g. recipes/tabletop.yaml"""
    out: Path
    """run directory: one folder per stage, recipe.json with each stage's wall time and figures"""
    until: str | None = None
    """stop after this stage"""


@dataclass
class ShowArgs:
    recipe: tyro.conf.Positional[Path]
    """the recipe file (YAML)"""


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] not in ("run", "show"):
        if argv and argv[0] not in ("-h", "--help"):
            raise InputError(f"expected a subcommand 'run' or 'show', received {argv[0]!r}")
        print(__doc__.split("\n\n")[0] + "\n\n" + __doc__.split("\n\n")[1])
        return 0
    if argv[0] == "show":
        args = parse(ShowArgs, argv[1:], "mot recipe show", "Print a recipe's stages and their settings.")
        for stage in load_recipe(args.recipe):
            print(f"{stage.name} ({stage.kind}): " + json.dumps(stage.args))
        return 0
    args = parse(RunArgs, argv[1:], "mot recipe run", "Run a recipe's stages in order (finished ones are skipped).")
    print(json.dumps(run_recipe(args.recipe, args.out, args.until), indent=2))
    return 0
