"""What a typed or spoken sentence means to the robot: an e-stop, or an instruction for the policy.

Shared by ``mot say`` and audio_node so "stop" means the same thing however it arrives.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

# Any of these words anywhere in the sentence stops the robot. Deliberately eager: "don't stop"
# stops too, because a false stop costs a reset while a missed one can cost a collision.
STOP_WORDS = frozenset({"stop", "halt"})


@dataclass(frozen=True)
class Command:
    estop: bool
    instruction: str  # "" when there is nothing to plan for


def words(text: str) -> list[str]:
    return re.findall(r"[a-z0-9']+", text.lower())


def parse_command(text: str) -> Command:
    """"Stop!" -> e-stop; "Pick up the red cube." -> instruction "pick up the red cube"; "" -> nothing.

    Instructions are lower-cased with punctuation removed: speech-to-text adds capitals and a full
    stop that typed commands do not have, and the policy should see one spelling of a command.
    """
    tokens = words(text)
    if any(token in STOP_WORDS for token in tokens):
        return Command(estop=True, instruction="")
    return Command(estop=False, instruction=" ".join(tokens))
