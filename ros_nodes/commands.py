"""What a typed or spoken sentence means to the robot: an e-stop, or an instruction for the policy.

Shared by ``mot say`` and audio_node so "stop" means the same thing however it arrives.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Iterable

# Any of these phrases anywhere in the sentence stops the robot. Deliberately eager: "don't stop"
# stops too, because a false stop costs a reset while a missed one can cost a collision. Phrases
# are matched as whole words, in order ("don't move" matches "Don't move!", not "don't remove").
# audio_node's ``stop_phrases`` parameter adds to these; it never removes them.
STOP_PHRASES: tuple[str, ...] = ("stop", "halt", "freeze", "don't move", "do not move", "dont move")
STOP_WORDS = frozenset(p for p in STOP_PHRASES if " " not in p)  # the one-word ones (kept for callers)


@dataclass(frozen=True)
class Command:
    estop: bool
    instruction: str  # "" when there is nothing to plan for


def words(text: str) -> list[str]:
    # Speech-to-text writes typographic apostrophes ("don’t"); typed text has the ASCII one.
    return re.findall(r"[a-z0-9']+", text.lower().replace("\u2019", "'").replace("\u2018", "'"))


def stop_phrases(extra: Iterable[str] = ()) -> tuple[tuple[str, ...], ...]:
    """The default stop phrases plus ``extra``, each as a tuple of words (empty ones dropped)."""
    phrases = {tuple(words(p)) for p in (*STOP_PHRASES, *extra)}
    return tuple(sorted(p for p in phrases if p))


_DEFAULT = stop_phrases()


def contains_stop(tokens: list[str], phrases: tuple[tuple[str, ...], ...] = _DEFAULT) -> bool:
    for phrase in phrases:
        n = len(phrase)
        if any(tuple(tokens[i:i + n]) == phrase for i in range(len(tokens) - n + 1)):
            return True
    return False


def parse_command(text: str, phrases: tuple[tuple[str, ...], ...] = _DEFAULT) -> Command:
    """"Stop!" -> e-stop; "Pick up the red cube." -> instruction "pick up the red cube"; "" -> nothing.

    Instructions are lower-cased with punctuation removed: speech-to-text adds capitals and a full
    stop that typed commands do not have, and the policy should see one spelling of a command.
    ``phrases``: ``stop_phrases(extra)`` for a configured list.
    """
    tokens = words(text)
    if contains_stop(tokens, phrases):
        return Command(estop=True, instruction="")
    return Command(estop=False, instruction=" ".join(tokens))
