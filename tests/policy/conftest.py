import numpy as np
import pytest
import torch

from policy import MoTPolicy, PolicyConfig

INSTRUCTIONS = ["pick up the red cube", "push the blue block onto the green pad",
                "put the yellow cube on the purple pad", "touch the orange cylinder"]


def make_batch(cfg: PolicyConfig, batch_size: int = 2, seed: int = 0, actions: bool = True) -> dict:
    rng = np.random.default_rng(seed)
    batch = {
        "images": {c: rng.integers(0, 255, (batch_size, cfg.image_size, cfg.image_size, 3), dtype=np.uint8)
                   for c in cfg.cameras},
        "state": rng.standard_normal((batch_size, cfg.state_dim)).astype(np.float32),
        "instruction": [INSTRUCTIONS[(seed + i) % len(INSTRUCTIONS)] for i in range(batch_size)],
    }
    if actions:
        batch["actions"] = rng.standard_normal((batch_size, cfg.horizon, cfg.action_dim)).astype(np.float32)
    return batch


def randomize_body(policy: MoTPolicy, std: float = 0.05) -> MoTPolicy:
    """adaLN-Zero gates start at 0 (body blocks are the identity): give them trained-like values, so
    tests exercise the attention from action tokens to the prefix."""
    with torch.no_grad():
        for name, p in policy.named_parameters():
            if ".ada." in name or name == "state_cond":
                p.normal_(0.0, std)
    return policy


@pytest.fixture(scope="session")
def tiny_cfg() -> PolicyConfig:
    return PolicyConfig.preset("tiny")


@pytest.fixture()
def tiny_policy(tiny_cfg) -> MoTPolicy:
    torch.manual_seed(0)
    return randomize_body(MoTPolicy(tiny_cfg))
