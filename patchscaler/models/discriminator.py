"""A narrow U-Net discriminator with spectral normalisation, for the `real` GRM's adversarial fine-tune.

``forward(img [B,3,H,W] in [0,1]) → logits [B,1,H,W]``: one real/fake logit per pixel, so
the generator is told *where* its output looks unnatural, not only whether it does
(Schönfeld et al. 2020; Real-ESRGAN uses the same shape). Training-only: the
upscaler never loads it.

Why narrow (``channels=16`` by default, Real-ESRGAN uses 64): it trains on two CPU
cores beside a 0.44M-parameter generator, and a discriminator much stronger than its
generator only learns to win. The first convolution sees three channels at full
resolution and is cheap; every later one is spectral-normalised (Miyato et al. 2018),
which bounds the discriminator's Lipschitz constant and keeps the GAN stable without
a gradient penalty. Downsampling is strided 4×4 convolutions; upsampling is bilinear ×2
followed by a 3×3 convolution, with the encoder's features added back (skips).
H and W must be multiples of 8.
"""

from __future__ import annotations

import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor
from torch.nn.utils import spectral_norm

__all__ = ["UNetDiscriminator"]


class UNetDiscriminator(nn.Module):
    def __init__(self, channels: int = 16):
        super().__init__()
        c = channels
        sn = spectral_norm
        self.stem = nn.Conv2d(3, c, 3, padding=1)
        self.down = nn.ModuleList(
            [sn(nn.Conv2d(c, 2 * c, 4, 2, 1, bias=False)),
             sn(nn.Conv2d(2 * c, 4 * c, 4, 2, 1, bias=False)),
             sn(nn.Conv2d(4 * c, 8 * c, 4, 2, 1, bias=False))]
        )
        self.up = nn.ModuleList(
            [sn(nn.Conv2d(8 * c, 4 * c, 3, padding=1, bias=False)),
             sn(nn.Conv2d(4 * c, 2 * c, 3, padding=1, bias=False)),
             sn(nn.Conv2d(2 * c, c, 3, padding=1, bias=False))]
        )
        self.refine = nn.Sequential(
            sn(nn.Conv2d(c, c, 3, padding=1, bias=False)), nn.LeakyReLU(0.2, inplace=True),
            sn(nn.Conv2d(c, c, 3, padding=1, bias=False)), nn.LeakyReLU(0.2, inplace=True),
        )
        self.head = nn.Conv2d(c, 1, 3, padding=1)

    def forward(self, img: Tensor) -> Tensor:
        if img.dim() != 4 or img.shape[1] != 3 or img.shape[-1] % 8 or img.shape[-2] % 8:
            raise ValueError(f"the discriminator takes [B,3,H,W] with H, W multiples of 8, got {tuple(img.shape)}")
        x = F.leaky_relu(self.stem(img * 2 - 1), 0.2)
        skips = [x]
        for conv in self.down:
            x = F.leaky_relu(conv(x), 0.2)
            skips.append(x)
        skips.pop()  # the bottleneck is x itself
        for conv in self.up:
            x = F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False)
            x = F.leaky_relu(conv(x), 0.2) + skips.pop()
        return self.head(self.refine(x))
