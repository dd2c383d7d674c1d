"""Bands: an image's patch rows taken a few at a time, so the pipeline streams over an
image with memory that grows with its width, not its area.

A `PatchPlan` puts patch rows at latent rows ``ys[0] < ys[1] < … < ys[n-1]``; a band is
a contiguous run of them, ``patch_rows = range(first, stop)``. For each band:

* ``latent_rows``: the latent rows its patches cover, ``[ys[first], ys[stop-1] + ph)``
  (what the GRM has to produce for it);
* ``final_rows``: the rows whose blend is complete once this band is sampled, because
  no later patch reaches them: ``[previous band's end, ys[stop])``, the last band up to
  the image's height;
* ``blend_rows``: the patch rows that cover ``final_rows`` — this band's, plus the
  trailing rows of the band before whose patches reach below its final rows (the
  overlap; `BandBlender` keeps their patches from one band to the next).

`BandBlender` blends each band's final rows from exactly the patches that cover them,
in the same (row-major) order as `PatchPlan.merge` over the whole image, and
`blend_patches` sums a pixel's patches in patch order: the streamed latent is bit for bit
the whole-image blend.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch
from torch import Tensor

from patchscaler.inference.patch_plan import PatchPlan

__all__ = ["Band", "BandBlender", "band_patch_rows", "plan_bands"]


@dataclass(frozen=True)
class Band:
    """One band of a `PatchPlan` (module docstring); rows are latent (= LR) rows."""

    patch_rows: range  # indices into plan.ys sampled in this band
    latent_rows: tuple[int, int]  # [start, stop) covered by the band's patches (clipped to the image)
    final_rows: tuple[int, int]  # [start, stop) blended and final after this band
    blend_rows: range  # indices into plan.ys whose patches cover final_rows


def band_patch_rows(plan: PatchPlan, max_latent_rows: int) -> int:
    """Patch rows per band so that a band covers at most ``max_latent_rows`` latent rows
    (at least one patch row, whatever the budget)."""
    ph, oh = plan.patch[0], plan.overlap[0]
    return max(1, (int(max_latent_rows) - ph) // (ph - oh) + 1)


def plan_bands(plan: PatchPlan, rows_per_band: int) -> list[Band]:
    """The bands of ``plan``, ``rows_per_band`` (≥ 1) patch rows each (the last may have fewer)."""
    if rows_per_band < 1:
        raise ValueError(f"rows_per_band must be >= 1, got {rows_per_band}")
    ys, ph, n = plan.ys, plan.patch[0], len(plan.ys)
    bands, done = [], 0
    for first in range(0, n, rows_per_band):
        stop = min(first + rows_per_band, n)
        end = ys[stop] if stop < n else plan.height
        # Patch rows reaching into [done, end): a patch row i covers [ys[i], ys[i] + ph).
        cover = [i for i in range(n) if ys[i] < end and ys[i] + ph > done]
        bands.append(Band(
            patch_rows=range(first, stop),
            latent_rows=(ys[first], min(ys[stop - 1] + ph, plan.height)),
            final_rows=(done, end),
            blend_rows=range(cover[0], cover[-1] + 1) if cover else range(first, first),
        ))
        done = end
    return bands


class BandBlender:
    """Blends one image batch's latent band by band (module docstring).

    ``add(band, x0)``: ``x0 [B·R·X, C, ph, pw]`` float32, the band's patches (R = its patch
    rows, X = patches per row), image-major then row-major as `PatchPlan.split` orders
    them. Returns ``[B, C, r, W]``, the band's ``final_rows`` of the blended latent.
    Between calls it keeps only the patches of the rows the next band still needs.
    """

    def __init__(self, plan: PatchPlan, window: Tensor, batch: int):
        self.plan, self.window, self.batch = plan, window, batch
        self._kept: Tensor | None = None  # [B, rows, X, C, ph, pw]
        self._kept_first = 0  # patch row index of self._kept[:, 0]

    def add(self, band: Band, x0: Tensor) -> Tensor:
        B, X = self.batch, len(self.plan.xs)
        rows = x0.reshape(B, len(band.patch_rows), X, *x0.shape[1:])
        if self._kept is not None:
            rows = torch.cat([self._kept, rows], dim=1)
            first = self._kept_first
        else:
            first = band.patch_rows.start
        need = band.blend_rows
        cover = rows[:, need.start - first : need.stop - first]
        top = self.plan.ys[need.start]
        bottom = min(self.plan.ys[need.stop - 1] + self.plan.patch[0], self.plan.height)
        sub = replace(self.plan, height=bottom - top, ys=tuple(y - top for y in self.plan.ys[need.start : need.stop]))
        latent = sub.merge(cover.reshape(-1, *x0.shape[1:]).contiguous(), self.window)
        # Keep the rows whose patches reach below this band's final rows.
        end = band.final_rows[1]
        keep_from = next((i for i in range(first, band.patch_rows.stop) if self.plan.ys[i] + self.plan.patch[0] > end),
                         band.patch_rows.stop)
        self._kept = rows[:, keep_from - first :].clone() if keep_from < band.patch_rows.stop else None
        self._kept_first = keep_from
        a, b = band.final_rows
        return latent[:, :, a - top : b - top]
