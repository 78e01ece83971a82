"""Cached frozen prefix for the policy stage: text K/V per episode, image K/V per training frame.

In the policy stage the language and vision experts are frozen, so the K/V that the body expert
attends to are a fixed function of (instruction, frames). Computing them once turns a training step
into the body expert alone. Stored as float16 (the body still trains in float32):

    text:   per episode  (layers, 2, heads, L_text, head_dim)
    images: per frame    (layers, 2, heads, N_image, head_dim), N_image = cfg.body_image_tokens: the pooled
                         grid the body attends to (prefix_pool), not every token the vision expert ran

Image K/V do not depend on the text padding: padded text keys are masked out of every attention.

Building it costs about as much as a few thousand training steps, so `PrefixCache.load_or_build` keeps it
on disk under a key that hashes everything the K/V are a function of (the policy config, the frozen
weights, the instructions and the JPEG bytes of every frame): `--resume` and a second policy run on the
same data and align checkpoint load it in seconds; anything else gets a new key and a fresh build.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import weakref
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from policy import MoTPolicy
from policy.inputs import validate_batch
from policy.model import Prefix
from training.data import ChunkDataset


def cache_bytes(policy: MoTPolicy, frames: int) -> int:
    d = policy.dims
    return frames * len(policy.layers) * 2 * d.heads * policy.cfg.body_image_tokens * d.head_dim * 2


# Config fields of the body expert and the action space: the text/image K/V do not depend on them, so
# policies that differ only there (another horizon, target points) share one cache.
BODY_FIELDS = ("state_dim", "action_dim", "horizon", "delta_action_mask", "body_width", "body_mlp_ratio",
               "time_embed_dim", "target_points", "num_inference_steps", "time_beta_alpha", "time_beta_beta")


def cache_key(policy: MoTPolicy, data: ChunkDataset) -> str:
    """sha256 over what the cached K/V depend on: config (less BODY_FIELDS), frozen (prefix) weights,
    instructions, frames."""
    prefix_cfg = {k: v for k, v in policy.cfg.to_dict().items() if k not in BODY_FIELDS}
    h = hashlib.sha256(json.dumps(prefix_cfg, sort_keys=True).encode())
    for name, p in policy.named_parameters():
        if not p.requires_grad:  # the frozen experts; the body trains and never enters the prefix
            h.update(name.encode())
            h.update(p.detach().cpu().contiguous().numpy().tobytes())
    hash_frames(h, data)
    return h.hexdigest()


def hash_frames(h, data: ChunkDataset) -> None:
    """Feeds `h` (a hashlib object) the dataset's size, cameras, instructions and JPEG bytes of every frame."""
    h.update(json.dumps([len(data), list(data.cameras)]).encode())
    for ep in data.episodes:
        h.update(ep.instruction.encode() + b"\0")
        for cam in data.cameras:
            for blob in ep.frames[cam]:
                h.update(blob)


