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

import os
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from patchscaler.checkpoints import cached, read_safetensors, require, save_safetensors
from patchscaler.inference.codec import PixelUnshuffleCodec
from patchscaler.data.resize import imresize

__all__ = ["GRMConfig", "GRM", "grm_from_file", "load_grm", "save_grm"]


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

    @property
    def receptive_radius(self) -> int:
        """LR pixels an output pixel depends on, each side: y0 sees the head, one 3×3 per
        block and the tail (blocks + 2) plus the bicubic base's ±2 taps; the confidence
        head sees the head, the blocks and its three 3×3 convolutions (blocks + 4)."""
        return self.blocks + 4


class WideBlock(nn.Module):
    """WDSR-B block: ``x + conv3x3(conv1x1(relu(conv1x1(x))))``; ``[B, C, h, w]`` → same."""

    def __init__(self, channels: int, expand: int, reduce: float):
        super().__init__()
        wide, narrow = channels * expand, max(8, int(round(channels * reduce)))
        self.expand = nn.Conv2d(channels, wide, 1)
        self.reduce = nn.Conv2d(wide, narrow, 1)
        self.spatial = nn.Conv2d(narrow, channels, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        if _strip_path(x):
            return self._forward_strips(x)
        return x + self.spatial(self.reduce(F.relu(self.expand(x), inplace=True)))

    def _forward_strips(self, x: Tensor) -> Tensor:
        """`forward` for a channels-last ``x`` without autograd (CPU inference), same math.

        The two 1×1 convolutions are matrix products over pixels, done in strips
        of pixels (`_strip_pixels`) so that the ``expand``-wide activation of a strip
        stays in cache instead of a ``[B, 4C, h, w]`` tensor that at 256² LR is 50 MB of fresh
        memory per block (its page faults alone cost more than the matmul). On one
        CPU thread PyTorch would also run the batch-1 1×1 convolutions through its slow
        im2col path. Measured 1.8× faster for the whole GRM on 256² LR, 1 thread
        (benchmarks/results/pgs-cpu-speed.md). Returns channels-last ``[B, C, h, w]``.
        """
        B, C, H, W = x.shape
        wide, narrow = self.expand.out_channels, self.reduce.out_channels
        we, wr = self.expand.weight.view(wide, C), self.reduce.weight.view(narrow, wide)
        pixels = x.permute(0, 2, 3, 1).reshape(-1, C)  # a view: channels-last memory is [B·H·W, C]
        mid = x.new_empty(B, H, W, narrow)
        mid_rows = mid.view(-1, narrow)
        strip = _strip_pixels()
        for start in range(0, pixels.shape[0], strip):
            sl = slice(start, start + strip)
            h = F.linear(pixels[sl], we, self.expand.bias).relu_()
            torch.addmm(self.reduce.bias, h, wr.t(), out=mid_rows[sl])
        # In place on the conv's fresh output: x + y == y + x exactly, without another
        # [B,C,h,w] allocation.
        return self.spatial(mid.permute(0, 3, 1, 2)).add_(x)


def _strip_pixels() -> int:
    """Pixels per strip of `WideBlock._forward_strips`.

    One thread: 2048 (× 192 channels fp32 = 1.5 MiB, within a core's L2; 256² LR GRM
    0.61 s against 1.08 s for one 65536-pixel strip). More threads: every strip's matmul
    is an OpenMP parallel region that waits for its slowest thread, and on a machine whose
    cores are shared (the development machine runs training jobs) a thread loses its
    core for a scheduler slice at a time: measured at 2 threads, 2048-pixel strips took
    12.4 s and 65536-pixel strips 1.5 s (the old NCHW path 2.8 s). So with threads, few
    large strips.
    """
    return 2048 if torch.get_num_threads() == 1 else 65536


def _cpu_inference(x: Tensor) -> bool:
    """Whether ``x`` is computed by CPU inference without autocast, where the GRM runs
    channels-last (`GRM.features`) and `WideBlock` may take its strip path (`addmm(out=...)`
    needs the parameters' dtype, so not under autocast)."""
    return x.device.type == "cpu" and not torch.is_grad_enabled() and not torch.is_autocast_enabled("cpu")


def _strip_path(x: Tensor) -> bool:
    """Whether `WideBlock` takes its strip path: CPU inference on a channels-last tensor."""
    return _cpu_inference(x) and x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last)


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
        x = lr - self.rgb_mean.to(lr.dtype)
        if _cpu_inference(lr):
            # CPU inference runs channels-last: oneDNN's 3×3 convolutions take it
            # natively and `WideBlock` then does its 1×1 pair as strip matmuls.
            x = x.contiguous(memory_format=torch.channels_last)
        x = self.head(x)
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


def grm_from_file(path: str | os.PathLike) -> GRM:
    """A `GRM` (fp32, train mode) from a safetensors file written by `save_grm`."""
    state, config, _ = read_safetensors(path, format="patchscaler.GRM")
    model = GRM(GRMConfig.from_dict(config))
    model.load_state_dict({k: v.float() for k, v in state.items()})
    return model


def save_grm(state: dict[str, Tensor], config: GRMConfig | dict, path: str | os.PathLike, metadata: dict | None = None) -> Path:
    """Write GRM weights ``state`` (in the dtype given) with the config and ``metadata`` in the file."""
    cfg = config if isinstance(config, dict) else asdict(config)
    return save_safetensors(path, state, format="patchscaler.GRM", config=cfg, metadata=metadata)


def load_grm(
    scale: int = 4,
    device: str | torch.device | None = None,
    dtype: torch.dtype | None = None,
    *,
    model: str | None = None,
    path: str | os.PathLike | None = None,
) -> GRM:
    """The trained GRM of model set ``model`` (or the file ``path``) in eval mode, frozen,
    cached per (file, device, dtype) (`patchscaler.checkpoints.clear` forgets it).

    fp16-stored weights are cast to ``dtype`` (default fp32). Raises
    `WeightsNotAvailableError` when the set has no GRM.
    """
    if scale != 4:
        raise ValueError(f"only x4 GRM weights exist, got scale={scale}")
    path = Path(path) if path is not None else require("grm", model)
    device = torch.device(device or "cpu")
    dtype = dtype or torch.float32

    def build() -> GRM:
        grm = grm_from_file(path).to(device=device, dtype=dtype).eval()
        return grm.requires_grad_(False)

    return cached(("grm", str(path.resolve()), str(device), dtype), build)
