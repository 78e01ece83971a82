"""Does the frozen language expert know the held-out vocabulary?  Prints JSON with --json.

    python benchmarks/language.py --json        (or: mot bench language --json)

The held-out instruction split uses synonyms the align and policy stages never see ("crimson block" for
"red cube", sim/language.py). Whatever grounds them has to come from the pretrained language expert. For
each held-out colour word, shape word and "<colour> <shape>" phrase this finds the nearest train-split one
by the cosine of the expert's mean-pooled final states (the sentence embedding MiniLM was trained for)
and reports how often it means the same colour / shape:

  colour_word_nn_acc       held-out colour word alone -> nearest train colour word, same colour
  shape_word_nn_acc        the same for shape words
  phrase_colour_nn_acc     "the <colour> <shape>" -> nearest train phrase, same colour
  phrase_both_nn_acc       ... same colour and shape
  colour_token_nn_acc_by_layer
                           what the policy attends to: the colour word's own token states at each layer
                           (embeddings = 0 .. 6, mean over its word pieces) in "the <colour> cube", nearest
                           train colour word's in the same phrase, same colour
  chance_colour            1 / number of colours
"""

from __future__ import annotations

import itertools
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from dataclasses import dataclass  # noqa: E402

import torch  # noqa: E402
from tokenizers import Tokenizer  # noqa: E402
from transformers import BertModel  # noqa: E402

from policy.options import parse  # noqa: E402
from policy.language import resolve_language_model  # noqa: E402
from sim.language import COLOR_WORDS, SHAPE_WORDS  # noqa: E402
from training.cli import run_command  # noqa: E402


def sentence_embeddings(model: BertModel, tokenizer: Tokenizer, texts: list[str]) -> torch.Tensor:
    """texts -> (N, width) unit vectors: mean of the final token states (no padding: one text at a time)."""
    out = []
    with torch.no_grad():
        for text in texts:
            ids = torch.tensor([tokenizer.encode(text).ids])
            v = model(ids).last_hidden_state[0].mean(0)
            out.append(v / v.norm())
    return torch.stack(out)


def nearest_agreement(model, tokenizer, held: list[tuple[str, tuple]], train: list[tuple[str, tuple]]) -> list[tuple]:
    """For each held-out (text, meaning): (its meaning, the meaning of the nearest train text)."""
    h = sentence_embeddings(model, tokenizer, [t for t, _ in held])
    t = sentence_embeddings(model, tokenizer, [t for t, _ in train])
    nearest = (h @ t.T).argmax(dim=1).tolist()
    return [(held[i][1], train[j][1]) for i, j in enumerate(nearest)]


def colour_token_states(model: BertModel, tokenizer: Tokenizer, word: str) -> torch.Tensor:
    """word -> (layers + 1, width): its word pieces' states in "the <word> cube", averaged, at every layer."""
    pieces = tokenizer.encode(word, add_special_tokens=False).ids
    ids = tokenizer.encode(f"the {word} cube").ids
    start = next(i for i in range(len(ids)) if ids[i:i + len(pieces)] == pieces)
    with torch.no_grad():
        hidden = model(torch.tensor([ids]), output_hidden_states=True).hidden_states
    return torch.stack([h[0, start:start + len(pieces)].mean(0) for h in hidden])


def token_agreement_by_layer(model, tokenizer, held: list[tuple[str, tuple]], train: list[tuple[str, tuple]]) -> list[float]:
    """Per layer: the share of held-out words whose nearest train word (cosine of token states) means the same."""
    h = torch.stack([colour_token_states(model, tokenizer, w) for w, _ in held])    # (H, layers + 1, width)
    t = torch.stack([colour_token_states(model, tokenizer, w) for w, _ in train])   # (T, layers + 1, width)
    h, t = h / h.norm(dim=-1, keepdim=True), t / t.norm(dim=-1, keepdim=True)
    nearest = torch.einsum("hlw,tlw->lht", h, t).argmax(dim=-1)                     # (layers + 1, H)
    return [round(sum(held[i][1] == train[j][1] for i, j in enumerate(row.tolist())) / len(held), 4)
            for row in nearest]


def words(table: dict, split: str) -> list[tuple[str, tuple]]:
    return [(w, (meaning,)) for meaning, ws in table[split].items() for w in ws]


def phrases(split: str) -> list[tuple[str, tuple]]:
    return [(f"the {cw} {sw}", (c, s)) for c, cws in COLOR_WORDS[split].items() for s, sws in SHAPE_WORDS[split].items()
            for cw, sw in itertools.product(cws, sws)]


def measure(folder: str | None = None) -> dict:
    folder = str(resolve_language_model(folder))
    tokenizer = Tokenizer.from_file(os.path.join(folder, "tokenizer.json"))
    tokenizer.no_padding()
    model = BertModel.from_pretrained(folder).eval()

    def acc(pairs, key=lambda a, b: a == b) -> float:
        return round(sum(key(a, b) for a, b in pairs) / len(pairs), 4)

    colours = nearest_agreement(model, tokenizer, words(COLOR_WORDS, "heldout"), words(COLOR_WORDS, "train"))
    shapes = nearest_agreement(model, tokenizer, words(SHAPE_WORDS, "heldout"), words(SHAPE_WORDS, "train"))
    refs = nearest_agreement(model, tokenizer, phrases("heldout"), phrases("train"))
    return {"language_model": folder, "colour_words": len(colours), "colour_word_nn_acc": acc(colours),
            "shape_word_nn_acc": acc(shapes), "phrases": len(refs),
            "phrase_colour_nn_acc": acc(refs, lambda a, b: a[0] == b[0]), "phrase_both_nn_acc": acc(refs),
            "colour_token_nn_acc_by_layer": token_agreement_by_layer(model, tokenizer, words(COLOR_WORDS, "heldout"),
                                                                     words(COLOR_WORDS, "train")),
            "chance_colour": round(1 / len(COLOR_WORDS["train"]), 4)}


@dataclass
class LanguageBenchConfig:
    json: bool = False
    """print one JSON object"""
    language_model: str | None = None
    """a BERT folder (default: the installed MiniLM-L6)"""


def main(argv: list[str] | None = None) -> int:
    args = parse(LanguageBenchConfig, argv, "mot bench language", __doc__.split("\n\n")[0])
    result = measure(args.language_model)
    print(json.dumps(result, indent=None if args.json else 2))
    return 0


if __name__ == "__main__":  # as a script too: a mistake is one line and exit 2, as under `mot bench`
    sys.exit(run_command("bench language", main, sys.argv[1:]))
