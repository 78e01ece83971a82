"""Nothing that training reads names a held-out word: the held-out split measures words never seen in training.

Held-out-only words are the words of the held-out split's lists in sim/language.py (COLOR_WORDS, SHAPE_WORDS,
PAD_WORDS, TEMPLATES, PREFIXES, SUFFIXES) that no train-split list has ("crimson", "block", "hoist", "kindly").
Scanned for them:

  (a) the instructions (and task names, scene object and pad names) of a dataset collected the way training
      collects it (`training.collect.collect`, its default train split), every task family;
  (b) every text the align stage makes up (`ChunkDataset.batch` with referring expressions, pair ones too) over
      many seeds, and the train instructions `mot bridge-language` fits on (`training.bridge`);
  (c) every string constant in the source of training/ and policy/ (docstrings aside: they describe the held-out
      split, nothing reads them as text), and every text of the recipes in recipes/.

sim/language.py is not scanned: it is the simulator and evaluator, which holds both splits by design.

Dynamic texts (a, b, recipes) may not hold any held-out-only word. The source scan (c) leaves out a few ordinary
English words that held-out templates happen to use and help texts and error messages use too ("with", "set",
"make", "head", ...: ENGLISH): a word list that fed such a word into training would show up in (a) or (b).
"""

from __future__ import annotations

import ast
import importlib.util
import re
from pathlib import Path

import numpy as np
import pytest
import yaml

from sim import language
from training.collect import collect
from training.data import PAIR_TEMPLATES, REFERRING_TEMPLATES, ChunkDataset, read_episodes

REPO = Path(__file__).resolve().parents[2]
LISTS = ("COLOR_WORDS", "SHAPE_WORDS", "PAD_WORDS", "TEMPLATES", "PREFIXES", "SUFFIXES")
# Held-out-only words that are also everyday English of help texts, error messages and identifiers
# ("... with the operator's token", "set_input_shape", "the grounding head", "`make demo`"); the source scan (c)
# leaves them out, the scans of texts training actually reads (a, b, recipes) do not.
ENGLISH = frozenset({"could", "down", "go", "head", "hold", "i", "make", "need", "now", "set", "with", "you"})


def words_of(text: str) -> set[str]:
    """Lowercase words, as sim.language.parse_instruction splits an instruction ("{obj}"-style fields dropped)."""
    return set(re.findall(r"[a-z]+", re.sub(r"\{\w*\}", " ", text).lower()))


def split_words(split: str) -> set[str]:
    def walk(value) -> set[str]:
        if isinstance(value, str):
            return words_of(value)
        values = value.values() if isinstance(value, dict) else value
        return set().union(*(walk(v) for v in values))

    return set().union(*(walk(getattr(language, name)[split]) for name in LISTS))


TRAIN_WORDS = split_words("train")
HELDOUT_ONLY = split_words("heldout") - TRAIN_WORDS


def leaks(texts, vocabulary: frozenset[str] | set[str] = HELDOUT_ONLY) -> dict[str, list[str]]:
    """texts -> {held-out-only word: the texts (up to 3) that hold it}; empty when none."""
    found: dict[str, list[str]] = {}
    for text in texts:
        for word in sorted(words_of(text) & vocabulary):
            found.setdefault(word, [])
            if len(found[word]) < 3:
                found[word].append(text)
    return found


def test_the_held_out_only_vocabulary_is_what_the_split_adds():
    assert {"crimson", "scarlet", "block", "canister", "mat", "zone", "hoist", "shove", "kindly"} <= HELDOUT_ONLY
    assert not HELDOUT_ONLY & TRAIN_WORDS
    assert {"red", "ruby", "cube", "drum", "pad", "target", "pick", "push", "please", "robot"} <= TRAIN_WORDS
    # the checker itself finds a leak, word by word
    assert leaks(["could you hoist the crimson block now", "pick up the red cube"]) == {
        w: ["could you hoist the crimson block now"] for w in ("block", "could", "crimson", "hoist", "now", "you")}
    rng = np.random.default_rng(0)
    spec = language.TaskSpec("place", "red", "cube", "blue")
    assert all(leaks([language.generate_instruction(spec, "heldout", rng)]) for _ in range(50))


@pytest.fixture(scope="module")
def collected(tmp_path_factory):
    """16 scripted-expert episodes (4 per task family), collected as training collects them (the default split)."""
    out = tmp_path_factory.mktemp("heldout_vocabulary")
    manifest = collect(out, episodes=16, tasks=list(language.TASK_FAMILIES), workers=1, image_size=64, progress=False)
    assert manifest["split"] == "train"
    _, episodes = read_episodes(out)
    assert len(episodes) >= 12 and {ep.task for ep in episodes} == set(language.TASK_FAMILIES)
    return manifest, episodes


