"""mot-policy's model: a Mixture-of-Transformers flow-matching policy (pure torch).

    from policy import PolicyConfig, MoTPolicy
    policy = MoTPolicy(PolicyConfig.preset("small"))
    chunk = policy.sample_actions({"images": {...}, "state": ..., "instruction": [...]})

The package's own names load on first use (PEP 562 `__getattr__`, through policy/lazy.py references): importing a
light module such as `policy.options` or `policy.errors` (what `mot say --help` needs), or the torch-free runtime
(`policy.runtime`), must not import torch.
"""

from __future__ import annotations

from policy.lazy import resolve

_EXPORTS = {"PolicyConfig": "policy.config:PolicyConfig", "MoTPolicy": "policy.model:MoTPolicy",
            "NormStats": "policy.normalize:NormStats"}

__all__ = list(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return resolve(_EXPORTS[name])
    raise AttributeError(f"module 'policy' has no attribute {name!r}")
