"""Lazy references: "policy.module:Name" strings resolved on first use.

A torch-free module that may hand work to a torch one (policy/runtime.py -> the torch backend, policy/backends.py
-> the exporter) names it by such a string instead of importing it, so importing the torch-free module never
imports torch. tests/test_layering.py counts every "policy.x:Name" string literal as an import of policy.x: the
layering rules hold for these references as for imports.
"""

from __future__ import annotations

import importlib


def resolve(ref: str):
    """"policy.module:Name" -> that object, importing the module now (ImportError when it or its imports fail)."""
    module, _, name = ref.partition(":")
    return getattr(importlib.import_module(module), name)


__all__ = ["resolve"]
