"""Instructions: the colour palette, template generation for two vocabulary splits, and parsing.

Two splits share the meaning of every instruction but never a surface form:

    split     colours               objects             verbs / templates
    train     red, ruby, cobalt...  cube, box, drum...  "pick up the {obj}", "push the {obj} onto..."
    heldout   crimson, navy...      block, brick, tube  "hoist the {obj}", "shove the {obj} onto..."

`generate_instruction(spec, split, rng)` draws a template and synonyms; `parse_instruction(text)`
understands both splits (it is what `env.reset(options={"instruction": ...})` and `mot run "..."` use)
and raises `ValueError("cannot ground '...': <reason>")` when it cannot.

Reference phrases are always "<colour> <shape>" (or, heldout only, "<shape> that is <colour>"); the
scene sampler makes object colours unique, so every generated instruction is unambiguous.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np

TASK_FAMILIES: tuple[str, ...] = ("reach", "pick", "push", "place")
SPLITS: tuple[str, ...] = ("train", "heldout")
SHAPES: tuple[str, ...] = ("cube", "cylinder")

# name -> RGBA; >= 6 colours that stay distinguishable at 128 px
PALETTE: dict[str, tuple[float, float, float, float]] = {
    "red": (0.85, 0.1, 0.1, 1.0),
    "green": (0.1, 0.65, 0.2, 1.0),
    "blue": (0.12, 0.3, 0.9, 1.0),
    "yellow": (0.95, 0.85, 0.1, 1.0),
    "purple": (0.55, 0.2, 0.75, 1.0),
    "orange": (1.0, 0.5, 0.05, 1.0),
    "cyan": (0.1, 0.8, 0.85, 1.0),
    "white": (0.95, 0.95, 0.95, 1.0),
}
COLORS: tuple[str, ...] = tuple(PALETTE)

COLOR_WORDS: dict[str, dict[str, tuple[str, ...]]] = {
    "train": {
        "red": ("red", "ruby"),
        "green": ("green", "jade"),
        "blue": ("blue", "cobalt"),
        "yellow": ("yellow", "canary"),
        "purple": ("purple", "plum"),
        "orange": ("orange", "pumpkin"),
        "cyan": ("cyan", "aqua"),
        "white": ("white", "pearl"),
    },
    "heldout": {
        "red": ("crimson", "scarlet"),
        "green": ("emerald", "lime"),
        "blue": ("navy", "azure"),
        "yellow": ("golden", "lemon"),
        "purple": ("violet", "lavender"),
        "orange": ("tangerine", "amber"),
        "cyan": ("turquoise", "teal"),
        "white": ("ivory", "snowy"),
    },
}
SHAPE_WORDS: dict[str, dict[str, tuple[str, ...]]] = {
    "train": {"cube": ("cube", "box"), "cylinder": ("cylinder", "drum")},
    "heldout": {"cube": ("block", "brick"), "cylinder": ("tube", "canister")},
}
PAD_WORDS: dict[str, tuple[str, ...]] = {"train": ("pad", "target"), "heldout": ("mat", "zone")}
# Nouns that name "an object" without a shape (parsing only: "pick up the red one").
GENERIC_OBJECT_WORDS: tuple[str, ...] = ("one", "object", "thing", "item", "piece")

TEMPLATES: dict[str, dict[str, tuple[str, ...]]] = {
    "train": {
        "reach": ("touch the {obj}", "reach the {obj}", "reach for the {obj}", "tap the {obj}",
                  "move your gripper to the {obj}"),
        "pick": ("pick up the {obj}", "lift the {obj}", "raise the {obj}", "grab the {obj} and lift it",
                 "pick the {obj} up"),
        "push": ("push the {obj} onto the {pad}", "push the {obj} to the {pad}", "slide the {obj} onto the {pad}",
                 "slide the {obj} over to the {pad}"),
        "place": ("put the {obj} on the {pad}", "place the {obj} on the {pad}",
                  "pick up the {obj} and put it on the {pad}", "move the {obj} onto the {pad}"),
    },
    "heldout": {
        "reach": ("poke the {obj}", "make contact with the {obj}", "head to the {obj}", "go to the {obj}"),
        "pick": ("hoist the {obj}", "elevate the {obj}", "snatch the {obj} and hold it up", "heave the {obj} upward"),
        "push": ("shove the {obj} onto the {pad}", "nudge the {obj} onto the {pad}", "scoot the {obj} over to the {pad}"),
        "place": ("set the {obj} down on the {pad}", "deposit the {obj} on the {pad}", "drop the {obj} onto the {pad}",
                  "transfer the {obj} to the {pad}", "carry the {obj} to the {pad}"),
    },
}
PREFIXES: dict[str, tuple[str, ...]] = {"train": ("", "", "please ", "robot, "), "heldout": ("", "could you ", "kindly ", "i need you to ")}
SUFFIXES: dict[str, tuple[str, ...]] = {"train": ("", "", ".", " please"), "heldout": ("", "", " now", "!")}

# Verb cues for parsing (all splits).  Order of precedence: a pad noun makes it push/place;
# otherwise pick beats reach ("grab the cube and lift it" is a pick).
PUSH_VERBS = ("push", "slide", "shove", "nudge", "scoot")
PLACE_VERBS = ("put", "place", "set", "deposit", "drop", "transfer", "carry", "move", "bring", "stack", "lay")
PICK_VERBS = ("pick", "lift", "raise", "grab", "hoist", "elevate", "snatch", "heave", "grasp", "take")
REACH_VERBS = ("touch", "reach", "tap", "poke", "contact", "head", "go", "move", "approach", "point")


@dataclass(frozen=True)
class TaskSpec:
    """What an instruction asks for.  None means "not specified" (the scene builder chooses)."""

    task: str
    object_color: str | None = None
    object_shape: str | None = None
    pad_color: str | None = None

    def __post_init__(self) -> None:
        if self.task not in TASK_FAMILIES:
            raise ValueError(f"TaskSpec.task: expected one of {TASK_FAMILIES}, got {self.task!r}")
        if self.object_color is not None and self.object_color not in PALETTE:
            raise ValueError(f"TaskSpec.object_color: expected one of {COLORS} or None, got {self.object_color!r}")
        if self.object_shape is not None and self.object_shape not in SHAPES:
            raise ValueError(f"TaskSpec.object_shape: expected one of {SHAPES} or None, got {self.object_shape!r}")
        if self.pad_color is not None and self.pad_color not in PALETTE:
            raise ValueError(f"TaskSpec.pad_color: expected one of {COLORS} or None, got {self.pad_color!r}")
        if self.pad_color is not None and self.task not in ("push", "place"):
            raise ValueError(f"TaskSpec.pad_color: only push/place use a pad, got task {self.task!r}")

    @property
    def needs_pad(self) -> bool:
        return self.task in ("push", "place")


def _check_split(split: str) -> None:
    if split not in SPLITS:
        raise ValueError(f"split: expected one of {SPLITS}, got {split!r}")


def object_phrase(color: str, shape: str, split: str, rng: np.random.Generator) -> str:
    """A referring phrase for an object, e.g. "red cube" (train) or "block that is crimson" (heldout)."""
    _check_split(split)
    cw = str(rng.choice(COLOR_WORDS[split][color]))
    sw = str(rng.choice(SHAPE_WORDS[split][shape]))
    if split == "heldout" and rng.random() < 0.25:
        return f"{sw} that is {cw}"
    return f"{cw} {sw}"


def generate_instruction(spec: TaskSpec, split: str, rng: np.random.Generator) -> str:
    """Render a fully specified TaskSpec (colour and shape set; pad colour for push/place) as text."""
    _check_split(split)
    if spec.object_color is None or spec.object_shape is None:
        raise ValueError(f"generate_instruction: spec must name an object colour and shape, got {spec}")
    if spec.needs_pad and spec.pad_color is None:
        raise ValueError(f"generate_instruction: {spec.task} needs a pad colour, got {spec}")
    template = str(rng.choice(TEMPLATES[split][spec.task]))
    obj = object_phrase(spec.object_color, spec.object_shape, split, rng)
    pad = ""
    if spec.needs_pad:
        pad = f"{rng.choice(COLOR_WORDS[split][spec.pad_color])} {rng.choice(PAD_WORDS[split])}"
    text = template.format(obj=obj, pad=pad)
    text = str(rng.choice(PREFIXES[split])) + text + str(rng.choice(SUFFIXES[split]))
    return text


# ---------------------------------------------------------------------------------------------- parsing

def _lookup(table: dict[str, dict[str, tuple[str, ...]]]) -> dict[str, str]:
    out: dict[str, str] = {}
    for split in SPLITS:
        for canon, words in table[split].items():
            for w in words:
                out[w] = canon
    return out


_COLOR_OF = _lookup(COLOR_WORDS) | {c: c for c in COLORS} | {"grey": "white", "gray": "white"}
_SHAPE_OF = _lookup(SHAPE_WORDS) | {"cubes": "cube", "blocks": "cube", "cylinders": "cylinder", "can": "cylinder"}
_PAD_NOUNS = set(PAD_WORDS["train"] + PAD_WORDS["heldout"]) | {"pads", "mats", "spot", "area", "square", "circle", "goal"}
_GENERIC = set(GENERIC_OBJECT_WORDS)
_NOUN_WINDOW = 3  # a colour word attaches to a noun at most this many words after it


def parse_instruction(text: str) -> TaskSpec:
    """Parse an instruction of either split into a TaskSpec.

    >>> parse_instruction("put the red cube on the blue pad")
    TaskSpec(task='place', object_color='red', object_shape='cube', pad_color='blue')
    >>> parse_instruction("could you hoist the crimson block")
    TaskSpec(task='pick', object_color='red', object_shape='cube', pad_color=None)

    Raises ValueError("cannot ground '<text>': <reason>") when no verb, object or pad can be found.
    """
    if not isinstance(text, str):
        raise TypeError(f"instruction: expected str, got {type(text).__name__}")
    words = re.findall(r"[a-z]+", text.lower())
    if not words:
        raise ValueError(f"cannot ground {text!r}: empty instruction")

    def fail(reason: str) -> ValueError:
        return ValueError(f"cannot ground {text!r}: {reason}")

    # nouns: (index, kind, canonical shape or None)
    nouns: list[tuple[int, str, str | None]] = []
    for i, w in enumerate(words):
        if w in _SHAPE_OF:
            nouns.append((i, "object", _SHAPE_OF[w]))
        elif w in _PAD_NOUNS:
            nouns.append((i, "pad", None))
        elif w in _GENERIC and i > 0 and words[i - 1] in _COLOR_OF:
            nouns.append((i, "object", None))
    # each colour attaches to the first noun after it (within a few words), else to the closest before
    # it ("the block that is crimson")
    colour_of_noun: dict[int, str] = {}
    for i, w in enumerate(words):
        if w not in _COLOR_OF:
            continue
        after = [n for n in nouns if 0 < n[0] - i <= _NOUN_WINDOW]
        before = [n for n in nouns if 0 < i - n[0] <= _NOUN_WINDOW]
        target = after[0] if after else (before[-1] if before else None)
        if target is not None and target[0] not in colour_of_noun:
            colour_of_noun[target[0]] = _COLOR_OF[w]

    obj = next((n for n in nouns if n[1] == "object"), None)
    pad = next((n for n in nouns if n[1] == "pad"), None)
    wordset = set(words)
    has = lambda verbs: any(v in wordset for v in verbs)  # noqa: E731

    if pad is not None:
        if has(PUSH_VERBS):
            task = "push"
        elif has(PLACE_VERBS) or has(PICK_VERBS) or has(REACH_VERBS):
            task = "place"
        else:
            raise fail("no known task verb")
    elif has(PICK_VERBS):
        task = "pick"
    elif has(REACH_VERBS):
        task = "reach"
    elif has(PUSH_VERBS) or has(PLACE_VERBS):
        raise fail("push/place instructions need a pad (e.g. 'onto the blue pad')")
    else:
        raise fail("no known task verb")

    if obj is None:
        raise fail("no object named (expected e.g. 'the red cube')")
    obj_color = colour_of_noun.get(obj[0])
    if obj_color is None and obj[2] is None:
        raise fail("the object needs a colour or a shape")
    pad_color = colour_of_noun.get(pad[0]) if pad is not None else None
    return TaskSpec(task=task, object_color=obj_color, object_shape=obj[2], pad_color=pad_color)
