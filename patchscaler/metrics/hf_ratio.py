"""High-frequency energy ratio: how much fine detail SR has relative to HR.

Definition (per image, on luma):

1. Y = BT.601 luma of the uint8-quantised image, float64 in [16, 235]
   (`ycbcr.y_channel`), cropped by `crop_border` pixels on every side.
2. Subtract the mean of Y and multiply by a separable Hann window. The window
   makes the image periodic for the FFT: without it the jump between opposite
   borders adds broadband energy that is the same for SR and HR and pulls every
   ratio towards 1.
3. P(f) = |FFT2(Y_w)(f)|² / (H·W), with f = (fy, fx) from `fftfreq` in cycles/pixel.
   Nyquist is 0.5 cycles/pixel, so "above half the Nyquist frequency" is the
   radial frequency |f| = sqrt(fy² + fx²) > 0.25 cycles/pixel (the corners of
   the spectrum, up to |f| = 0.707, count as high frequency).
4. E_hf = mean over all H·W frequency bins of P(f)·[|f| > 0.25] — by Parseval,
   the per-pixel power carried by those frequencies (units: Y-levels²).

    hf_ratio(sr, hr) = E_hf(SR) / E_hf(HR)

1 means SR has as much fine-scale energy as the ground truth; blurry outputs
(bicubic, regression) score < 1; over-sharpened or noisy outputs score > 1.
Dataset scores are the mean of per-image ratios.
"""

from __future__ import annotations

import math

import torch

from patchscaler.metrics.ycbcr import crop_border as _crop
from patchscaler.metrics.ycbcr import y_channel

HALF_NYQUIST = 0.25  # cycles/pixel


def hf_energy(y: torch.Tensor, cutoff: float = HALF_NYQUIST) -> float:
    """Windowed spectral power above radial frequency `cutoff` (cycles/px) of float [H,W] Y.

    Returns the mean over all H·W frequency bins of |FFT|²/(H·W) restricted to
    |f| > cutoff, in (Y units)². Images with H or W < 2 have no defined window → 0.
    """
    y = y.double()
    h, w = y.shape
    if h < 2 or w < 2:
        return 0.0
    y = y - y.mean()
    win = torch.outer(torch.hann_window(h, periodic=False, dtype=torch.float64),
                      torch.hann_window(w, periodic=False, dtype=torch.float64))
    power = torch.fft.fft2(y * win).abs() ** 2 / (h * w)
    fy = torch.fft.fftfreq(h, dtype=torch.float64).view(h, 1)
    fx = torch.fft.fftfreq(w, dtype=torch.float64).view(1, w)
    mask = (fy**2 + fx**2) > cutoff**2
    return (power * mask).sum().item() / (h * w)


def hf_ratio(sr: torch.Tensor, hr: torch.Tensor, crop_border: int = 0) -> float:
    """E_hf(SR) / E_hf(HR) on Y (see module docstring); 1.0 for identical images.

    sr, hr: [3,H,W] or [1,3,H,W] of the same size, float in [0, 1] (quantised to
    uint8 here) or uint8. If HR has no high-frequency energy at all (a flat
    image) the ratio is 1.0 when SR has none either and `math.inf` otherwise.
    """
    y_sr = _crop(y_channel(sr), crop_border)
    y_hr = _crop(y_channel(hr), crop_border)
    if y_sr.shape != y_hr.shape:
        raise ValueError(f"image sizes differ: sr {tuple(y_sr.shape)} vs hr {tuple(y_hr.shape)}")
    e_sr, e_hr = hf_energy(y_sr), hf_energy(y_hr)
    if e_hr == 0.0:
        return 1.0 if e_sr == 0.0 else math.inf
    return e_sr / e_hr
