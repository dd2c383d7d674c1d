"""Latent codec (SPEC §2): the lossless pixel-unshuffle "autoencoder".

The diffusion model and the GRM work in latent space. Here the latent of an HR image
is its space-to-depth rearrangement, so the latent has the LR's spatial size and no
information is lost. A learned codec can replace it as long as it offers the same
three members (``scale``, ``latent_channels``, ``encode``/``decode``).
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

__all__ = ["PixelUnshuffleCodec"]


class PixelUnshuffleCodec:
    """``encode(hr) = pixel_unshuffle(2·hr − 1, s)``; ``decode`` is the exact inverse.

    Channel layout (PyTorch's): latent channel ``c·s² + i·s + j`` holds colour ``c`` at
    sub-pixel offset ``(i, j)`` of each s×s HR block.
    """

    def __init__(self, scale: int = 4):
        if scale < 1:
            raise ValueError(f"scale must be >= 1, got {scale}")
        self.scale = int(scale)

    @property
    def latent_channels(self) -> int:
        """Channels of the latent: 3·s²."""
        return 3 * self.scale**2

    def encode(self, hr: Tensor) -> Tensor:
        """``hr [B, 3, H, W]`` in [0, 1], H and W multiples of s → ``[B, 3s², H/s, W/s]`` in [−1, 1]."""
        h, w = hr.shape[-2:]
        if h % self.scale or w % self.scale:
            raise ValueError(f"HR size {(h, w)} is not a multiple of scale {self.scale}")
        return F.pixel_unshuffle(hr * 2.0 - 1.0, self.scale)

    def decode(self, z: Tensor) -> Tensor:
        """``z [B, 3s², h, w]`` → ``[B, 3, h·s, w·s]`` in [0, 1] (not clamped)."""
        return (F.pixel_shuffle(z, self.scale) + 1.0) * 0.5

    def __repr__(self) -> str:
        return f"PixelUnshuffleCodec(scale={self.scale})"
