"""A memory budget (``--max-memory`` / ``upscale(memory_budget=...)``) turned into the
pipeline's chunk sizes: patches per Patch-DiT call, the GRM's tile side and the band size.

The budget is split in three equal shares, one per stage, each divided by that
stage's cost per unit of work in float32 (estimates, rounded up):

* a **band** (`patchscaler.inference.band_plan`): ~1.3 kB per LR pixel (its latent patches, noise,
  sampler state and texture prompts, overlap included);
* a **GRM tile**: ~3 kB per LR pixel (the shipped GRM's widest layers, 192 channels,
  input and output alive at once);
* a **Patch-DiT call**: ~1 MB per 16×16 patch (activations of the shipped 11M-parameter
  DiT; an estimate, not measured on a GPU yet).

The budget bounds what the pipeline asks for, not what the allocator keeps; on a CUDA
out-of-memory error the samplers halve the DiT chunk and the GRM its tile, and retry
that step only (`patchscaler.sampling.engine`, `patchscaler.inference.pipeline`).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

__all__ = ["MIN_BUDGET", "ChunkSizes", "chunk_sizes", "parse_memory"]

BAND_BYTES_PER_LR_PIXEL = 1300
GRM_BYTES_PER_LR_PIXEL = 3000
DIT_BYTES_PER_PATCH = 1 << 20
MIN_GRM_TILE = 64  # > 2·grm_context + 8 for GRMs of up to 23 blocks (`GRMConfig.receptive_radius`)
MIN_BUDGET = 64 << 20  # below this even the smallest chunks do not fit

_UNITS = {"": 1, "B": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}


@dataclass(frozen=True)
class ChunkSizes:
    """max_batch_patches: patches per Patch-DiT call; grm_tile: LR tile side;
    band_lr_pixels: LR pixels per band (``max_lr_pixels_per_run`` of the pipeline)."""

    max_batch_patches: int
    grm_tile: int
    band_lr_pixels: int


def parse_memory(value: object, name: str = "memory_budget") -> int:
    """Bytes from an int (bytes) or a string like ``"6G"``, ``"512M"``, ``"1.5GiB"``,
    ``"2GB"`` (binary units); ValueError with one line for anything else or below `MIN_BUDGET`."""
    if isinstance(value, bool):
        raise ValueError(f"{name} must be a size like 6G or 512M, or a number of bytes, got {value!r}")
    if isinstance(value, (int, float)):
        size = float(value)
    elif isinstance(value, str):
        m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([KMGT]?)(?:I?B)?\s*", value.upper())
        if m is None:
            raise ValueError(f"{name} must be a size like 6G or 512M, or a number of bytes, got {value!r}")
        size = float(m.group(1)) * _UNITS[m.group(2)]
    else:
        raise ValueError(f"{name} must be a size like 6G or 512M, or a number of bytes, got {value!r}")
    if not math.isfinite(size) or size < MIN_BUDGET:
        raise ValueError(f"{name} must be at least {MIN_BUDGET >> 20}M, got {value!r}")
    return int(size)


def chunk_sizes(budget: int) -> ChunkSizes:
    """The chunk sizes for ``budget`` bytes (module docstring for the split)."""
    share = budget / 3
    return ChunkSizes(
        max_batch_patches=max(1, int(share // DIT_BYTES_PER_PATCH)),
        grm_tile=max(MIN_GRM_TILE, math.isqrt(int(share // GRM_BYTES_PER_LR_PIXEL))),
        band_lr_pixels=max(1, int(share // BAND_BYTES_PER_LR_PIXEL)),
    )
