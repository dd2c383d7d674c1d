"""Does the GRM's confidence map predict where its regression is wrong?

The PGS sampler (SPEC §1.2) sends patches with low mean confidence to the hard
group, so confidence must rank patches by their actual error. The check: tile
the latent into non-overlapping `patch`×`patch` tiles (the sampler's patch size;
tiles at the right/bottom edge may be smaller and are kept, so every latent
pixel counts once), and per tile take

    c = mean confidence C,      e = mean over channels and pixels of (y0 − x0)²

where x0 is the codec latent of the true HR image. The Spearman rank correlation
of (c, e) pooled over all tiles of a dataset should be strongly negative
(project bar: ≤ −0.6 on B100).
"""

from __future__ import annotations

import math

import torch


def patch_confidence_and_mse(
    confidence: torch.Tensor, y0: torch.Tensor, x0: torch.Tensor, patch: int = 16
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-tile mean confidence and mean squared latent error.

    confidence: [B,1,h,w] in [0, 1]; y0, x0: [B,C,h,w] (coarse and true HR latents).
    Returns two float64 vectors of length B·ceil(h/patch)·ceil(w/patch).
    """
    if confidence.dim() != 4 or confidence.shape[1] != 1:
        raise ValueError(f"confidence must be [B,1,h,w], got {tuple(confidence.shape)}")
    if y0.shape != x0.shape or y0.shape[0] != confidence.shape[0] or y0.shape[2:] != confidence.shape[2:]:
        raise ValueError(
            f"shape mismatch: confidence {tuple(confidence.shape)}, y0 {tuple(y0.shape)}, x0 {tuple(x0.shape)}"
        )
    err = ((y0.double() - x0.double()) ** 2).mean(dim=1, keepdim=True)  # [B,1,h,w]
    conf = confidence.double()
    h, w = conf.shape[2:]
    ph, pw = math.ceil(h / patch) * patch - h, math.ceil(w / patch) * patch - w
    # Sum over zero-padded tiles and divide by the number of real pixels in each tile,
    # so edge tiles are means over what they actually cover.
    pad = (0, pw, 0, ph)
    ones = torch.nn.functional.pad(torch.ones_like(conf), pad)
    count = torch.nn.functional.avg_pool2d(ones, patch) * patch * patch
    c = torch.nn.functional.avg_pool2d(torch.nn.functional.pad(conf, pad), patch) * patch * patch / count
    e = torch.nn.functional.avg_pool2d(torch.nn.functional.pad(err, pad), patch) * patch * patch / count
    return c.flatten(), e.flatten()


def spearman(a: torch.Tensor, b: torch.Tensor) -> float:
    """Spearman rank correlation of two 1D vectors (average ranks for ties); nan if < 2 points."""
    a, b = a.double().flatten(), b.double().flatten()
    if a.numel() != b.numel():
        raise ValueError(f"length mismatch: {a.numel()} vs {b.numel()}")
    if a.numel() < 2:
        return math.nan
    ra, rb = _average_ranks(a), _average_ranks(b)
    ra, rb = ra - ra.mean(), rb - rb.mean()
    den = torch.sqrt((ra**2).sum() * (rb**2).sum())
    if den == 0:
        return math.nan  # a constant vector has no ranking
    return ((ra * rb).sum() / den).item()


def _average_ranks(x: torch.Tensor) -> torch.Tensor:
    """Ranks 1..n with ties sharing their mean rank (as scipy.stats.rankdata)."""
    sorted_x, order = torch.sort(x, stable=True)
    n = x.numel()
    # Start a new tie group wherever the sorted value changes.
    new_group = torch.ones(n, dtype=torch.bool)
    new_group[1:] = sorted_x[1:] != sorted_x[:-1]
    group = torch.cumsum(new_group.long(), 0) - 1
    pos = torch.arange(1, n + 1, dtype=torch.float64)
    sums = torch.zeros(int(group[-1]) + 1, dtype=torch.float64).index_add_(0, group, pos)
    counts = torch.zeros_like(sums).index_add_(0, group, torch.ones_like(pos))
    ranks = torch.empty(n, dtype=torch.float64)
    ranks[order] = (sums / counts)[group]
    return ranks


def confidence_error_spearman(
    confidences: list[torch.Tensor] | torch.Tensor,
    y0s: list[torch.Tensor] | torch.Tensor,
    x0s: list[torch.Tensor] | torch.Tensor,
    patch: int = 16,
) -> tuple[float, int]:
    """Spearman correlation of tile confidence vs tile MSE, pooled over images.

    Each argument is one [B,·,h,w] tensor or a list of them (images of different
    sizes); see `patch_confidence_and_mse`. Returns (rho, number of tiles).
    Expected strongly negative for a useful confidence map.
    """
    if isinstance(confidences, torch.Tensor):
        confidences, y0s, x0s = [confidences], [y0s], [x0s]
    cs, es = [], []
    for c, y0, x0 in zip(confidences, y0s, x0s, strict=True):
        ci, ei = patch_confidence_and_mse(c, y0, x0, patch)
        cs.append(ci)
        es.append(ei)
    c_all, e_all = torch.cat(cs), torch.cat(es)
    return spearman(c_all, e_all), c_all.numel()
