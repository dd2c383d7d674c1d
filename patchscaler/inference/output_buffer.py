"""Where the pipeline writes an image's ×s output, band by band.

The pipeline produces an image's HR pixels a band of rows at a time
(`patchscaler.inference.band_plan`) and hands each band to the image's output buffer with
``write(top, rows)``, ``rows [3, r, W]`` float32 in [0, 1] on the pipeline's device. A
buffer is preallocated at the output's size, so no full-size float image exists unless
the caller asks for one:

* `FloatOutput`: ``[3, H, W]`` float32 on the device (tensor inputs, and
  `PatchScalerPipeline.upscale_images` without buffers);
* `ArrayOutput`: channels-last numpy ``uint8``/``uint16`` (or float) array, quantized
  as each band arrives by `patchscaler.imaging.convert`'s one rounding rule — 3 or 6 bytes per output pixel instead of 12 for float32, and
  the alpha channel, if any, in the same array.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from patchscaler.imaging.convert import planes_to_array

__all__ = ["ArrayOutput", "FloatOutput"]


class FloatOutput:
    """``tensor [3, H, W]`` float32 on ``device``, filled band by band."""

    def __init__(self, height: int, width: int, device: torch.device | str = "cpu"):
        self.tensor = torch.empty(3, height, width, dtype=torch.float32, device=device)

    def write(self, top: int, rows: Tensor) -> None:
        self.tensor[:, top : top + rows.shape[1]] = rows


class ArrayOutput:
    """``array [H, W, C]`` of ``dtype`` (uint8, uint16 or a float type), filled band by band.

    ``grey``: the image is greyscale; its one colour channel is the mean of the model's
    three. ``alpha``: one more channel at the end, filled by `write_alpha`.
    """

    def __init__(self, height: int, width: int, dtype: np.dtype, *, grey: bool = False, alpha: bool = False):
        self.grey, self.colour = grey, 1 if grey else 3
        self.array = np.empty((height, width, self.colour + int(alpha)), dtype=dtype)

    def write(self, top: int, rows: Tensor) -> None:
        planes = rows.mean(0, keepdim=True) if self.grey else rows
        self.array[top : top + rows.shape[1], :, : self.colour] = planes_to_array(planes, self.array.dtype)

    def write_alpha(self, alpha: Tensor) -> None:
        """``alpha [1, H, W]`` float in [0, 1] into the last channel."""
        self.array[..., self.colour :] = planes_to_array(alpha, self.array.dtype)
