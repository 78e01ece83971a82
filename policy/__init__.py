"""mot-policy's model: a Mixture-of-Transformers flow-matching policy (pure torch).

    from policy import PolicyConfig, MoTPolicy
    policy = MoTPolicy(PolicyConfig.preset("small"))
    chunk = policy.sample_actions({"images": {...}, "state": ..., "instruction": [...]})
"""

from policy.config import PolicyConfig
from policy.model import MoTPolicy
from policy.normalize import NormStats

__all__ = ["PolicyConfig", "MoTPolicy", "NormStats"]
