"""Output sizes other than ×4: ``outscale=`` (any factor in (1, 4]) and exact ``width=`` /
``height=`` (one of them keeps the aspect ratio), as Real-ESRGAN users expect.

The model always upscales ×4; the ×4 result is then resized to the asked size with
PyTorch's antialiased bicubic (``F.interpolate(..., mode="bicubic", antialias=True)``).
Chosen over Pillow's LANCZOS because it works on the float result where it already is
(a GPU result stays on the GPU), before quantisation, so 16-bit outputs keep their
precision (Pillow filters multi-band images only in 8 bits), with one code path for
tensors, arrays and PIL images. It is the same antialiased filter as Pillow's BICUBIC
(PyTorch's follows Pillow's), and rings less than Lanczos-3 on the sharp edges a
diffusion upscaler draws. Unlike a plain (non-antialiased) resize, a 2× reduction of
the ×4 result does not alias its fine texture.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["OutputSize", "check_output_size", "target_size", "resize_output"]


@dataclass(frozen=True)
class OutputSize:
    """What the caller asked for: a factor, or an exact width and/or height."""

    outscale: float | None = None
    width: int | None = None
    height: int | None = None


def _positive_int(value: Any, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name} must be a positive int (pixels), got {type(value).__name__} {value!r}")
    if value < 1:
        raise ValueError(f"{name} must be a positive int (pixels), got {value}")
    return int(value)


def check_output_size(
    outscale: Any = None, width: Any = None, height: Any = None, *, scale: int = 4, prefix: str = ""
) -> OutputSize | None:
    """Validate the options; None when the plain ×``scale`` result is wanted.

    ``prefix`` names the options in messages (``"--"`` for the command line).
    """
    if outscale is not None and (width is not None or height is not None):
        raise ValueError(f"give either {prefix}outscale or {prefix}width/{prefix}height, not both")
    if outscale is not None:
        if isinstance(outscale, bool) or not isinstance(outscale, (int, float, np.integer, np.floating)):
            raise TypeError(f"{prefix}outscale must be a number in (1, {scale}], got {type(outscale).__name__}")
        s = float(outscale)
        if not math.isfinite(s) or not 1 < s <= scale:
            raise ValueError(
                f"{prefix}outscale must be in (1, {scale}] (the model upscales ×{scale}; the result is then "
                f"resized), got {outscale!r}"
            )
        return None if s == scale else OutputSize(outscale=s)
    if width is None and height is None:
        return None
    w = _positive_int(width, f"{prefix}width") if width is not None else None
    h = _positive_int(height, f"{prefix}height") if height is not None else None
    return OutputSize(width=w, height=h)


def target_size(h: int, w: int, spec: OutputSize | None, *, scale: int = 4, prefix: str = "") -> tuple[int, int]:
    """Output ``(height, width)`` for an ``h × w`` input; ValueError if above ×``scale``."""
    if spec is None:
        return h * scale, w * scale
    if spec.outscale is not None:
        return max(1, round(h * spec.outscale)), max(1, round(w * spec.outscale))
    if spec.width is not None and spec.height is not None:
        out_h, out_w = spec.height, spec.width
    elif spec.width is not None:
        out_w = spec.width
        out_h = max(1, round(h * spec.width / w))
    else:
        out_h = spec.height
        out_w = max(1, round(w * spec.height / h))
    if out_w > w * scale or out_h > h * scale:
        raise ValueError(
            f"the output {out_w}x{out_h} is larger than ×{scale} of the {w}x{h} input "
            f"({w * scale}x{h * scale}); the model upscales ×{scale} at most "
            f"(lower {prefix}width/{prefix}height)"
        )
    return out_h, out_w


def resize_output(img: Tensor, size: tuple[int, int]) -> Tensor:
    """``[C, H, W]`` float in [0, 1] → ``[C, *size]``, antialiased bicubic, clamped to [0, 1]."""
    if tuple(img.shape[-2:]) == tuple(size):
        return img
    x = img.float().unsqueeze(0)
    out = F.interpolate(x, size=size, mode="bicubic", antialias=True, align_corners=False)
    return out[0].clamp_(0, 1).to(img.dtype)


def fit_output(hr: Tensor, alpha: Tensor | None, size: tuple[int, int]) -> tuple[Tensor, Tensor | None]:
    """The ×4 image (and its alpha, if any) resized to ``size`` (a no-op at the ×4 size)."""
    return resize_output(hr, size), (resize_output(alpha, size) if alpha is not None else None)