def test_collected_instructions_use_train_words_only(collected):
    manifest, episodes = collected
    instructions = [ep.instruction for ep in episodes] + [e["instruction"] for e in manifest["episodes"].values()]
    names = [ep.task for ep in episodes] + [n for ep in episodes if ep.track is not None
                                            for n in ep.track.object_names + ep.track.pad_names]
    assert leaks(instructions + names) == {}
    # not vacuous: every instruction speaks the train split, a train colour and shape word in each
    train_colours = {w for ws in language.COLOR_WORDS["train"].values() for w in ws}
    train_shapes = {w for ws in language.SHAPE_WORDS["train"].values() for w in ws}
    for text in instructions:
        assert words_of(text) <= TRAIN_WORDS, text
        assert words_of(text) & train_colours and words_of(text) & train_shapes, text
    assert len(set(instructions)) >= 8 and all(ep.track is not None and ep.track.object_names for ep in episodes)


def test_align_stage_referring_expressions_use_train_words_only(collected):
    manifest, episodes = collected
    data = ChunkDataset(episodes, manifest["cameras"], horizon=4)
    own = set(ep.instruction for ep in episodes)
    texts: set[str] = set()
    for seed in range(200):  # as training's align stage: referents and pad referents, its rng per step
        rng = np.random.default_rng([seed, 2])
        indices = rng.integers(len(data), size=32)
        for referent_prob, pad_prob in ((1.0, 0.5), (0.5, 1.0)):
            texts.update(data.batch(indices, images=False, referent_prob=referent_prob, rng=rng,
                                    pad_referent_prob=pad_prob)["instruction"])
    made_up = texts - own
    assert leaks(texts) == {}
    # not vacuous: every template was drawn, object and pad names of the scenes filled in
    for template in REFERRING_TEMPLATES + PAIR_TEMPLATES:
        pattern = re.escape(template).replace(r"\{\}", ".+")
        assert any(re.fullmatch(pattern, t) for t in made_up), template
    assert any("pad" in words_of(t) for t in made_up) and len(made_up) >= 50


def test_bridge_fits_on_train_instructions_only():
    if importlib.util.find_spec("training.bridge") is None:
        pytest.skip("training/bridge.py is not there")
    from training.bridge import train_instructions

    texts = train_instructions(3000, seed=0) + train_instructions(500, seed=1)
    assert leaks(texts) == {}
    assert len(set(texts)) >= 3000 and all(words_of(t) <= TRAIN_WORDS for t in texts)


def string_constants(path: Path) -> list[tuple[int, str]]:
    """(line, text) of every string constant in a Python file but its docstrings (module, class, function, and
    attribute docstrings: a bare string statement)."""
    tree = ast.parse(path.read_text(), str(path))
    docstrings = set()
    for node in ast.walk(tree):
        for field in ("body", "orelse", "finalbody"):
            block = getattr(node, field, None)
            if isinstance(block, list):
                docstrings.update(id(s.value) for s in block if isinstance(s, ast.Expr) and isinstance(s.value, ast.Constant))
    return [(n.lineno, n.value) for n in ast.walk(tree)
            if isinstance(n, ast.Constant) and isinstance(n.value, str) and id(n) not in docstrings]


def test_no_source_string_of_training_or_policy_names_a_held_out_word():
    files = sorted(p for package in ("training", "policy") for p in (REPO / package).rglob("*.py"))
    constants = [(f"{p.relative_to(REPO)}:{line}", text) for p in files for line, text in string_constants(p)]
    found = {}
    for where, text in constants:
        for word, _ in leaks([text], HELDOUT_ONLY - ENGLISH).items():
            found.setdefault(word, []).append(f"{where}: {text[:80]!r}")
    assert found == {}, f"held-out-only words in training/policy source strings: {found}"
    # not vacuous: the align stage's templates are among the scanned strings
    scanned = {text for _, text in constants}
    assert set(REFERRING_TEMPLATES + PAIR_TEMPLATES) <= scanned and len(files) > 20 and len(constants) > 1000
    assert not ENGLISH - HELDOUT_ONLY  # the exemption lists held-out-only words only


def test_recipes_use_train_words_only():
    from training.recipe import load_recipe

    recipes = sorted((REPO / "recipes").glob("*.y*ml"))
    assert recipes

    def strings(value):
        if isinstance(value, str):
            yield value
        elif isinstance(value, dict):
            for k, v in value.items():
                yield str(k)
                yield from strings(v)
        elif isinstance(value, list):
            for v in value:
                yield from strings(v)

    for path in recipes:
        texts = list(strings(yaml.safe_load(path.read_text())))
        assert texts and leaks(texts) == {}, path
        # the data every training stage reads is collected on the train split
        for stage in load_recipe(path):
            if stage.kind == "collect":
                assert stage.args.get("split", "train") == "train", (path, stage.name)