class PrefixCache:
    @classmethod
    def load_or_build(cls, policy: MoTPolicy, data: ChunkDataset, directory: str | Path,
                      progress: bool = True) -> tuple["PrefixCache", bool]:
        """The cache for (policy, data) from `directory/<key>/` if there, else built and saved there.

        Returns (cache, loaded). Saving writes a temporary folder and renames it: a kill mid-save leaves
        no half cache; two processes (DDP ranks) that both build it keep whichever finished first.
        """
        key = cache_key(policy, data)
        final = Path(directory) / key
        if (final / "images.npy").is_file():
            return cls.from_dir(final, data), True
        final.parent.mkdir(parents=True, exist_ok=True)
        tmp = final.parent / f".{key}.{os.getpid()}.tmp"
        shutil.rmtree(tmp, ignore_errors=True)  # a kill left it half written
        tmp.mkdir()
        # Built straight into a file-backed array: a large dataset's cache may not fit in RAM next to the
        # trainer, and the page cache keeps what fits warm anyway.
        cls(policy, data, progress=progress, images_file=tmp / "images.npy")
        try:
            os.rename(tmp, final)
        except OSError:  # another process saved the same key first: theirs is identical
            shutil.rmtree(tmp, ignore_errors=True)
        return cls.from_dir(final, data), False

    @classmethod
    def from_dir(cls, path: Path, data: ChunkDataset) -> "PrefixCache":
        """Memory-mapped read-only: frames are read from disk as batches need them. (Not copy-on-write: a
        private writable mapping counts in full against the kernel's commit limit, so a cache larger than
        RAM, e.g. 37 GiB of 8x8 image tokens, would fail to map.)"""
        cache = cls.__new__(cls)
        cache.text = torch.load(path / "text.pt", weights_only=True)
        cache.images = np.load(path / "images.npy", mmap_mode="r")
        # Batches read their frames with pread, and the kernel is told not to read ahead: a frame is one
        # contiguous ~0.3-1.2 MB row at a random place, and read through the map, readahead pulls in
        # bytes no batch asked for once the file outgrows the page cache.
        cache._fd = os.open(path / "images.npy", os.O_RDONLY)
        os.posix_fadvise(cache._fd, 0, 0, os.POSIX_FADV_RANDOM)
        weakref.finalize(cache, os.close, cache._fd)
        if len(cache.images) != len(data) or len(cache.text) != len(data.episodes):
            raise ValueError(f"prefix cache {path}: expected {len(data)} frames of {len(data.episodes)} episodes, "
                             f"received {len(cache.images)} frames of {len(cache.text)}")
        cache.episode_of = torch.from_numpy(data.index[:, 0])
        return cache

    def __init__(self, policy: MoTPolicy, data: ChunkDataset, batch_size: int = 64, progress: bool = True,
                 images_file: Path | None = None):
        """Computes the cache; with `images_file` the image K/V are written to that .npy (see load_or_build)."""
        if policy.prefix_trainable():
            raise ValueError("prefix cache: expected a frozen text/image path (policy stage), but it trains")
        if policy.cfg.prefix_mask != "blockwise":
            raise ValueError("prefix cache: expected prefix_mask 'blockwise' (text K/V independent of images), "
                             f"received {policy.cfg.prefix_mask!r}")
        self.text: list[torch.Tensor] = []
        self._fd = None  # in memory (from_dir opens the file on disk instead)
        with torch.no_grad():
            for ep in data.episodes:
                text = policy.encode_text(*policy.tokenizer([ep.instruction]))
                self.text.append(text.kv[:, :, 0].half())  # (layers, 2, heads, L, head_dim)
            n = len(data)
            d = policy.dims
            shape = (n, len(policy.layers), 2, d.heads, policy.cfg.body_image_tokens, d.head_dim)
            mapped = None if images_file is None else np.lib.format.open_memmap(images_file, "w+", np.float16, shape)
            self.images = np.empty(shape, dtype=np.float16) if mapped is None else mapped  # (N, layers, 2, heads, L_img, hd)
            for start in tqdm(range(0, n, batch_size), desc="cache prefix", unit="batch", disable=not progress):
                idx = np.arange(start, min(n, start + batch_size))
                obs = validate_batch(data.batch(idx), policy.cfg, state_dim=policy.cfg.state_dim)  # sim points in
                text = policy.encode_text(*policy.tokenizer(obs.instruction))
                kv = policy.encode_images(obs.images, text).kv[..., text.kv.shape[4]:, :]
                self.images[idx] = kv.permute(2, 0, 1, 3, 4, 5).half().numpy()
        if mapped is not None:
            mapped.flush()  # on disk before the folder is renamed into place
            torch.save(self.text, images_file.parent / "text.pt")
        self.episode_of = torch.from_numpy(data.index[:, 0])

    def image_rows(self, indices: np.ndarray) -> np.ndarray:
        """Image K/V of dataset samples (B,) -> (B, layers, 2, heads, N_image, head_dim) float16."""
        if self._fd is None:  # built in memory
            return self.images[indices]
        out = np.empty((len(indices),) + self.images.shape[1:], np.float16)
        row = out[0].nbytes
        buf = memoryview(out).cast("B")
        for i, j in enumerate(indices):
            got = os.preadv(self._fd, [buf[i * row:(i + 1) * row]], self.images.offset + int(j) * row)
            if got != row:
                raise OSError(f"prefix cache: frame {int(j)}: expected {row} bytes, read {got} (truncated file?)")
        return out

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
        images = torch.from_numpy(self.image_rows(np.asarray(indices)))
        kv = torch.cat([text_kv, images], dim=4).permute(1, 2, 0, 3, 4, 5).float()
        valid = torch.cat([valid, torch.ones((b, images.shape[4]), dtype=torch.bool)], dim=1)
        return Prefix(kv.contiguous(), valid)
