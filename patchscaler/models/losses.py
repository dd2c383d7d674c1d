"""GRM training loss (SPEC §1.1): L1 regression plus the confidence likelihood term.

    L = mean|y0 − x0|  +  λ · mean_pixels( C · e² − η · log C ),   e² = mean_channels (y0 − x0)²

Decisions and why:

* **Per LR pixel, channel-averaged e².** C has one channel per LR pixel, i.e. per s×s HR
  block of all three colours (3s² latent values), so its error is the mean over those.
  For fixed features the term is minimised at ``C = min(1, η / E[e²])``: C becomes an
  inverse-MSE predictor at the finest granularity, and the sampler's patch difficulty
  (mean C over a patch) ranks patches by error. Per-patch pooling inside the loss would
  tie C to one patch size; per pixel it works for any patch size.
* **η = 2e-6** (latent units, latent = 2·HR − 1). C saturates at 1 where e² < η, and
  saturated values carry no ranking, so η sits below almost all errors: uint8
  quantisation alone gives e² ≈ 4·(1/255)²/12 ≈ 5e-6, flat regions ~1e-5, textured ones
  1e-2..1e-1. C then spans ~1e-5..1 (logit −11..+∞, fine for a sigmoid; the gradient
  w.r.t. the logit is (1−C)(C·e² − η), which does not vanish at small C).
* **λ = 0.01/η**, i.e. the term is measured in units of η (its value scales with η).
  The GRM's confidence head reads detached trunk features (see ``models/grm.py``), so λ
  only sets the size of the head's gradients, and Adam is scale-free per parameter; the
  regression is trained by L1 alone — the GRM's PSNR is a project bar too. λ·η = 0.01
  keeps the logged loss readable (L1 ≈ 0.03, confidence part ≈ 0.01·(a few)).
* **e² is detached in the confidence term** (default). Without it the term adds
  ``2λ·C·e`` ≈ ``2λη/e`` to the regression gradient — strongest on the *smallest*
  errors, a log-loss that trades textured regions for flat ones. The loss value is the
  paper's; only this gradient path is cut. ``detach_error=False`` restores it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from patchscaler.inference.codec import PixelUnshuffleCodec

__all__ = ["DistillLoss", "GRMLoss", "artifact_map_loss", "confidence_term", "flat_mask", "frequency_loss", "gan_loss",
           "texture_energy_loss", "grm_loss", "usm_sharpen", "with_tone_of"]

DEFAULT_ETA = 2e-6
DEFAULT_LAMBDA = 0.01 / DEFAULT_ETA


def grm_loss(
    y0: Tensor,
    x0: Tensor,
    conf: Tensor,
    lam: float = DEFAULT_LAMBDA,
    eta: float = DEFAULT_ETA,
    detach_error: bool = True,
    eps: float = 1e-12,
) -> tuple[Tensor, dict[str, float]]:
    """Paper loss for one batch.

    Args:
        y0: predicted latent ``[B, C, h, w]``; x0: true latent, same shape.
        conf: confidence ``[B, 1, h, w]`` in (0, 1).
        lam, eta: λ and η of the formula above (η in squared latent units).
    Returns:
        ``(loss scalar fp32, {"l1", "conf", "mse"} floats for logging)``.
    """
    diff = y0.float() - x0.float()
    l1 = diff.abs().mean()
    e2 = diff.pow(2).mean(dim=1, keepdim=True)
    conf_term = confidence_term(e2.detach() if detach_error else e2, conf, eta, eps)
    loss = l1 + lam * conf_term
    return loss, {"l1": l1.item(), "conf": conf_term.item() / eta, "mse": e2.mean().item()}


def confidence_term(e2: Tensor, conf: Tensor, eta: float = DEFAULT_ETA, eps: float = 1e-12) -> Tensor:
    """``mean(C·e² − η·log C)``: the likelihood term that makes ``conf`` ``[B,1,h,w]`` an
    inverse-error predictor of the per-pixel squared error ``e2`` ``[B,1,h,w]`` (module docstring)."""
    c = conf.float()
    return (c * e2 - eta * torch.log(c.clamp_min(eps))).mean()


@dataclass
class GRMLoss:
    """Callable wrapper holding λ, η (see module docstring)."""

    lam: float = DEFAULT_LAMBDA
    eta: float = DEFAULT_ETA
    detach_error: bool = True

    def __call__(self, y0: Tensor, x0: Tensor, conf: Tensor) -> tuple[Tensor, dict[str, float]]:
        return grm_loss(y0, x0, conf, self.lam, self.eta, self.detach_error)


def _gaussian_1d(sigma: float, side: int) -> Tensor:
    """Normalised 1-D Gaussian of ``sigma``, cut at 3σ and below ``side`` (the shorter side of
    the image it blurs: reflect padding needs a radius smaller than it)."""
    radius = min(int(math.ceil(3 * sigma)), side - 1)
    x = torch.arange(-radius, radius + 1, dtype=torch.float32)
    k = torch.exp(-0.5 * (x / sigma) ** 2)
    return k / k.sum()


def _separable_blur(x: Tensor, k: Tensor) -> Tensor:
    """Depthwise Gaussian blur of ``[B,C,H,W]`` with the 1-D kernel ``k``, edges reflected."""
    c, r = x.shape[1], k.numel() // 2
    kh = k.to(x).view(1, 1, 1, -1).expand(c, 1, 1, -1)
    kv = k.to(x).view(1, 1, -1, 1).expand(c, 1, -1, 1)
    x = F.conv2d(F.pad(x, (r, r, 0, 0), mode="reflect"), kh, groups=c)
    return F.conv2d(F.pad(x, (0, 0, r, r), mode="reflect"), kv, groups=c)


def with_tone_of(target: Tensor, reference: Tensor, sigma: float) -> Tensor:
    """``target [B,C,H,W]`` with its Gaussian low-pass of ``sigma`` pixels replaced by
    ``reference``'s: ``target − blur(target) + blur(reference)`` (not clamped).

    Why: the teacher (Real-ESRGAN x4plus) darkens: on seeded real B100 its output is
    2.9 levels below the ground truth on average (up to 11 on single images), and a
    student distilled from it was 2.3 levels dark and lost ~0.15 dB of PSNR to it. The
    teacher's strokes and texture are what it is distilled for; its tone and colour at
    scales of ``sigma`` pixels and above are taken from the ground truth instead.
    """
    k = _gaussian_1d(sigma, min(target.shape[-2:]))
    return target + _separable_blur(reference.to(target) - target, k)


# `flat_mask`: the teacher's detail is measured above a Gaussian of FLAT_DETAIL_SIGMA HR
# pixels (the same band `DistillLoss.lowpass_sigma` = 1.5 leaves to the texture terms),
# its local RMS over a Gaussian window of FLAT_WINDOW_SIGMA, and a region counts as flat
# where that RMS is well below FLAT_LEVELS 8-bit levels (weight exp(−(rms/levels)²)).
# On Real-ESRGAN's ×4 of real Set14 monarch, lenna and face, RealSRSet frog and the README
# dandelion the mean mask is 0.58–0.76: petals, skin and sky count as flat, edges, wing
# veins and the seed head do not (looked at as images).
FLAT_DETAIL_SIGMA = 1.5
FLAT_WINDOW_SIGMA = 4.0
FLAT_LEVELS = 3.0


def flat_mask(img: Tensor) -> Tensor:
    """Where ``img [B,C,H,W]`` (in [0, 1]) is flat: ``[B,1,H,W]`` in (0, 1], 1 where it has
    no detail finer than `FLAT_DETAIL_SIGMA` pixels, → 0 where its local detail RMS is
    several times `FLAT_LEVELS` 8-bit levels."""
    side = min(img.shape[-2:])
    x = img.float()
    detail = x - _separable_blur(x, _gaussian_1d(FLAT_DETAIL_SIGMA, side))
    power = _separable_blur(detail.pow(2).mean(1, keepdim=True), _gaussian_1d(FLAT_WINDOW_SIGMA, side))
    return torch.exp(-power.clamp_min(0) * (255.0 / FLAT_LEVELS) ** 2)


def usm_sharpen(img: Tensor, weight: float = 0.5, sigma: float = 8.0, threshold: float = 10 / 255) -> Tensor:
    """Unsharp-masked ``img [B,3,H,W]`` in [0,1]: the sharpened ground truth Real-ESRGAN trains on.

    ``img + weight·(img − blur)``, applied only where the detail ``|img − blur|`` exceeds
    ``threshold`` (through a blurred mask, so flat regions and noise are left alone),
    clamped to [0, 1]. Why: L1 to a ground truth the LR cannot determine pulls towards the
    mean of its possibilities, which is blur; a sharper target offsets part of that.
    """
    k = _gaussian_1d(sigma, min(img.shape[-2:]))
    residual = img - _separable_blur(img, k)
    mask = (residual.abs() > threshold).to(img.dtype)
    soft = _separable_blur(mask, k)
    sharp = (img + weight * residual).clamp(0, 1)
    return soft * sharp + (1 - soft) * img


@dataclass
class DistillLoss:
    """The `real` GRM's distillation loss (issue 21): L1 to the teacher, L1 to the sharpened
    ground truth, and the confidence term of :func:`grm_loss` against the *ground truth*.

        L = w_t·|y0 − t0| + w_gt·|y0 − usm(x0)| + λ·mean(C·e² − η·log C),  e² = mean_c (y0 − x0)²

    All in latent units (latent = 2·HR − 1). The confidence stays tied to the true error
    because the sampler and the Spearman bar use it to rank where the GRM is wrong, not
    where it disagrees with the teacher.

    ``lowpass_sigma`` > 0 (HR pixels; the latent must then be the pixel-unshuffled HR of
    ``scale``) takes both L1 terms on the Gaussian-blurred difference instead: they then
    fix colour, tone and edges, and leave the strokes finer than ~2π·σ pixels to the
    texture terms (feature, GAN, energy). Why: a student that cannot place the teacher's
    fine strokes minimises a full-band L1 by painting none (the mean of the possible
    placements is flat), and that pull is the wax.

    ``w_flat`` > 0 adds a full-band L1 to the teacher weighted by `flat_mask` of the
    teacher's image: ``w_flat·mean(M·|y0 − t0|)``. Why: with the fine band left to the
    texture terms, a student that cannot remove heavy noise keeps it as speckle where the
    teacher painted smooth petals or skin (seeded real Set14: monarch 1.5 dB and lenna
    1.4 dB below the teacher, below bicubic on monarch). Where the teacher is flat the
    answer is not ambiguous (flat), so a full-band L1 there costs no wax; textured
    regions keep the low-pass L1 alone. Measured at weights 1 and 4 on the shipped recipe:
    the speckle only a little fainter, Set14 no better (benchmarks/results/real-distill.md,
    seventh session): what stays is mostly noise the compact GRM cannot remove.
    """

    w_teacher: float = 1.0
    w_gt: float = 0.5
    lam: float = DEFAULT_LAMBDA
    eta: float = DEFAULT_ETA
    lowpass_sigma: float = 0.0
    scale: int = 4
    w_flat: float = 0.0

    def _l1(self, d: Tensor) -> Tensor:
        if self.lowpass_sigma <= 0:
            return d.abs().mean()
        hr = F.pixel_shuffle(d, self.scale)  # latent → HR layout; the codec is linear, so this is the HR difference ×2
        return _separable_blur(hr, _gaussian_1d(self.lowpass_sigma, min(hr.shape[-2:]))).abs().mean()

    def __call__(self, y0: Tensor, t0: Tensor, x0_sharp: Tensor, x0: Tensor, conf: Tensor) -> tuple[Tensor, dict[str, float]]:
        y = y0.float()
        l1_t = self._l1(y - t0.float())
        l1_usm = self._l1(y - x0_sharp.float())
        diff = y.detach() - x0.float()  # the confidence term's error is detached, as in grm_loss
        conf_term = confidence_term(diff.pow(2).mean(dim=1, keepdim=True), conf, self.eta)
        loss = self.w_teacher * l1_t + self.w_gt * l1_usm + self.lam * conf_term
        parts = {"l1": diff.abs().mean().item(), "l1_teacher": l1_t.item(), "l1_usm": l1_usm.item(),
                 "conf": conf_term.item() / self.eta}
        if self.w_flat > 0:
            t = t0.float()
            mask = flat_mask(PixelUnshuffleCodec(self.scale).decode(t))  # on the teacher's HR image
            flat = (mask * F.pixel_shuffle(y - t, self.scale).abs()).mean()
            loss = loss + self.w_flat * flat
            parts["flat"] = flat.item()
        return loss, parts


def gan_loss(logits: Tensor, real: bool) -> Tensor:
    """Vanilla (non-saturating) GAN loss of per-pixel logits: BCE against all-real or all-fake."""
    target = torch.ones_like(logits) if real else torch.zeros_like(logits)
    return F.binary_cross_entropy_with_logits(logits.float(), target.float())


def _local_variance(x: Tensor, size: int = 7) -> Tensor:
    """Variance of ``x [B,1,H,W]`` over each ``size``×``size`` window (reflect-padded) → same shape."""
    r = size // 2
    xp = F.pad(x, (r, r, r, r), mode="reflect")
    mean = F.avg_pool2d(xp, size, stride=1)
    return (F.avg_pool2d(xp * xp, size, stride=1) - mean * mean).clamp_min(0)


def artifact_map_loss(sr: Tensor, sr_ema: Tensor, target: Tensor, size: int = 7, power: float = 0.2) -> Tensor:
    """The LDL artefact loss (Liang et al., "Details or Artifacts", CVPR 2022), on images ``[B,3,H,W]``.

    A GAN-trained generator's artefacts are where its residual ``|target − sr|`` is both
    locally erratic (high variance over a 7×7 window) and larger than that of its own EMA,
    which moves slowly and so averages the unstable details away. The map
    ``M = var_global(R)^power · var_local(R)``, zeroed where the EMA is worse than the current
    model, weights an L1 penalty ``|M·sr − M·target|``: realistic detail (stable across
    steps) is left alone, flicker is suppressed. ``power`` = 1/5 as in the paper.
    """
    residual = (target - sr).abs().mean(1, keepdim=True).detach()
    residual_ema = (target - sr_ema).abs().mean(1, keepdim=True)
    global_w = residual.flatten(1).var(dim=1).pow(power).view(-1, 1, 1, 1)
    weight = global_w * _local_variance(residual, size)
    weight = torch.where(residual < residual_ema, torch.zeros_like(weight), weight)
    return (weight * sr - weight * target).abs().mean()


def frequency_loss(sr: Tensor, target: Tensor) -> Tensor:
    """Mean absolute difference of the 2-D spectra (``rfft2``, orthonormal) of ``[B,3,H,W]`` images.

    An L1 in pixel space is satisfied by a blurred answer; in the spectrum every missing
    high frequency costs as much as a low one, so it pushes towards the target's texture energy.
    """
    d = torch.fft.rfft2(sr.float(), norm="ortho") - torch.fft.rfft2(target.float(), norm="ortho")
    return d.abs().mean()


def texture_energy_loss(sr: Tensor, target: Tensor, window: int = 32) -> Tensor:
    """Mean absolute difference of the *amplitude* spectra of ``window``² tiles of ``[B,3,H,W]`` images.

    `frequency_loss` compares complex spectra, so detail in the wrong place (the wrong
    phase) costs up to twice what leaving it out costs, and a student that cannot place
    the teacher's hair and grass exactly learns to paint none: wax. Amplitudes drop the
    phase: a tile is charged for how much energy it has at each frequency, not where its
    strokes fall. Tiling keeps the energy local (the texture goes where the teacher put
    texture, the flat sky stays flat). ``H`` and ``W`` must be multiples of ``window``.
    """
    B, C, H, W = sr.shape
    if H % window or W % window:
        raise ValueError(f"texture_energy_loss: {H}x{W} is not a multiple of the {window}-pixel tile")

    def amplitudes(x: Tensor) -> Tensor:
        tiles = x.float().reshape(B, C, H // window, window, W // window, window).transpose(3, 4)
        return torch.fft.rfft2(tiles, norm="ortho").abs()

    return (amplitudes(sr) - amplitudes(target)).abs().mean()
