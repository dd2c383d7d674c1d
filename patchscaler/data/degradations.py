"""Real-world degradations: the Real-ESRGAN "high-order" family (Wang et al., ICCVW 2021).

A clean HR batch becomes a realistic LR batch by two rounds of

    blur (isotropic / anisotropic / generalized / plateau Gaussian, or sinc)
    → resize (up / down / keep, random interpolation)
    → noise (Gaussian or Poisson, colour or grey)
    → JPEG

followed by a final stage of "resize to HR/scale + sinc filter" and JPEG, in random
order. Every random choice is drawn from one ``torch.Generator``, so a seed fixes the
result (training draws a new degradation per crop; evaluation seeds each image).

One function per stage, all on ``[B, 3, H, W]`` float tensors in [0, 1]:
per-sample parameters where Real-ESRGAN draws them per sample (kernels, noise, JPEG
quality), one resize per batch (as in its batched GPU pipeline, since a batch must keep
one size). The defaults of :class:`DegradationConfig` are the published
``train_realesrnet_x4plus`` options. JPEG goes through Pillow's libjpeg codec (the
real thing, not a differentiable approximation: this runs on data, not in the graph).
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor

__all__ = [
    "BlurConfig",
    "StageConfig",
    "DegradationConfig",
    "gaussian_kernel",
    "generalized_gaussian_kernel",
    "plateau_kernel",
    "sinc_kernel",
    "random_blur_kernel",
    "random_sinc_or_pulse",
    "blur",
    "resize",
    "gaussian_noise",
    "poisson_noise",
    "jpeg",
    "degrade",
    "degrade_image",
    "image_seed",
]

KERNEL_TYPES = ("iso", "aniso", "generalized_iso", "generalized_aniso", "plateau_iso", "plateau_aniso")
RESIZE_MODES = ("area", "bilinear", "bicubic")


@dataclass
class BlurConfig:
    """How one blur kernel is drawn (sizes in pixels, σ in pixels, angles in radians)."""

    kernel_types: tuple[str, ...] = KERNEL_TYPES
    kernel_probs: tuple[float, ...] = (0.45, 0.25, 0.12, 0.03, 0.12, 0.03)
    sigma: tuple[float, float] = (0.2, 3.0)
    beta_generalized: tuple[float, float] = (0.5, 4.0)
    beta_plateau: tuple[float, float] = (1.0, 2.0)
    sinc_prob: float = 0.1  # a sinc (ringing/overshoot) kernel instead of a Gaussian-family one
    sizes: tuple[int, ...] = tuple(2 * v + 1 for v in range(3, 11))  # 7, 9, ..., 21
    max_size: int = 21  # every kernel is zero-padded to this, so a batch stacks


@dataclass
class StageConfig:
    """One order of degradation: blur → resize → noise → JPEG."""

    blur: BlurConfig = field(default_factory=BlurConfig)
    blur_prob: float = 1.0
    resize_probs: tuple[float, float, float] = (0.2, 0.7, 0.1)  # up, down, keep
    resize_range: tuple[float, float] = (0.15, 1.5)
    gaussian_noise_prob: float = 0.5  # else Poisson
    noise_sigma: tuple[float, float] = (1.0, 30.0)  # in 8-bit levels
    poisson_scale: tuple[float, float] = (0.05, 3.0)
    gray_noise_prob: float = 0.4
    jpeg_quality: tuple[int, int] = (30, 95)


def _second_stage() -> StageConfig:
    return StageConfig(
        blur=BlurConfig(sigma=(0.2, 1.5)),
        blur_prob=0.8,
        resize_probs=(0.3, 0.4, 0.3),
        resize_range=(0.3, 1.2),
        noise_sigma=(1.0, 25.0),
        poisson_scale=(0.05, 2.5),
    )


@dataclass
class DegradationConfig:
    """The whole pipeline; defaults = Real-ESRGAN x4plus (``train_realesrnet_x4plus.yml``)."""

    scale: int = 4
    first: StageConfig = field(default_factory=StageConfig)
    second: StageConfig = field(default_factory=_second_stage)
    final_sinc_prob: float = 0.8
    final_jpeg_quality: tuple[int, int] = (30, 95)


# --------------------------------------------------------------------------- drawing


def _uniform(gen: torch.Generator, lo: float, hi: float) -> float:
    return lo + (hi - lo) * float(torch.rand((), generator=gen, dtype=torch.float64))


def _choice(gen: torch.Generator, probs) -> int:
    return int(torch.multinomial(torch.tensor(probs, dtype=torch.float64), 1, generator=gen))


def _chance(gen: torch.Generator, p: float) -> bool:
    return float(torch.rand((), generator=gen, dtype=torch.float64)) < p


def _shape_beta(gen: torch.Generator, lo: float, hi: float) -> float:
    # Half the draws below 1 (heavier tails), half above (flatter top), as Real-ESRGAN does.
    return _uniform(gen, lo, 1.0) if _chance(gen, 0.5) else _uniform(gen, 1.0, hi)


# --------------------------------------------------------------------------- kernels


def _grid(size: int) -> Tensor:
    r = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    yy, xx = torch.meshgrid(r, r, indexing="ij")
    return torch.stack([xx, yy], -1)  # [k, k, 2] (x, y)


def _mahalanobis(size: int, sigma_x: float, sigma_y: float, theta: float) -> Tensor:
    """``dᵀ Σ⁻¹ d`` on the kernel grid, Σ = R(θ) diag(σx², σy²) R(θ)ᵀ."""
    c, s = math.cos(theta), math.sin(theta)
    rot = torch.tensor([[c, -s], [s, c]], dtype=torch.float64)
    cov = rot @ torch.diag(torch.tensor([sigma_x**2, sigma_y**2], dtype=torch.float64)) @ rot.T
    d = _grid(size)
    return torch.einsum("...i,ij,...j->...", d, torch.linalg.inv(cov), d)


def _normalised(k: Tensor) -> Tensor:
    return (k / k.sum()).float()


def gaussian_kernel(size: int, sigma_x: float, sigma_y: float | None = None, theta: float = 0.0) -> Tensor:
    """Bivariate Gaussian ``[size, size]`` (sums to 1); isotropic when ``sigma_y`` is None."""
    m = _mahalanobis(size, sigma_x, sigma_x if sigma_y is None else sigma_y, theta)
    return _normalised(torch.exp(-0.5 * m))


def generalized_gaussian_kernel(size: int, sigma_x: float, sigma_y: float, theta: float, beta: float) -> Tensor:
    """``exp(-½ (dᵀΣ⁻¹d)^β)``: β < 1 heavier tails than a Gaussian, β > 1 a flatter top."""
    return _normalised(torch.exp(-0.5 * _mahalanobis(size, sigma_x, sigma_y, theta) ** beta))


def plateau_kernel(size: int, sigma_x: float, sigma_y: float, theta: float, beta: float) -> Tensor:
    """``1 / (1 + (dᵀΣ⁻¹d)^β)``: a flat top with slowly decaying shoulders."""
    return _normalised(1.0 / (1.0 + _mahalanobis(size, sigma_x, sigma_y, theta) ** beta))


def sinc_kernel(size: int, cutoff: float, pad_to: int = 0) -> Tensor:
    """Ideal circular low-pass ``ω J₁(ω r) / (2π r)`` (cutoff ``ω`` in rad/pixel), sums to 1.

    Its ringing is the overshoot that sharpened, resized or JPEG'd web images carry.
    """
    r = _grid(size).norm(dim=-1)
    safe = torch.where(r == 0, torch.ones_like(r), r)
    k = cutoff * torch.special.bessel_j1(cutoff * safe) / (2 * math.pi * safe)
    k = torch.where(r == 0, torch.full_like(r, cutoff**2 / (4 * math.pi)), k)
    k = _normalised(k)
    return _pad_kernel(k, pad_to) if pad_to > size else k


def _pad_kernel(k: Tensor, size: int) -> Tensor:
    p = (size - k.shape[-1]) // 2
    return F.pad(k, (p, p, p, p))


def random_blur_kernel(cfg: BlurConfig, gen: torch.Generator) -> Tensor:
    """One kernel of the family, ``[max_size, max_size]`` float32 summing to 1."""
    size = cfg.sizes[int(torch.randint(len(cfg.sizes), (), generator=gen))]
    if _chance(gen, cfg.sinc_prob):
        cutoff = _uniform(gen, math.pi / 3, math.pi) if size < 13 else _uniform(gen, math.pi / 5, math.pi)
        return sinc_kernel(size, cutoff, pad_to=cfg.max_size)
    kind = cfg.kernel_types[_choice(gen, cfg.kernel_probs)]
    sx = _uniform(gen, *cfg.sigma)
    if kind.endswith("iso") and not kind.endswith("aniso"):
        sy, theta = sx, 0.0
    else:
        sy, theta = _uniform(gen, *cfg.sigma), _uniform(gen, -math.pi, math.pi)
    if kind.startswith("generalized"):
        k = generalized_gaussian_kernel(size, sx, sy, theta, _shape_beta(gen, *cfg.beta_generalized))
    elif kind.startswith("plateau"):
        k = plateau_kernel(size, sx, sy, theta, _shape_beta(gen, *cfg.beta_plateau))
    else:
        k = gaussian_kernel(size, sx, sy, theta)
    return _pad_kernel(k, cfg.max_size)


def random_sinc_or_pulse(cfg: DegradationConfig, gen: torch.Generator) -> Tensor:
    """The final-stage filter: a sinc with probability ``final_sinc_prob``, else identity."""
    size = cfg.first.blur.max_size
    if _chance(gen, cfg.final_sinc_prob):
        ks = cfg.first.blur.sizes[int(torch.randint(len(cfg.first.blur.sizes), (), generator=gen))]
        return sinc_kernel(ks, _uniform(gen, math.pi / 3, math.pi), pad_to=size)
    pulse = torch.zeros(size, size)
    pulse[size // 2, size // 2] = 1.0
    return pulse


# --------------------------------------------------------------------------- stages


def blur(x: Tensor, kernels: Tensor) -> Tensor:
    """Filter each image with its own kernel: ``x [B,3,H,W]``, ``kernels [B,k,k]`` (k odd).

    One grouped convolution for the batch; borders reflect (replicate when the image is
    smaller than the kernel's half-width).
    """
    b, c, h, w = x.shape
    k = kernels.shape[-1]
    p = k // 2
    mode = "reflect" if min(h, w) > p else "replicate"
    xp = F.pad(x.reshape(1, b * c, h, w), (p, p, p, p), mode=mode)
    weight = kernels.to(x.dtype).repeat_interleave(c, dim=0)[:, None]
    # Every kernel here is point-symmetric, so correlation (conv2d) equals convolution.
    return F.conv2d(xp, weight, groups=b * c).reshape(b, c, h, w)


def resize(x: Tensor, size: tuple[int, int], mode: str) -> Tensor:
    """``F.interpolate`` to ``size`` with one of ``RESIZE_MODES`` (bicubic may overshoot: clamp later)."""
    if mode not in RESIZE_MODES:
        raise ValueError(f"resize mode must be one of {RESIZE_MODES}, got {mode!r}")
    size = (max(1, int(size[0])), max(1, int(size[1])))
    if mode == "area":
        return F.interpolate(x, size=size, mode="area")
    return F.interpolate(x, size=size, mode=mode, align_corners=False)


def gaussian_noise(x: Tensor, sigma: Tensor, gray: Tensor, gen: torch.Generator) -> Tensor:
    """Add N(0, σ²) noise, ``sigma [B]`` in [0, 1] units; ``gray [B]`` bool: one noise for all channels."""
    b, c, h, w = x.shape
    colour = torch.randn(x.shape, generator=gen, dtype=x.dtype)
    grey = torch.randn((b, 1, h, w), generator=gen, dtype=x.dtype).expand(b, c, h, w)
    noise = torch.where(gray.view(b, 1, 1, 1), grey, colour)
    return x + noise * sigma.to(x.dtype).view(b, 1, 1, 1)


def poisson_noise(x: Tensor, scale: Tensor, gray: Tensor, gen: torch.Generator) -> Tensor:
    """Shot noise: ``Poisson(x·v)/v − x`` times ``scale [B]``, v = the image's number of levels (a power of 2).

    Grey noise is computed on the luma and added to every channel.
    """
    b, c, h, w = x.shape
    x = x.clamp(0, 1)
    q = (x * 255).round()
    out = torch.empty_like(x)
    for i in range(b):
        img = (0.299 * q[i, 0] + 0.587 * q[i, 1] + 0.114 * q[i, 2]).round()[None] if bool(gray[i]) else q[i]
        # Distinct 8-bit levels by a 256-bin count (torch.unique sorts: 10x slower here).
        used = int((torch.bincount(img.flatten().to(torch.int64), minlength=256) > 0).sum())
        levels = 2 ** math.ceil(math.log2(max(2, used)))
        img = img / 255
        noise = torch.poisson(img * levels, generator=gen) / levels - img
        out[i] = x[i] + noise.expand(c, h, w) * float(scale[i])
    return out


def jpeg(x: Tensor, quality: Tensor) -> Tensor:
    """JPEG-compress each image at its own ``quality [B]`` (int 1..95) with libjpeg (Pillow, 4:2:0)."""
    out = torch.empty_like(x)
    arr = (x.clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).contiguous().numpy()
    for i in range(x.shape[0]):
        buf = io.BytesIO()
        Image.fromarray(arr[i]).save(buf, format="JPEG", quality=int(quality[i]))
        buf.seek(0)
        dec = np.asarray(Image.open(buf).convert("RGB"))
        out[i] = torch.from_numpy(dec.copy()).permute(2, 0, 1).to(x.dtype) / 255.0
    return out


def _noise(x: Tensor, st: StageConfig, gen: torch.Generator) -> Tensor:
    b = x.shape[0]
    use_gauss = torch.tensor([_chance(gen, st.gaussian_noise_prob) for _ in range(b)])
    gray = torch.tensor([_chance(gen, st.gray_noise_prob) for _ in range(b)])
    sigma = torch.tensor([_uniform(gen, *st.noise_sigma) / 255.0 for _ in range(b)])
    pscale = torch.tensor([_uniform(gen, *st.poisson_scale) for _ in range(b)])
    out = x.clone()
    g, p = use_gauss.nonzero()[:, 0], (~use_gauss).nonzero()[:, 0]
    if len(g):
        out[g] = gaussian_noise(x[g], sigma[g], gray[g], gen)
    if len(p):
        out[p] = poisson_noise(x[p], pscale[p], gray[p], gen)
    return out


def _jpeg_random(x: Tensor, q_range: tuple[int, int], gen: torch.Generator) -> Tensor:
    q = torch.randint(q_range[0], q_range[1] + 1, (x.shape[0],), generator=gen)
    return jpeg(x.clamp(0, 1), q)


def _stage(x: Tensor, st: StageConfig, size_of_scale, gen: torch.Generator) -> Tensor:
    b = x.shape[0]
    if _chance(gen, st.blur_prob):
        x = blur(x, torch.stack([random_blur_kernel(st.blur, gen) for _ in range(b)]))
    kind = _choice(gen, st.resize_probs)
    s = _uniform(gen, 1.0, st.resize_range[1]) if kind == 0 else _uniform(gen, st.resize_range[0], 1.0) if kind == 1 else 1.0
    mode = RESIZE_MODES[int(torch.randint(len(RESIZE_MODES), (), generator=gen))]
    x = resize(x, size_of_scale(s), mode)
    x = _noise(x, st, gen).clamp(0, 1)
    return _jpeg_random(x, st.jpeg_quality, gen)


def degrade(hr: Tensor, cfg: DegradationConfig | None = None, generator: torch.Generator | None = None) -> Tensor:
    """HR batch ``[B,3,H,W]`` in [0,1] (H, W multiples of ``scale``) → LR ``[B,3,H/s,W/s]``, 8-bit levels.

    Two stages (the first resizes relative to HR, the second relative to the final LR
    size), then resize to exactly ``H/s × W/s`` with a final sinc, and JPEG, in random order.
    """
    cfg = cfg or DegradationConfig()
    gen = generator if generator is not None else torch.Generator().manual_seed(0)
    if hr.dim() != 4 or hr.shape[1] != 3:
        raise ValueError(f"degrade expects hr [B,3,H,W], got {tuple(hr.shape)}")
    b, _, h, w = hr.shape
    s = cfg.scale
    if h % s or w % s:
        raise ValueError(f"HR size {h}x{w} is not a multiple of the scale {s} (modcrop first)")
    lh, lw = h // s, w // s
    x = hr.float().clamp(0, 1)
    x = _stage(x, cfg.first, lambda r: (h * r, w * r), gen)
    x = _stage(x, cfg.second, lambda r: (lh * r, lw * r), gen)
    sinc = torch.stack([random_sinc_or_pulse(cfg, gen) for _ in range(b)])
    mode = RESIZE_MODES[int(torch.randint(len(RESIZE_MODES), (), generator=gen))]
    if _chance(gen, 0.5):
        x = blur(resize(x, (lh, lw), mode), sinc)
        x = _jpeg_random(x, cfg.final_jpeg_quality, gen)
    else:
        x = _jpeg_random(x, cfg.final_jpeg_quality, gen)
        x = blur(resize(x, (lh, lw), mode), sinc)
    return ((x.clamp(0, 1) * 255).round() / 255).to(hr.dtype if hr.is_floating_point() else torch.float32)


def image_seed(name: str, seed: int = 0) -> int:
    """A stable per-image seed (evaluation: each image has its own fixed degradation)."""
    import hashlib

    return (int.from_bytes(hashlib.sha256(name.encode()).digest()[:6], "little") + seed * 1_000_003) % (2**62)


def degrade_image(hr: Tensor, name: str, seed: int = 0, cfg: DegradationConfig | None = None) -> Tensor:
    """The evaluation protocol's LR of one HR image ``[3,H,W]``: :func:`degrade` seeded by ``(name, seed)``."""
    gen = torch.Generator().manual_seed(image_seed(name, seed))
    return degrade(hr[None], cfg, gen)[0]
