"""PSNR on the BT.601 luma channel, the standard super-resolution protocol.

Both images are quantised to uint8 first (values rounded to integers in [0, 255]),
Y is computed from those in float64 (`ycbcr.y_channel`), `crop_border` pixels are
removed from every side, and

    PSNR = 10·log10(255² / MSE(Y_sr, Y_hr))   [dB]

With `grey=True` (the reference file was single-channel, e.g. Set14
`bridge.png`) both are compared on full-range grey values instead, as the MATLAB
scripts behind the published tables do (`ycbcr.luma_pair`).

Identical images give `math.inf` (MSE = 0; no cap). Dataset scores are the mean
of the per-image values (as in published tables), not the PSNR of the pooled MSE.
"""

from __future__ import annotations

import math

import torch

from patchscaler.metrics.ycbcr import crop_border as _crop
from patchscaler.metrics.ycbcr import luma_pair


def psnr_y(sr: torch.Tensor, hr: torch.Tensor, crop_border: int = 0, grey: bool = False) -> float:
    """PSNR in dB between two images on Y (full-range grey with `grey`) after a `crop_border`-pixel crop.

    sr, hr: [3,H,W] or [1,3,H,W] of the same size, float in [0, 1] (quantised to
    uint8 here) or uint8. Returns `math.inf` when the quantised luma channels match.
    """
    y_sr, y_hr = luma_pair(sr, hr, grey)
    y_sr, y_hr = _crop(y_sr, crop_border), _crop(y_hr, crop_border)
    if y_sr.shape != y_hr.shape:
        raise ValueError(f"image sizes differ: sr {tuple(y_sr.shape)} vs hr {tuple(y_hr.shape)}")
    mse = torch.mean((y_sr - y_hr) ** 2).item()
    if mse == 0.0:
        return math.inf
    return 10.0 * math.log10(255.0**2 / mse)
