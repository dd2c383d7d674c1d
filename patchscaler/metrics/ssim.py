"""SSIM on the BT.601 luma channel (Wang et al. 2004), as MATLAB `ssim_index` / BasicSR.

Y (float64, from uint8-quantised images; full-range grey with `grey=True`, for
single-channel reference files — `ycbcr.luma_pair`), cropped by
`crop_border`; local statistics with an 11×11 Gaussian window (σ = 1.5, normalised
to sum 1) over the *valid* region only (no padding, so the map is (H−10)×(W−10));
C1 = (0.01·255)², C2 = (0.03·255)²; the score is the mean of the SSIM map.
"""

from __future__ import annotations

import torch

from patchscaler.metrics.ycbcr import crop_border as _crop
from patchscaler.metrics.ycbcr import luma_pair

_C1 = (0.01 * 255.0) ** 2
_C2 = (0.03 * 255.0) ** 2


def gaussian_taps(size: int = 11, sigma: float = 1.5) -> torch.Tensor:
    """1D factor of the normalised Gaussian window (MATLAB `fspecial('gaussian')`): float64 [size]."""
    r = torch.arange(size, dtype=torch.float64) - (size - 1) / 2.0
    g = torch.exp(-(r**2) / (2.0 * sigma**2))
    return g / g.sum()


def _filter_valid(x: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """Separable 2D filter of float64 [..., H, W] with taps g (outer(g, g)), valid region only.

    Two 1D passes replace an 11×11 conv2d (float64 conv2d has no fast CPU path).
    """
    k = g.numel()
    h, w = x.shape[-2] - k + 1, x.shape[-1] - k + 1
    rows = sum(g[i] * x[..., i : i + h, :] for i in range(k))
    return sum(g[i] * rows[..., :, i : i + w] for i in range(k))


def ssim_map(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """SSIM map of two float64 [H,W] images in [0, 255] → [H−10, W−10]."""
    x = torch.stack([a, b, a * a, b * b, a * b])
    mu_a, mu_b, e_aa, e_bb, e_ab = _filter_valid(x, gaussian_taps())
    var_a = e_aa - mu_a**2
    var_b = e_bb - mu_b**2
    cov = e_ab - mu_a * mu_b
    num = (2 * mu_a * mu_b + _C1) * (2 * cov + _C2)
    den = (mu_a**2 + mu_b**2 + _C1) * (var_a + var_b + _C2)
    return num / den


def ssim_y(sr: torch.Tensor, hr: torch.Tensor, crop_border: int = 0, grey: bool = False) -> float:
    """Mean SSIM on Y after a `crop_border`-pixel crop; 1.0 for identical images.

    sr, hr: [3,H,W] or [1,3,H,W] of the same size, float in [0, 1] (quantised to
    uint8 here) or uint8. The cropped image must be at least 11×11.
    """
    y_sr, y_hr = luma_pair(sr, hr, grey)
    y_sr, y_hr = _crop(y_sr, crop_border), _crop(y_hr, crop_border)
    if y_sr.shape != y_hr.shape:
        raise ValueError(f"image sizes differ: sr {tuple(y_sr.shape)} vs hr {tuple(y_hr.shape)}")
    if min(y_sr.shape) < 11:
        raise ValueError(f"SSIM needs at least 11x11 pixels after cropping, got {tuple(y_sr.shape)}")
    return ssim_map(y_sr, y_hr).mean().item()
