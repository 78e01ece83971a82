"""mot-policy's model: a Mixture-of-Transformers flow-matching policy (pure torch).

    from policy import PolicyConfig, MoTPolicy
    policy = MoTPolicy(PolicyConfig.preset("small"))
    chunk = policy.sample_actions({"images": {...}, "state": ..., "instruction": [...]})

The package's own names load on first use (PEP 562 `__getattr__`): importing a light module such as
`policy.options` or `policy.errors` (what `mot say --help` needs) must not import torch.
"""

from __future__ import annotations

import importlib

_EXPORTS = {"PolicyConfig": "policy.config", "MoTPolicy": "policy.model", "NormStats": "policy.normalize"}

__all__ = list(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'policy' has no attribute {name!r}")
