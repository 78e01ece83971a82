"""Pointing: which image tokens show the instruction's object and pad, and where in the image they are.

The align stage trains `GroundingHead` on the vision expert's final image-token states (training/train.py);
`pointed_uv` turns its token scores and in-cell offsets into image points, the (u, v) layout of a policy's
target points (PolicyConfig.target_points, training/data.py `target_point_vector`): object per camera,
then pad per camera.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file
from torch import nn

from policy.artifacts import atomic_directory, sha256_file
from policy.checkpoint import (FORMAT, check_pretrained, expected_keys, load_weights, pack_weights,
                               pretrained_sources, read_manifest, stored_keys, verify_checkpoint, load_checkpoint)
from policy.config import PolicyConfig
from policy.errors import CheckpointError, InputError
from policy.model import MoTPolicy


POINTER_FORMAT = "mot-pointer/1"
POINTER_FILES = ("model.safetensors", "config.json")


def _pointing_key(key: str) -> bool:
    """State-dict keys of the image path a pointer runs: image embedding and vision expert (not the body's)."""
    return key.startswith("image_embed.") or (key.startswith("layers.") and key.split(".")[2] == "vision")


class GroundingHead(nn.Module):
    """Which image tokens show the instruction's object / pad, and where on the table they are.

    A score per image token and target (object, pad) pools the final image-token states (softmax over
    tokens); an MLP per target reads (x, y) in decimetres from its pool. Image tokens attend to the
    instruction (block-wise mask), so a token can only score high for the object the words name.
    Where the data says which cells show the object (SceneTrack pixels), the scores are supervised
    directly: one label per token instead of one number per image, and the token that shows the
    object must also say where in its cell it is (`offset`): a cell of the front camera spans several
    centimetres of table, so without it the image tokens need not carry the object's position any finer.
    Kept in the align run's train_state.pt, where `Pointer.from_align_run` reads it.
    """

    def __init__(self, width: int):
        super().__init__()
        self.score = nn.Linear(width, 2)
        self.offset = nn.Linear(width, 4)  # (object, pad) x (du, dv), in cells from the cell's centre
        self.xy = nn.ModuleList([nn.Sequential(nn.Linear(width, 256), nn.GELU(), nn.Linear(256, 2)) for _ in range(2)])

    def forward(self, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """h (B, N, W) -> token scores (B, N, 2), token offsets (B, N, 2, 2), (object xy, pad xy) (B, 4)."""
        scores = self.score(h)
        pooled = torch.einsum("bnk,bnw->bkw", torch.softmax(scores, dim=1), h)
        offsets = self.offset(h).unflatten(-1, (2, 2))
        return scores, offsets, torch.cat([mlp(pooled[:, k]) for k, mlp in enumerate(self.xy)], dim=1)


def pointed_uv(scores: torch.Tensor, offsets: torch.Tensor | None, cameras: int, grid: int) -> torch.Tensor:
    """Token scores (B, cams * grid^2, 2) and in-cell offsets (B, N, 2, 2) in cells (None: cell centres) ->
    target points (B, 4 * cams): (u, v) in [0, 1] of the object per camera, then of the pad per camera.

    Per camera and target, the top-scored token of that camera (token order: camera, row, column) and
    its offset: a hard choice, not a softmax average, which would put a point between two candidate
    objects. Tokens are scored jointly over cameras in training, so a camera that does not show the
    target still names its best guess; clipping keeps offsets inside the image.
    """
    b, n, _ = scores.shape
    if n != cameras * grid * grid:
        raise InputError(f"scores: expected {cameras} x {grid}x{grid} = {cameras * grid * grid} image tokens, "
                         f"received {n}")
    points = []
    for k in range(2):  # object, pad
        best = scores[..., k].reshape(b, cameras, grid * grid).argmax(dim=-1)  # (B, cams): token within its camera
        uv = torch.stack([best % grid, best // grid], dim=-1).float() + 0.5  # (B, cams, 2): (column, row) in cells
        if offsets is not None:
            token = best + torch.arange(cameras) * grid * grid  # (B, cams): index among all N image tokens
            uv = uv + torch.gather(offsets[:, :, k], 1, token[..., None].expand(-1, -1, 2))
        points.append((uv / grid).clamp(0.0, 1.0).reshape(b, 2 * cameras))
    return torch.cat(points, dim=1)


class Pointer:
    """Target points for a policy with `target_points` from an align run's own model: its vision expert and
    grounding head on the current images and words (what a robot, with no simulator to ask, can hand the
    body). It is a model of its own, so it need not be the align run the body's prefix came from (e.g. 8x8
    image tokens to point with, 4x4 in the body's prefix). Align runs from before the head's in-cell
    offsets point at cell centres.

        pointer = Pointer.from_align_run("runs/align_s16", cameras=("front", "wrist"))
        points = pointer(images, "pick up the red cube")   # float32 (4 * cameras,)
    """

    def __init__(self, model: MoTPolicy, head: GroundingHead, use_offsets: bool, source: str):
        self.model, self.head, self.use_offsets, self.source = model.eval(), head.eval(), use_offsets, source
        self._text: tuple[str, object] | None = None  # (instruction, its text K/V): the words stay while images change

    @classmethod
    def from_align_run(cls, align_run: str | Path, cameras: tuple[str, ...] | list[str]) -> "Pointer":
        path = Path(align_run) / "train_state.pt"
        if not path.is_file():
            raise CheckpointError(f"points_from: expected an align run directory with train_state.pt, {path} is missing")
        state = torch.load(path, map_location="cpu", weights_only=True)
        if state["config"]["stage"] != "align":
            raise InputError(f"points_from: expected an align run, {align_run} ran stage {state['config']['stage']!r}")
        model = load_checkpoint(Path(align_run) / "checkpoint")
        if list(model.cfg.cameras) != list(cameras):
            raise InputError(f"points_from: expected an align run with the policy's cameras {list(cameras)}, "
                             f"{align_run} has {list(model.cfg.cameras)}")
        params = {**state["params"], **(state["ema"] or {})}  # its checkpoint carries the EMA, when there is one
        head = GroundingHead(model.dims.width)
        missing = head.load_state_dict({k.removeprefix("head."): v for k, v in params.items() if k.startswith("head.")},
                                       strict=False).missing_keys
        return cls(model, head, not any(k.startswith("offset.") for k in missing), str(align_run))

    @classmethod
    def for_checkpoint(cls, align_run: str | Path, checkpoint: str | Path) -> "Pointer":
        """`from_align_run` with the cameras of the policy checkpoint it will feed."""
        cfg = PolicyConfig.from_json(Path(checkpoint) / "config.json")
        return cls.from_align_run(align_run, cfg.cameras)

    @classmethod
    def resolve(cls, align_run: str | Path | None, checkpoint: str | Path) -> "Pointer | None":
        """What feeds a checkpoint's target points: the align run named (--points-from), else the pointer the
        checkpoint bundles (`mot pack --pointer`), else None."""
        return cls.for_checkpoint(align_run, checkpoint) if align_run else cls.bundled(checkpoint)

    # -- a pointer bundled in a policy checkpoint (checkpoint/pointer, written by `mot pack`) -------------------
    def save(self, directory: str | Path, dtype: torch.dtype = torch.float32) -> Path:
        """Atomic directory with what pointing needs and nothing else: the image embedding, the vision expert's
        own tensors (those still equal to their language copy are rebuilt on load, as in a checkpoint), the
        grounding head; config.json is the align model's; manifest.json as policy/checkpoint.py's."""
        keys, inherited = stored_keys(self.model)
        weights = {k: v for k, v in self.model.state_dict().items() if k in keys and _pointing_key(k)}
        weights.update({f"head.{k}": v for k, v in self.head.state_dict().items()})
        stored, quantized = pack_weights(weights, dtype)

        def write(tmp: Path) -> None:
            save_file(stored, str(tmp / "model.safetensors"))
            (tmp / "config.json").write_text(json.dumps(self.model.cfg.to_dict(), indent=2))
            manifest = {"format": POINTER_FORMAT, "policy_format": FORMAT,
                        "files": {name: sha256_file(tmp / name) for name in POINTER_FILES},
                        "pretrained": pretrained_sources(self.model), "inherited": inherited, "dtype": str(dtype),
                        "int8": quantized, "offsets": self.use_offsets, "source": self.source}
            (tmp / "manifest.json").write_text(json.dumps(manifest, indent=2))

        return atomic_directory(directory, write)

    @classmethod
    def load(cls, directory: str | Path) -> "Pointer":
        """A directory `save` wrote, verified like a checkpoint (sha256 of each file, pretrained sources)."""
        directory = Path(directory)
        manifest = read_manifest(directory, POINTER_FORMAT, POINTER_FILES)
        model = MoTPolicy(PolicyConfig.from_json(directory / "config.json"))
        check_pretrained(model, manifest)
        head = GroundingHead(model.dims.width)
        keys = expected_keys(model, manifest)  # the inherited vision tensors: the language copies MoTPolicy starts with
        own = {k: v for k, v in model.state_dict().items() if k in keys and _pointing_key(k)}
        own.update({f"head.{k}": v for k, v in head.state_dict().items()})
        weights = load_weights(directory, manifest, set(own), own)
        with torch.no_grad():
            model.load_state_dict({k: v for k, v in weights.items() if not k.startswith("head.")}, strict=False)
            head.load_state_dict({k.removeprefix("head."): v for k, v in weights.items() if k.startswith("head.")})
        return cls(model, head, bool(manifest["offsets"]), f"{manifest['source']} (bundled in {directory.parent})")

    @classmethod
    def bundled(cls, checkpoint: str | Path) -> "Pointer | None":
        """The pointer a checkpoint bundles (its manifest names it), for the checkpoint's cameras; None if none."""
        checkpoint = Path(checkpoint)
        if "pointer" not in verify_checkpoint(checkpoint):
            return None
        cfg = PolicyConfig.from_json(checkpoint / "config.json")
        pointer = cls.load(checkpoint / "pointer")
        if list(pointer.model.cfg.cameras) != list(cfg.cameras):
            raise CheckpointError(f"pointer: expected the policy's cameras {list(cfg.cameras)}, the pointer bundled in "
                             f"{checkpoint} has {list(pointer.model.cfg.cameras)}")
        return pointer

    @torch.no_grad()
    def __call__(self, images: dict[str, np.ndarray], instruction: str) -> np.ndarray:
        """{camera: uint8 (H, W, 3)}, instruction -> float32 (4 * cameras,) target points."""
        frames = torch.from_numpy(np.stack([np.asarray(images[c]) for c in self.model.cfg.cameras])[None])
        if self._text is None or self._text[0] != instruction:
            self._text = (instruction, self.model.encode_text(*self.model.tokenizer([instruction])))
        return self.batch(frames, [instruction], self._text[1])[0]

    @torch.no_grad()
    def batch(self, frames: torch.Tensor, instructions: list[str], text=None) -> np.ndarray:
        """uint8 (B, cameras, H, W, 3) in the model's camera order, B instructions (or their encoded `text`
        prefix) -> float32 (B, 4 * cameras) target points."""
        cfg = self.model.cfg
        text = text if text is not None else self.model.encode_text(*self.model.tokenizer(instructions))
        _, hidden = self.model.encode_images(frames, text, return_hidden=True)
        scores, offsets, _ = self.head(hidden)
        uv = pointed_uv(scores, offsets if self.use_offsets else None, len(cfg.cameras), cfg.feature_grid)
        return uv.numpy().astype(np.float32)

    def fingerprint(self) -> str:
        """sha256 of everything the points depend on: the config and every tensor (the frozen experts' too)."""
        h = hashlib.sha256(json.dumps([self.model.cfg.to_dict(), self.use_offsets]).encode())
        tensors = {**self.model.state_dict(), **{f"head.{k}": v for k, v in self.head.state_dict().items()}}
        for name in sorted(tensors):
            h.update(name.encode())
            h.update(tensors[name].detach().float().contiguous().numpy().tobytes())
        return h.hexdigest()
