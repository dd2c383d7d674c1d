"""Global Restoration Module (SPEC §1.1, §2): LR image → coarse HR latent ``y0`` + confidence ``C``.

The network runs entirely at LR resolution. Its output is a residual in latent space
(pixel-unshuffled HR, 3·s² channels) added to the latent of the MATLAB-bicubic
upsampling of the LR, so at initialisation the GRM *is* bicubic and it only has to
learn the missing detail. A small separate head predicts the confidence map from the
trunk features (sigmoid, one channel per LR pixel = per s×s HR block).

Trunk: wide-activation residual blocks (WDSR-B, Yu et al. 2018): 1×1 expand → ReLU →
1×1 reduce → 3×3, with weight normalisation dropped (Adam handles it fine at this size).
Wide activation before the ReLU gives more non-linearity per FLOP than the EDSR block,
which matters because training runs on two CPU cores.
"""

from __future__ import annotations

import json
import threading
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from patchscaler.codec import PixelUnshuffleCodec
from patchscaler.data.resize import imresize

__all__ = ["GRMConfig", "GRM", "load_grm", "weights_path"]


@dataclass
class GRMConfig:
    """Architecture hyper-parameters (stored next to the shipped weights)."""

    scale: int = 4
    channels: int = 48  # trunk width
    blocks: int = 8  # residual blocks
    expand: int = 4  # wide-activation expansion of the 1x1 conv inside a block
    reduce: float = 0.8  # width of the 3x3 conv input, relative to `channels` (WDSR-B)
    conf_channels: int = 32  # hidden width of the confidence head

    @classmethod
    def from_dict(cls, d: dict) -> "GRMConfig":
        return cls(**{k: v for k, v in d.items() if k in cls.__dataclass_fields__})


