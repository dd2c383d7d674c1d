"""Training pairs (LR, HR) for bicubic ×s super-resolution from any folder of HR photos.

Decoding JPEGs and resizing on every iteration would eat the two CPU cores that also
train the model, so :class:`PairPool` prepares every image once:

1. load, and pre-downscale very large photos by an integer factor (2–4×, MATLAB
   bicubic, as DIV2K pipelines do: cleaner, more detailed-per-pixel HR crops);
2. modcrop to a multiple of ``scale`` and make the LR of the *whole* image with MATLAB
   bicubic, quantised to uint8 exactly like the benchmark LR images (so crop borders
   see real neighbours, not mirrored ones);
3. keep both as uint8 tensors (optionally cached in one file, keyed by the file list).

Batches are then aligned random crops (LR ``p×p`` at ``(y, x)`` ↔ HR ``sp×sp`` at
``(sy, sx)``) with a random flip/rot90 applied to both; MATLAB bicubic commutes with
these (symmetric kernel, symmetric sample grid and mirroring) up to the float rounding
of the LR, so augmented pairs remain valid pairs.
"""

from __future__ import annotations

import hashlib
import itertools
import math
import os
import zlib
from dataclasses import dataclass
from typing import Iterator
from pathlib import Path

import torch
from torch import Tensor

from patchscaler.data.images import list_images, load_image, modcrop
from patchscaler.data.resize import bicubic_downscale, imresize, quantize

__all__ = ["PairPool", "RandomCropPairs", "DegradedBatches", "predownscale_factor", "augment", "image_id"]


def predownscale_factor(h: int, w: int, max_side: int = 1600, max_factor: int = 4) -> int:
    """Integer factor that brings the longer side to about ``max_side`` or below (1 = keep)."""
    return int(min(max_factor, max(1, math.ceil(max(h, w) / max_side))))


def augment(lr: Tensor, hr: Tensor, code: int) -> tuple[Tensor, Tensor]:
    """Apply one of the 8 dihedral transforms (``code`` in 0..7) to ``[..., h, w]`` pairs."""
    if code & 1:
        lr, hr = lr.flip(-1), hr.flip(-1)
    if code & 2:
        lr, hr = lr.flip(-2), hr.flip(-2)
    if code & 4:
        lr, hr = lr.transpose(-1, -2), hr.transpose(-1, -2)
    return lr, hr


@dataclass
class _Entry:
    name: str
    hr: Tensor  # uint8 [3, H, W], H, W multiples of scale
    lr: Tensor  # uint8 [3, H/s, W/s]


def _to_uint8(x: Tensor) -> Tensor:
    return (quantize(x) * 255.0).round().to(torch.uint8)


