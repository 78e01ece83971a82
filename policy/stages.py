"""What trains in each stage of MoTPolicy, and its parameters per expert (a mixin of policy/model.py).

    align:  image projection + vision expert + grounding head learn to point at what the words name
    policy: the body (state/action/time modules + body expert) learns flow matching; the prefix is frozen

The language expert and the image trunk never train (in MoT routing); the mixin reads MoTPolicy's
modules (`layers`, `route`, `image_embed`, `grounding`, the body's projections).
"""

from __future__ import annotations

import dataclasses

import torch
from torch import nn

from policy.config import STAGES
from policy.errors import InputError
from policy.normalize import NormStats


class TrainingStages:
    def set_delta_action_mask(self, mask: tuple[bool, ...] | None) -> None:
        """Choose which action dimensions are predicted relative to the state (before the body trains)."""
        self.cfg = dataclasses.replace(self.cfg, delta_action_mask=mask)  # validates
        self.delta_mask = torch.tensor(self.cfg.delta_action_mask or (False,) * self.cfg.action_dim,
                                       dtype=torch.float32)

    def set_target_points(self, source: str) -> None:
        """Widen the state by `cfg.target_point_dim` target-point entries (config.target_points) before the
        body trains: a new state projection and identity norm stats (the caller sets real ones)."""
        if self.cfg.target_points is not None:
            raise InputError(f"target_points: this policy already has them (source {self.cfg.target_points!r})")
        self.cfg = dataclasses.replace(self.cfg, target_points=source)  # validates the source
        self.cfg = dataclasses.replace(self.cfg, state_dim=self.cfg.state_dim + self.cfg.target_point_dim)
        self.state_in = nn.Linear(self.cfg.state_dim, self.state_in.out_features)
        self.set_norm_stats(NormStats.identity(self.cfg.state_dim, self.cfg.action_dim))
        self.set_stage(self.stage)


    def set_stage(self, stage: str, *, train_vision: bool = False, only_bridge: bool = False) -> None:
        """Chooses what trains. Language and the image trunk never do (in MoT routing).

        align:  image projection + vision expert (grounding), and the text bridge when bridged; everything else
                frozen. only_bridge: the bridge alone (a `mot bridge-language` policy learns to point with its new
                language expert while the image K/V its body was trained on stay what they were).
        policy: body expert + state/action/time modules; vision frozen unless `train_vision` (ablation).
        Dense routing has one shared expert, which then trains with the body in "policy".
        """
        if stage not in STAGES:
            raise InputError(f"stage: expected one of {STAGES}, received {stage!r}")
        if only_bridge and (stage != "align" or not self.cfg.bridged or self.cfg.text_bridge != "linear"):
            raise InputError(f"only_bridge: needs stage 'align' and a linear text bridge (vision_model set; a retrieval "
                             f"bridge has nothing to train), received stage {stage!r} with vision_model="
                             f"{self.cfg.vision_model!r} text_bridge={self.cfg.text_bridge!r}")
        self.stage = stage
        self.requires_grad_(False)
        if only_bridge:
            self.text_bridge.requires_grad_(True)
            return
        vision = [self.image_embed, self.grounding] + [layer[self.route["image"]] for layer in self.layers]
        if self.cfg.bridged:  # the bridge is how the vision expert reads the words: it aligns with it
            vision.append(self.text_bridge)
        body = [self.state_in, self.action_in, self.time_mlp, self.action_norm, self.action_out]
        body += [layer[self.route["body"]] for layer in self.layers]
        if stage == "align" or train_vision:
            for module in vision:
                module.requires_grad_(True)
            if self.cfg.vision_trainable == "attention" and self.cfg.routing == "mot":
                for layer in self.layers:  # the FFN stays the language expert's copy
                    for ffn in (layer["vision"].ffn_in, layer["vision"].ffn_out, layer["vision"].ffn_norm):
                        ffn.requires_grad_(False)
        if stage == "policy":
            for module in body:
                module.requires_grad_(True)
            self.action_pos.requires_grad_(True)
            self.state_cond.requires_grad_(True)
        if self.cfg.routing == "mot":  # the language expert is frozen by construction
            for layer in self.layers:
                if "language" in layer:
                    layer["language"].requires_grad_(False)

    def prefix_trainable(self) -> bool:
        """True when any parameter reached by the text/image passes is trainable (align, ablations)."""
        routed = [self.route[m] for m in ("text", "image") if self.route[m] is not None]
        modules = [self.image_embed, self.grounding] + [layer[r] for layer in self.layers for r in routed]
        modules += [self.text_embed] if self.text_embed is not None else [self.language, self.text_bridge]
        return any(p.requires_grad for m in modules for p in m.parameters())

    def num_parameters(self) -> dict[str, dict[str, int]]:
        """Parameters per expert/module group: {"language": {"total": n, "trainable": m}, ...}."""
        groups: dict[str, list[nn.Parameter]] = {}
        for name, p in self.named_parameters():
            if name.startswith("layers."):
                key = name.split(".")[2]
            elif name.startswith(("text_embed", "language.")):
                key = "language"
            elif name.startswith("text_bridge"):
                key = "language_bridge"
            elif name.startswith("trunk"):
                key = "vision_trunk"
            elif name.startswith(("image_embed", "grounding")):
                key = "vision"  # the image projection and the grounding head train with the vision expert
            else:
                key = "body"
            groups.setdefault(key, []).append(p)
        return {k: {"total": sum(p.numel() for p in ps), "trainable": sum(p.numel() for p in ps if p.requires_grad)}
                for k, ps in groups.items()}
