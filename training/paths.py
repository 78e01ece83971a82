"""Where the project's shipped artefacts live."""

from __future__ import annotations

from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_CHECKPOINT = REPO_ROOT / "checkpoints" / "default"


def default_checkpoint() -> Path | None:
    """The checkpoint `mot run` uses without --checkpoint, if it is present."""
    return DEFAULT_CHECKPOINT if (DEFAULT_CHECKPOINT / "manifest.json").is_file() else None
