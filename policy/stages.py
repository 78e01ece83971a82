"""What trains in each stage of MoTPolicy, and its parameters per expert (a mixin of policy/model.py).

    align:  image projection + vision expert + grounding head learn to point at what the words name
    policy: the body (state/action/time modules + body expert) learns flow matching; the prefix is frozen

The language expert and the image trunk never train (in MoT routing); the mixin reads MoTPolicy's
modules (`layers`, `route`, `image_embed`, `grounding`, the body's projections).
"""

from __future__ import annotations

from torch import nn

from policy.config import STAGES
from policy.errors import InputError


class TrainingStages:
    def set_stage(self, stage: str, *, train_vision: bool = False) -> None:
        """Chooses what trains. Language and the image trunk never do (in MoT routing).

        align:  image projection + vision expert (grounding); everything else frozen.
        policy: body expert + state/action/time modules; vision frozen unless `train_vision` (ablation).
        Dense routing has one shared expert, which then trains with the body in "policy".
        """
        if stage not in STAGES:
            raise InputError(f"stage: expected one of {STAGES}, received {stage!r}")
        self.stage = stage
        self.requires_grad_(False)
        vision = [self.image_embed, self.grounding] + [layer[self.route["image"]] for layer in self.layers]
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
                layer["language"].requires_grad_(False)

    def prefix_trainable(self) -> bool:
        """True when any parameter reached by the text/image passes is trainable (align, ablations)."""
        modules = [self.image_embed, self.text_embed, self.grounding] + [layer[self.route[m]] for layer in self.layers
                                                          for m in ("text", "image")]
        return any(p.requires_grad for m in modules for p in m.parameters())

    def num_parameters(self) -> dict[str, dict[str, int]]:
        """Parameters per expert/module group: {"language": {"total": n, "trainable": m}, ...}."""
        groups: dict[str, list[nn.Parameter]] = {}
        for name, p in self.named_parameters():
            if name.startswith("layers."):
                key = name.split(".")[2]
            elif name.startswith(("text_embed",)):
                key = "language"
            elif name.startswith("trunk"):
                key = "vision_trunk"
            elif name.startswith(("image_embed", "grounding")):
                key = "vision"  # the image projection and the grounding head train with the vision expert
            else:
                key = "body"
            groups.setdefault(key, []).append(p)
        return {k: {"total": sum(p.numel() for p in ps), "trainable": sum(p.numel() for p in ps if p.requires_grad)}
                for k, ps in groups.items()}
