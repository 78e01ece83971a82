"""Instruction generation and parsing: both splits round-trip, vocabularies are disjoint, errors are clear."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sim.language import (
    COLOR_WORDS,
    COLORS,
    PAD_WORDS,
    SHAPE_WORDS,
    SHAPES,
    SPLITS,
    TASK_FAMILIES,
    TEMPLATES,
    TaskSpec,
    generate_instruction,
    parse_instruction,
)

specs = st.builds(
    lambda task, c, s, p: TaskSpec(task, c, s, p if task in ("push", "place") else None),
    st.sampled_from(TASK_FAMILIES),
    st.sampled_from(COLORS),
    st.sampled_from(SHAPES),
    st.sampled_from(COLORS),
)


@settings(max_examples=300, deadline=None)
@given(spec=specs, split=st.sampled_from(SPLITS), seed=st.integers(0, 2**31 - 1))
def test_generated_instructions_parse_back(spec, split, seed):
    text = generate_instruction(spec, split, np.random.default_rng(seed))
    assert parse_instruction(text) == spec, text


def _words(split):
    out = set()
    for table in (COLOR_WORDS, SHAPE_WORDS):
        for ws in table[split].values():
            out |= set(ws)
    return out | set(PAD_WORDS[split])


def test_heldout_vocabulary_never_used_for_training():
    assert not (_words("train") & _words("heldout"))
    for fam in TASK_FAMILIES:
        assert not set(TEMPLATES["train"][fam]) & set(TEMPLATES["heldout"][fam])
        train_verbs = {t.split()[0] for t in TEMPLATES["train"][fam]}
        heldout_verbs = {t.split()[0] for t in TEMPLATES["heldout"][fam]}
        assert not train_verbs & heldout_verbs, fam


@pytest.mark.parametrize(
    "text, expected",
    [
        ("put the red cube on the blue pad", TaskSpec("place", "red", "cube", "blue")),
        ("hoist the crimson block", TaskSpec("pick", "red", "cube")),
        ("Could you SHOVE the tube that is teal onto the ivory mat?", TaskSpec("push", "cyan", "cylinder", "white")),
        ("pick up the green cube and put it on the yellow pad", TaskSpec("place", "green", "cube", "yellow")),
        ("grab the cobalt box and lift it", TaskSpec("pick", "blue", "cube")),
        ("touch the orange cylinder", TaskSpec("reach", "orange", "cylinder")),
        ("pick up the cube", TaskSpec("pick", None, "cube")),
        ("put the red one on the pad", TaskSpec("place", "red", None, None)),
    ],
)
def test_parse_examples(text, expected):
    assert parse_instruction(text) == expected


@pytest.mark.parametrize(
    "text, reason",
    [
        ("fly to the moon", "no known task verb"),
        ("push the red cube", "need a pad"),
        ("pick up", "no object"),
        ("", "empty"),
        ("lift the thing", "no object"),
    ],
)
def test_parse_errors_name_the_reason(text, reason):
    with pytest.raises(ValueError, match="cannot ground") as e:
        parse_instruction(text)
    assert reason in str(e.value)


def test_taskspec_validates():
    with pytest.raises(ValueError, match="task"):
        TaskSpec("fly")
    with pytest.raises(ValueError, match="object_color"):
        TaskSpec("pick", "mauve")
    with pytest.raises(ValueError, match="pad_color"):
        TaskSpec("pick", "red", "cube", "blue")