class WideBlock(nn.Module):
    """WDSR-B block: ``x + conv3x3(conv1x1(relu(conv1x1(x))))``; ``[B, C, h, w]`` → same."""

    def __init__(self, channels: int, expand: int, reduce: float):
        super().__init__()
        wide, narrow = channels * expand, max(8, int(round(channels * reduce)))
        self.expand = nn.Conv2d(channels, wide, 1)
        self.reduce = nn.Conv2d(wide, narrow, 1)
        self.spatial = nn.Conv2d(narrow, channels, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        return x + self.spatial(self.reduce(F.relu(self.expand(x), inplace=True)))


class GRM(nn.Module):
    """``forward(lr [B,3,h,w] in [0,1]) → (y0 [B,3s²,h,w] latent in ≈[−1,1], conf [B,1,h,w] in (0,1))``.

    Any ``h, w >= 1`` works (3×3 convs zero-pad; the bicubic base mirrors like MATLAB).
    ``decode(y0)`` with :class:`PixelUnshuffleCodec` gives the coarse HR image.
    """

    def __init__(self, config: GRMConfig | None = None):
        super().__init__()
        self.config = cfg = config or GRMConfig()
        self.codec = PixelUnshuffleCodec(cfg.scale)
        lat = self.codec.latent_channels
        self.head = nn.Conv2d(3, cfg.channels, 3, padding=1)
        self.body = nn.Sequential(*[WideBlock(cfg.channels, cfg.expand, cfg.reduce) for _ in range(cfg.blocks)])
        self.tail = nn.Conv2d(cfg.channels, lat, 3, padding=1)
        self.conf = nn.Sequential(
            nn.Conv2d(cfg.channels, cfg.conf_channels, 3, padding=1),
            nn.ReLU(inplace=True),
            nn.Conv2d(cfg.conf_channels, cfg.conf_channels, 3, padding=1),
            nn.ReLU(inplace=True),
            nn.Conv2d(cfg.conf_channels, 1, 3, padding=1),
        )
        # Start as exact bicubic (zero residual). C starts small (sigmoid(-6) = 0.0025):
        # its optimum is η/e² ≪ 1 almost everywhere, and C = 0.5 would make the first
        # confidence gradients thousands of times larger than at equilibrium.
        nn.init.zeros_(self.tail.weight)
        nn.init.zeros_(self.tail.bias)
        nn.init.constant_(self.conf[-1].bias, -6.0)
        # Inputs are centred like the latent, so the trunk sees zero-mean data.
        self.register_buffer("rgb_mean", torch.tensor([0.45, 0.44, 0.40]).view(1, 3, 1, 1), persistent=False)

    def base_latent(self, lr: Tensor) -> Tensor:
        """Latent of the MATLAB-bicubic ×s upsampling of ``lr``: ``[B,3,h,w]`` → ``[B,3s²,h,w]`` fp32."""
        s = self.config.scale
        up = imresize(lr.float(), size=(lr.shape[-2] * s, lr.shape[-1] * s))
        return self.codec.encode(up)

    def features(self, lr: Tensor) -> Tensor:
        x = self.head(lr - self.rgb_mean.to(lr.dtype))
        return x + self.body(x)

    def forward(self, lr: Tensor) -> tuple[Tensor, Tensor]:
        if lr.dim() != 4 or lr.shape[1] != 3:
            raise ValueError(f"GRM expects lr [B,3,h,w], got {tuple(lr.shape)}")
        feats = self.features(lr)
        # The two output heads run in full precision even under bf16 autocast: the
        # residual is added to the base latent at full precision and C spans ~1e-5..1.
        with torch.autocast(lr.device.type, enabled=False):
            feats = feats.to(self.tail.weight.dtype)
            residual = self.tail(feats)
            # The confidence head reads the trunk's features but does not train them:
            # the trunk is driven by L1 alone (PSNR is a bar), the head learns to read
            # difficulty off features that already encode edges and texture.
            conf = torch.sigmoid(self.conf(feats.detach()).float())
            y0 = self.base_latent(lr) + residual.float()
        return y0, conf

    @torch.no_grad()
    def upscale(self, lr: Tensor) -> Tensor:
        """Convenience: ``lr [B,3,h,w]`` → coarse HR image ``[B,3,sh,sw]`` clamped to [0, 1]."""
        y0, _ = self(lr)
        return self.codec.decode(y0).clamp(0, 1)


def weights_path(scale: int = 4) -> Path:
    """Where the shipped GRM weights live inside the package."""
    return Path(__file__).resolve().parent.parent / "weights" / f"grm_x{scale}.safetensors"


_CACHE: dict[tuple, GRM] = {}
_CACHE_LOCK = threading.Lock()


def load_grm(scale: int = 4, device: str | torch.device | None = None, dtype: torch.dtype | None = None) -> GRM:
    """The shipped, trained GRM for ``scale`` in eval mode (cached per scale/device/dtype).

    Reads ``patchscaler/weights/grm_x{scale}.safetensors`` and its ``.json`` (config).
    fp16-stored weights are cast to ``dtype`` (default fp32).
    """
    from safetensors.torch import load_file

    device = torch.device(device or "cpu")
    dtype = dtype or torch.float32
    key = (scale, str(device), dtype)
    with _CACHE_LOCK:
        if key in _CACHE:
            return _CACHE[key]
        path = weights_path(scale)
        if not path.is_file():
            raise FileNotFoundError(
                f"GRM weights not found at {path}; train with `python -m patchscaler.train.grm` and export"
            )
        meta_path = path.with_suffix(".json")
        meta = json.loads(meta_path.read_text()) if meta_path.is_file() else {}
        model = GRM(GRMConfig.from_dict(meta.get("config", {"scale": scale})))
        state = {k: v.float() for k, v in load_file(str(path)).items()}
        model.load_state_dict(state)
        model = model.to(device=device, dtype=dtype).eval()
        for p in model.parameters():
            p.requires_grad_(False)
        _CACHE[key] = model
        return model
