"""Cached frozen prefix for the policy stage: text K/V per episode, image K/V per training frame.

In the policy stage the language and vision experts are frozen, so the K/V that the body expert
attends to are a fixed function of (instruction, frames). Computing them once turns a training step
into the body expert alone. Stored as float16 (the body still trains in float32):

    text:   per episode  (layers, 2, heads, L_text, head_dim)
    images: per frame    (layers, 2, heads, N_image, head_dim)

Image K/V do not depend on the text padding: padded text keys are masked out of every attention.
"""

from __future__ import annotations

import numpy as np
import torch
from tqdm import tqdm

from policy import MoTPolicy
from policy.inputs import validate_batch
from policy.model import Prefix
from training.data import ChunkDataset


def cache_bytes(policy: MoTPolicy, frames: int) -> int:
    d = policy.dims
    return frames * len(policy.layers) * 2 * d.heads * policy.cfg.image_tokens * d.head_dim * 2


class PrefixCache:
    def __init__(self, policy: MoTPolicy, data: ChunkDataset, batch_size: int = 64, progress: bool = True):
        if policy.prefix_trainable():
            raise ValueError("prefix cache: expected a frozen text/image path (policy stage), but it trains")
        if policy.cfg.prefix_mask != "blockwise":
            raise ValueError("prefix cache: expected prefix_mask 'blockwise' (text K/V independent of images), "
                             f"received {policy.cfg.prefix_mask!r}")
        self.text: list[torch.Tensor] = []
        with torch.no_grad():
            for ep in data.episodes:
                text = policy.encode_text(*policy.tokenizer([ep.instruction]))
                self.text.append(text.kv[:, :, 0].half())  # (layers, 2, heads, L, head_dim)
            n = len(data)
            d = policy.dims
            self.images = torch.empty((n, len(policy.layers), 2, d.heads, policy.cfg.image_tokens, d.head_dim),
                                      dtype=torch.float16)
            for start in tqdm(range(0, n, batch_size), desc="cache prefix", unit="batch", disable=not progress):
                idx = np.arange(start, min(n, start + batch_size))
                obs = validate_batch(data.batch(idx), policy.cfg)
                text = policy.encode_text(*policy.tokenizer(obs.instruction))
                kv = policy.encode_images(obs.images, text).kv[..., text.kv.shape[4]:, :]
                self.images[idx] = kv.permute(2, 0, 1, 3, 4, 5).half()
        self.episode_of = torch.from_numpy(data.index[:, 0])

    def prefix(self, indices: np.ndarray) -> Prefix:
        """Dataset sample indices (B,) -> Prefix over [text (padded to the longest) | images], float32."""
        texts = [self.text[int(e)] for e in self.episode_of[indices]]
        longest = max(t.shape[3] for t in texts)
        b = len(indices)
        layers, _, heads, _, head_dim = texts[0].shape
        text_kv = torch.zeros((b, layers, 2, heads, longest, head_dim), dtype=torch.float16)
        valid = torch.zeros((b, longest), dtype=torch.bool)
        for i, t in enumerate(texts):
            text_kv[i, ..., : t.shape[3], :] = t
            valid[i, : t.shape[3]] = True
        images = self.images[torch.as_tensor(indices)]
        kv = torch.cat([text_kv, images], dim=4).permute(1, 2, 0, 3, 4, 5).float()
        valid = torch.cat([valid, torch.ones((b, images.shape[4]), dtype=torch.bool)], dim=1)
        return Prefix(kv.contiguous(), valid)
