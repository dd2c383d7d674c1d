"""What the sampler did to each image: `GroupMap` (``upscale(..., return_groups=True)``)
and the per-pixel group picture `patchscaler.imaging.visualize` draws."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from patchscaler.inference.patch_plan import PatchPlan
from patchscaler.sampling.pgs import GROUP_NAMES

__all__ = ["GROUP_NAMES", "GroupMap", "group_pixels"]


@dataclass
class GroupMap:
    """What the sampler did to one image (``return_groups=True``).

    Coordinates are latent pixels, which at ×s are LR pixels (one latent pixel = an
    s×s HR block). Patches are ``patch_size`` a side, top-left at ``origins``.

    sampler: the sampler's registered name ("pgs", "uniform", "ddim", ..., "none").
    scale: the upscaling factor s.
    patch_size: latent patch side (pixels).
    origins: ``[P, 2]`` int64 (y, x) of each patch in the (unpadded) image; patches of
        an image smaller than one patch start at 0 and reach past it.
    qmap: ``[P]`` float32 mean confidence of each patch.
    group: ``[P]`` int64 index into ``group_names`` (−1 everywhere for "none"); a sampler
        has as many groups as it names (PGS three, DDIM one).
    steps: ``[P]`` int64 denoising steps each patch received (0 for "none").
    confidence: ``[1, h, w]`` float32 GRM confidence in (0, 1) per LR pixel.
    group_pixels: ``[h, w]`` int64 group of the patch that weighs most at each LR
        pixel (−1 for "none"): the picture `patchscaler.imaging.visualize` draws.
    group_names: names of the groups, easy → hard.
    fp32_evaluations: of this image's patch-evaluations, how many were recomputed in
        float32 because the half-precision DiT's output had a NaN/Inf (0 in float32).
    dit_batch_halved_to, grm_tile_halved_to: when the device ran out of memory, the
        Patch-DiT batch (patches) and GRM tile (LR pixels a side) the failed step was
        retried with, halved as often as needed (None: no out-of-memory).
    """

    sampler: str
    scale: int
    patch_size: int
    origins: Tensor
    qmap: Tensor
    group: Tensor
    steps: Tensor
    confidence: Tensor
    group_pixels: Tensor
    group_names: tuple[str, ...] = GROUP_NAMES
    fp32_evaluations: int = 0
    dit_batch_halved_to: int | None = None
    grm_tile_halved_to: int | None = None

    def memory_note(self) -> str | None:
        """One line saying what out-of-memory errors changed, or None."""
        parts = []
        if self.dit_batch_halved_to is not None:
            n = self.dit_batch_halved_to
            parts.append(f"Patch-DiT batches halved to {n} patch{'es' if n != 1 else ''}")
        if self.grm_tile_halved_to is not None:
            parts.append(f"GRM tiles halved to {self.grm_tile_halved_to}x{self.grm_tile_halved_to}")
        if not parts:
            return None
        return "ran out of device memory: " + " and ".join(parts) + ", and only those steps were retried"

    @property
    def sampled(self) -> bool:
        """Whether any diffusion sampling happened (False for sampler "none")."""
        return self.sampler != "none"

    @property
    def evaluations(self) -> int:
        """Denoiser patch-evaluations spent on this image (Σ steps)."""
        return int(self.steps.sum())

    def summary(self) -> dict:
        """JSON-friendly counts: patches and steps per group, evaluations, mean confidence."""
        out: dict[str, Any] = {
            "sampler": self.sampler,
            "patches": int(self.group.numel()),
            "evaluations": self.evaluations,
            "mean_confidence": float(self.confidence.float().mean()) if self.confidence.numel() else None,
        }
        if self.sampled:
            out["groups"] = {
                name: {
                    "patches": int((self.group == g).sum()),
                    "steps": sorted({int(s) for s in self.steps[self.group == g].tolist()}),
                }
                for g, name in enumerate(self.group_names)
            }
            out["uniform_evaluations"] = int(self.steps.max()) * int(self.steps.numel()) if self.steps.numel() else 0
            out["fp32_evaluations"] = self.fp32_evaluations
        out["dit_batch_halved_to"] = self.dit_batch_halved_to
        out["grm_tile_halved_to"] = self.grm_tile_halved_to
        return out


def group_pixels(plan: PatchPlan, group: Tensor, window: Tensor) -> Tensor:
    """``[B, h, w]`` int64: per pixel, the group of the patch with the largest ``window``
    weight there; ``group [B·P]`` int64 on the window's device."""
    k = int(group.max()) + 1 if group.numel() else 1
    one_hot = torch.nn.functional.one_hot(group, k).float()[:, :, None, None]
    # Each patch votes for its group with its window weight; blending normalises the
    # votes per pixel, and the argmax is the group of the patch that weighs most.
    votes = plan.merge((one_hot * window).contiguous(), torch.ones_like(window))
    return votes.argmax(1).cpu()
