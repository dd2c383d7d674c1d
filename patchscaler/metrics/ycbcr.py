"""uint8 quantisation and BT.601 luma, shared by all metrics.

The SR-evaluation protocol (BasicSR `to_y_channel`, after MATLAB `rgb2ycbcr`) measures
images as they would be saved: each RGB value is rounded to an integer in
[0, 255] first, then luma is computed in float64 *without* re-rounding

    Y = 16 + (65.481·R + 128.553·G + 24.966·B) / 255      R, G, B ∈ {0..255}

so Y lies in [16, 235] (ITU-R BT.601 "studio swing"). MATLAB's `rgb2ycbcr` on a
uint8 image would also round Y to integers; that moves the bicubic ×4 means by
about −0.01 dB / −0.001 SSIM (Set5 28.418 / 0.8102 instead of 28.431 / 0.8113),
well inside the tolerance, and we follow BasicSR's unrounded Y.

Single-channel reference files are the one exception (`luma_pair(..., grey=True)`):
the MATLAB evaluation scripts behind the published tables only convert 3-channel
files, and compare a single-channel file (Set14 `bridge.png`) on its raw grey
values 0..255. Our loader turns grey files into RGB with R = G = B, so the caller
says whether the reference *file* was single-channel (a 3-channel file with equal
channels, like Set14 `man.png`, still goes through Y), and both images are then
compared on full-range luma (Y − 16)·255/219 — exactly the grey value for a grey
image (0.299R + 0.587G + 0.114B in general). Measuring `bridge.png` on
studio-swing Y instead raises its PSNR by 1.32 dB and the Set14 bicubic mean by
0.09 dB above the published 26.00 dB.
"""

from __future__ import annotations

import torch

# BT.601 luma weights for RGB in [0, 1] giving Y in [16, 235].
_Y_WEIGHTS = (65.481, 128.553, 24.966)


def _as_chw(img: torch.Tensor) -> torch.Tensor:
    """[3,H,W] or [1,3,H,W] (also 1-channel grey) → [C,H,W]."""
    if not isinstance(img, torch.Tensor):
        raise TypeError(f"expected a torch.Tensor image, got {type(img).__name__}")
    if img.dim() == 4:
        if img.shape[0] != 1:
            raise ValueError(f"expected one image, got a batch of shape {tuple(img.shape)}")
        img = img[0]
    if img.dim() != 3 or img.shape[0] not in (1, 3):
        raise ValueError(f"expected an image of shape [3,H,W] or [1,3,H,W], got {tuple(img.shape)}")
    if img.shape[0] == 1:  # greyscale: R = G = B
        img = img.expand(3, -1, -1)
    return img


def quantize_uint8(img: torch.Tensor) -> torch.Tensor:
    """Image → uint8 [3,H,W] as it would be saved to an 8-bit file.

    img: [3,H,W] or [1,3,H,W]; float in [0, 1] (clamped, then 255·x rounded half
    away from zero like MATLAB's `im2uint8` and `patchscaler.data.quantize`) or
    already uint8 (returned unchanged).
    """
    img = _as_chw(img).detach().cpu()
    if img.dtype == torch.uint8:
        return img
    return torch.floor(img.double().clamp(0.0, 1.0) * 255.0 + 0.5).to(torch.uint8)


def y_channel(img: torch.Tensor) -> torch.Tensor:
    """BT.601 luma of the uint8-quantised image: float64 [H,W] with values in [16, 235].

    img: [3,H,W] or [1,3,H,W], float in [0, 1] or uint8 (see `quantize_uint8`).
    """
    rgb = quantize_uint8(img).double() / 255.0
    w = torch.tensor(_Y_WEIGHTS, dtype=torch.float64)
    return 16.0 + torch.einsum("chw,c->hw", rgb, w)


def crop_border(y: torch.Tensor, border: int) -> torch.Tensor:
    """Drop `border` pixels from every side of [..., H, W] (the standard SR protocol crop)."""
    if border < 0:
        raise ValueError(f"crop_border must be >= 0, got {border}")
    if border == 0:
        return y
    h, w = y.shape[-2:]
    if h <= 2 * border or w <= 2 * border:
        raise ValueError(f"image {h}x{w} is too small for a {border}-pixel border crop")
    return y[..., border:-border, border:-border]


def luma_pair(sr: torch.Tensor, hr: torch.Tensor, grey: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Luma of an (SR, reference) pair as the SR benchmarks compare them: float64 [H,W] each.

    BT.601 studio-swing Y in [16, 235] (`y_channel`); with `grey` (the reference
    file was single-channel) full-range grey in [0, 255] for both (module docstring).
    """
    y_sr, y_hr = y_channel(sr), y_channel(hr)
    if grey:
        y_sr, y_hr = (y_sr - 16.0) * (255.0 / 219.0), (y_hr - 16.0) * (255.0 / 219.0)
    return y_sr, y_hr