class PairPool:
    """All training images of a folder as aligned uint8 (HR, LR) tensors, ready for cropping.

    Args:
        folder: searched recursively for images (see ``list_images``).
        scale: SR factor (LR = MATLAB bicubic ``1/scale`` of HR).
        min_hr_side: images whose shorter side (after pre-downscaling) is below this are
            skipped (they cannot give a full crop).
        max_side: photos with a longer side above this are pre-downscaled (factor 2–4).
        cache: optional ``.pt`` path; built once, reused while the file list is unchanged.
        log: optional callable for progress lines.
    """

    def __init__(
        self,
        folder: str | os.PathLike,
        scale: int = 4,
        min_hr_side: int = 96,
        max_side: int = 1600,
        cache: str | os.PathLike | None = None,
        log=None,
    ):
        self.scale = scale
        folder = Path(folder)
        paths = list_images(folder)
        if not paths:
            raise FileNotFoundError(f"no images found under {folder}")
        key = hashlib.sha256(
            # Relative names: the same folder reached by another path reuses the cache.
            repr([(p.relative_to(folder).as_posix(), p.stat().st_size) for p in paths] + [scale, max_side]).encode()
        ).hexdigest()[:16]
        entries = None
        if cache is not None and Path(cache).is_file():
            data = torch.load(cache, weights_only=True)
            if data.get("key") == key:
                entries = [_Entry(n, h, l) for n, h, l in zip(data["names"], data["hr"], data["lr"])]
                if log:
                    log(f"pair pool: {len(entries)} images from cache {cache}")
        if entries is None:
            entries = []
            for i, p in enumerate(paths):
                img = load_image(p)
                f = predownscale_factor(img.shape[1], img.shape[2], max_side)
                if f > 1:
                    img = quantize(imresize(modcrop(img, f), 1.0 / f))
                img = modcrop(img, scale)
                if min(img.shape[1:]) < scale:
                    continue
                lr = bicubic_downscale(img, scale)
                entries.append(_Entry(str(p.relative_to(folder)), _to_uint8(img), _to_uint8(lr)))
                if log and (i + 1) % 50 == 0:
                    log(f"pair pool: prepared {i + 1}/{len(paths)} images")
            if cache is not None:
                Path(cache).parent.mkdir(parents=True, exist_ok=True)
                tmp = Path(f"{cache}.{os.getpid()}.tmp")  # several processes may build it at once
                torch.save(
                    {"key": key, "names": [e.name for e in entries], "hr": [e.hr for e in entries],
                     "lr": [e.lr for e in entries]},
                    tmp,
                )
                os.replace(tmp, cache)
        # The cache keeps every image; the size filter applies per use.
        entries = [e for e in entries if min(e.hr.shape[1:]) >= min_hr_side]
        if not entries:
            raise ValueError(f"no image under {folder} is at least {min_hr_side} px on its shorter side")
        self.entries = entries
        self.names = [e.name for e in entries]

    def __len__(self) -> int:
        return len(self.entries)

    def crop_weights(self, lr_patch: int) -> Tensor:
        """Sampling weight of each image ∝ its number of distinct LR crop positions (0 if too small)."""
        w = []
        for e in self.entries:
            h, wd = e.lr.shape[1:]
            w.append(max(0, h - lr_patch + 1) * max(0, wd - lr_patch + 1))
        return torch.tensor(w, dtype=torch.float64)

    def sample_hr(self, batch: int, hr_patch: int, generator: torch.Generator) -> Tensor:
        """Random HR crops ``[B,3,p,p]`` float32 in [0, 1] (for on-the-fly degradation).

        Same draw as :meth:`sample` (image ∝ crop positions, uniform position on the LR
        grid so crops stay scale-aligned, one of 8 flips/rotations); ``hr_patch`` must be
        a multiple of ``scale``.
        """
        s = self.scale
        if hr_patch % s:
            raise ValueError(f"hr_patch {hr_patch} is not a multiple of the scale {s}")
        _, hr = self.sample(batch, hr_patch // s, generator, with_lr=False)
        return hr

    def sample(
        self, batch: int, lr_patch: int, generator: torch.Generator, with_lr: bool = True
    ) -> tuple[Tensor | None, Tensor]:
        """Random aligned crops: ``(lr [B,3,p,p], hr [B,3,sp,sp])`` float32 in [0, 1].

        Images are drawn with probability ∝ crop positions, then a uniform position and
        one of the 8 flips/rotations. Deterministic given ``generator``'s state.
        """
        s = self.scale
        weights = self.crop_weights(lr_patch)
        if weights.sum() == 0:
            raise ValueError(f"no image is large enough for LR patch {lr_patch}")
        idx = torch.multinomial(weights, batch, replacement=True, generator=generator)
        lrs, hrs = [], []
        for i in idx.tolist():
            e = self.entries[i]
            h, w = e.lr.shape[1:]
            y = int(torch.randint(0, h - lr_patch + 1, (1,), generator=generator))
            x = int(torch.randint(0, w - lr_patch + 1, (1,), generator=generator))
            code = int(torch.randint(0, 8, (1,), generator=generator))
            lr = e.lr[:, y : y + lr_patch, x : x + lr_patch]
            hr = e.hr[:, s * y : s * (y + lr_patch), s * x : s * (x + lr_patch)]
            lr, hr = augment(lr, hr, code)
            lrs.append(lr)
            hrs.append(hr)
        hr_batch = torch.stack(hrs).float() / 255.0
        return (torch.stack(lrs).float() / 255.0 if with_lr else None), hr_batch


class RandomCropPairs(torch.utils.data.Dataset):
    """Map-style view of a :class:`PairPool`: item ``i`` is a deterministic random crop.

    ``dataset[i]`` depends only on ``(seed, i)``, so loaders with any number of workers
    or any order give the same pairs. Returns ``(lr [3,p,p], hr [3,sp,sp])`` float32.
    """

    def __init__(self, pool: PairPool, lr_patch: int = 48, length: int = 10_000, seed: int = 0):
        self.pool, self.lr_patch, self.length, self.seed = pool, lr_patch, length, seed

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, i: int) -> tuple[Tensor, Tensor]:
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + i)
        lr, hr = self.pool.sample(1, self.lr_patch, g)
        return lr[0], hr[0]


class DegradedBatches(torch.utils.data.IterableDataset):
    """An endless stream of ``(lr [B,3,p,p], hr [B,3,sp,sp])`` real-degradation training batches.

    Batch ``k`` is a function of ``(seed, k)`` only (its own generator draws the HR crops
    and then the degradation), so a run resumed at step ``k`` sees exactly the batches
    it would have seen, and ``DataLoader`` workers can prepare them beside the training
    process without sharing any random state with it: worker ``w`` of ``W`` makes the
    batches ``k ≡ start + w (mod W)``, which the DataLoader hands out in order.
    """

    def __init__(self, pool: PairPool, lr_patch: int, batch: int, seed: int = 0, start: int = 0, config=None):
        from patchscaler.data.degradations import DegradationConfig

        self.pool, self.lr_patch, self.batch, self.seed, self.start = pool, lr_patch, batch, seed, start
        self.config = config or DegradationConfig(scale=pool.scale)

    def batch_at(self, k: int) -> tuple[Tensor, Tensor]:
        from patchscaler.data.degradations import degrade

        g = torch.Generator().manual_seed(self.seed * 1_000_003 + k)
        hr = self.pool.sample_hr(self.batch, self.lr_patch * self.pool.scale, g)
        return degrade(hr, self.config, g), hr

    def __iter__(self):
        return (self.batch_at(k) for k in worker_batch_indices(self.start))


def worker_batch_indices(start: int) -> Iterator[int]:
    """The batch indices ``start, start+1, ...`` that fall to this DataLoader worker: worker
    ``w`` of ``W`` takes ``k ≡ start + w (mod W)`` (all of them outside a worker). A DataLoader
    collects from its workers in turn, so an endless stream whose batch ``k`` depends on
    ``k`` alone comes out in order, with no batch repeated, whatever the number of workers."""
    info = torch.utils.data.get_worker_info()
    w, n = (info.id, info.num_workers) if info is not None else (0, 1)
    return itertools.count(start + w, n)


def image_id(relative_path: str | os.PathLike) -> int:
    """Stable int id of a training image from its path relative to the data root (CRC32, POSIX
    separators): what the texture memory stores per entry, so the DiT is never shown its own photo."""
    return zlib.crc32(Path(relative_path).as_posix().encode("utf-8"))
