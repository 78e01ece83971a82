"""The project's own error types: what a user got wrong, as opposed to a bug.

Every module raises these (never a bare Exception) for bad input, a missing or corrupt artifact, or a
bad config; the message names the field, what was expected and what arrived. They subclass ValueError,
so callers that catch ValueError keep working. The `mot` entry point turns an `InputError` into one
line on stderr and exit code 2; any other exception is a bug and keeps its traceback.

This module is the bottom of policy/'s layering: it imports nothing from the project.
"""

from __future__ import annotations


class InputError(ValueError):
    """Bad input, a bad config value or a missing/corrupt file the user pointed us at."""


class CheckpointError(InputError):
    """A checkpoint directory that is missing, corrupt, tampered with or does not fit this code."""


class DatasetError(InputError):
    """A dataset directory that is missing, corrupt or not a dataset of a format we read."""


class ArtifactMismatchError(InputError):
    """An exported graph or engine that does not belong to the checkpoint it is run with."""


class ExportError(InputError):
    """A policy that cannot be exported as asked (e.g. an option the graphs do not support)."""
