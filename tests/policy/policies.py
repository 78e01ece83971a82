"""Tiny test policies for the export / runtime tests: one that points (target points from its own grounding head,
image K/V pooled 2x2 for the body) and one that does not, with non-trivial normalisation statistics so the runner's
numpy (de-)normalisation and the graph's point normalisation are exercised."""

import numpy as np
import torch

from policy import MoTPolicy, NormStats, PolicyConfig

from .conftest import randomize_body


def _scramble(module: torch.nn.Module, generator: torch.Generator, std: float) -> None:
    with torch.no_grad():
        for p in module.parameters():
            p.add_(torch.randn(p.shape, generator=generator) * std)


def fill_retrieval_memory(bridge, generator: torch.Generator) -> None:
    """Random unit-length keys and K/V-sized values for a RetrievalBridge (training/bridge.py fills real ones)."""
    with torch.no_grad():
        bridge.keys.copy_(torch.nn.functional.normalize(torch.randn(bridge.keys.shape, generator=generator), dim=1))
        bridge.values.copy_(torch.randn(bridge.values.shape, generator=generator))


def tiny_policy(points: bool, seed: int = 0, language_model: str | None = None, text_bridge: str = "linear") -> MoTPolicy:
    """The `tiny` preset (64 px, 2x2 image tokens per camera). points=True: set_target_points("model") and
    prefix_pool 2 (the body attends to one pooled cell per camera), a grounding head with spread-out scores.
    language_model: a (tiny MPNet) folder, bridged to MoT layers of MiniLM's first two layers' shape by a
    `text_bridge` ("linear" projections, or "retrieval" from a 32-token memory on its second layer)."""
    torch.manual_seed(seed)
    bridged = dict(language_model=language_model, language_layers=None, vision_model="minilm", vision_layers=2,
                   text_bridge=text_bridge)
    if text_bridge == "retrieval":
        bridged.update(language_layers=2, bridge_memory=32, bridge_temperature=0.1)
    cfg = PolicyConfig.preset("tiny", prefix_pool=2 if points else 1, **(bridged if language_model else {}))
    policy = MoTPolicy(cfg)
    if language_model and text_bridge == "retrieval":
        fill_retrieval_memory(policy.text_bridge, torch.Generator().manual_seed(seed))
    elif language_model:
        _scramble(policy.text_bridge, torch.Generator().manual_seed(seed), 0.05)
    if points:
        policy.set_target_points("model")
        _scramble(policy.grounding, torch.Generator().manual_seed(seed), 0.5)  # clear winners: no near-tied argmax
    policy.set_delta_action_mask((True,) * 6 + (False,))
    randomize_body(policy)
    rng = np.random.default_rng(seed)
    c = policy.cfg
    points_mean = np.full(c.state_dim - c.robot_state_dim, 0.5)
    points_std = np.full(c.state_dim - c.robot_state_dim, 0.2)
    policy.set_norm_stats(NormStats(
        np.concatenate([rng.normal(0, 0.3, c.robot_state_dim), points_mean]),
        np.concatenate([rng.uniform(0.5, 2.0, c.robot_state_dim), points_std]),
        rng.normal(0, 0.1, c.action_dim), rng.uniform(0.05, 0.5, c.action_dim)))
    return policy.eval()
