"""NIQE: Natural Image Quality Evaluator (Mittal, Soundararajan & Bovik, 2013).

No-reference quality: lower is better (closer to the statistics of pristine photos).

Algorithm (follows the authors' MATLAB `computequality.m` / `estimatemodelparam.m`
and BasicSR's port of it):

1. Y = BT.601 luma of the uint8-quantised image (`ycbcr.y_channel`), rounded to
   integers in [16, 235] (MATLAB works on a uint8 grey image; BasicSR uses Y the
   same way — MATLAB's own code uses `rgb2gray`, whose weights differ slightly),
   cropped to a whole number of 96×96 blocks (bottom/right remainder dropped).
2. MSCN coefficients: Î = (I − μ) / (σ + 1), with μ, σ the local mean and standard
   deviation under a 7×7 Gaussian window (σ_w = 7/6), replicate padding.
3. Per block, 18 features: GGD shape and scale of Î (via the AGGD moment-matching
   estimator with a 0.001-step grid over shapes 0.2…10), and for the four
   neighbour products Î·shift(Î) with shifts (0,1), (1,0), (1,1), (1,−1) (circular
   within the block) the AGGD shape, mean, left and right scale.
4. The same at half resolution (MATLAB bicubic `imresize(·, 0.5)`, antialiased;
   48×48 blocks), giving 36 features per block.
5. Fit a multivariate Gaussian (μ_d, Σ_d) to the blocks' features (mean ignoring
   NaNs; covariance over the blocks without NaN, unbiased) and compare with the
   pristine model (μ_p, Σ_p):

       NIQE = sqrt( (μ_p − μ_d)ᵀ · pinv((Σ_p + Σ_d) / 2) · (μ_p − μ_d) )

The pristine model is fitted the same way on sharp blocks of high-quality photos:
only blocks whose mean σ (step 2, full resolution) exceeds 0.75 × the image's
sharpest block are kept.

**Two pristine models ship in this folder.**

* ``"matlab"`` (the default, *standard NIQE*): `niqe_matlab_pristine.safetensors`, the
  authors' `modelparameters.mat` (125 pristine photos) that MATLAB's `niqe()` uses, as
  the mmagic package ships it (`niqe_pris_params.npz`, Apache-2.0; licence in
  `LICENSE-niqe-matlab-params.txt`). With it this module gives 5.7296 on Set14's baboon,
  MATLAB R2021a's value (tested), so its numbers compare with published ones.
* ``"project"``: `niqe_pristine.safetensors`, fitted on the project's HR training photos
  before the standard one was available here, kept as a second column for continuity
  with earlier results. It was fitted (../shared/data/train: BSDS500 train+test, T91, and the
large photos downscaled so their longer side is ≤ 1024 px) with

    python -m patchscaler.metrics.niqe --fit ../shared/data/train \
        --out patchscaler/metrics/niqe_pristine.safetensors

(529 images, 2273 sharp blocks; about 40 s on 2 CPU cores). Its absolute values differ
from published NIQE numbers; only comparisons between methods measured with it are
meaningful. The fit command, image and block counts are in the file's metadata
(`pristine_model_info()`).

Score images from the command line with `python -m patchscaler.metrics.niqe IMG...`.
Images must be at least 96×96 pixels (one block); with a single block the image's
own covariance is undefined and taken as zero.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from patchscaler.metrics.ycbcr import crop_border as _crop
from patchscaler.metrics.ycbcr import y_channel

BLOCK = 96
SHARPNESS_THRESHOLD = 0.75
NUM_FEATURES = 36
PRISTINE_MODELS = {
    "matlab": Path(__file__).with_name("niqe_matlab_pristine.safetensors"),
    "project": Path(__file__).with_name("niqe_pristine.safetensors"),
}
PRISTINE_PATH = PRISTINE_MODELS["project"]  # what --fit writes by default

# MATLAB grid `gam = 0.2:0.001:10` for the AGGD shape search; r(γ) = Γ(2/γ)²/(Γ(1/γ)Γ(3/γ))
# is strictly increasing on it, so the nearest grid value is found by binary search.
_GAM = torch.from_numpy(np.arange(0.2, 10.001, 0.001))
_R_GAM = torch.exp(2 * torch.lgamma(2 / _GAM) - torch.lgamma(1 / _GAM) - torch.lgamma(3 / _GAM))
_SHIFTS = ((0, 1), (1, 0), (1, 1), (1, -1))


def _gamma_ratio(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Γ(a)/Γ(b) for positive float64 tensors."""
    return torch.exp(torch.lgamma(a) - torch.lgamma(b))


def _mscn_taps() -> torch.Tensor:
    """1D factor of MATLAB `fspecial('gaussian', 7, 7/6)`: float64 [7], sums to 1."""
    r = torch.arange(7, dtype=torch.float64) - 3.0
    g = torch.exp(-(r**2) / (2 * (7.0 / 6.0) ** 2))
    return g / g.sum()


def _gaussian_blur_replicate(x: torch.Tensor) -> torch.Tensor:
    """7×7 Gaussian (σ = 7/6) filter of float64 [H,W] with replicate padding → [H,W].

    The window is separable, so two 7-tap passes replace a 49-tap 2D convolution
    (float64 conv2d has no fast CPU path and dominated the NIQE time).
    """
    g = _mscn_taps()
    h, w = x.shape
    xp = F.pad(x.view(1, 1, h, w), (3, 3, 3, 3), mode="replicate")[0, 0]
    rows = sum(g[k] * xp[k : k + h, :] for k in range(7))
    return sum(g[k] * rows[:, k : k + w] for k in range(7))


def mscn(img: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """MSCN coefficients and local σ of float64 [H,W] (values in 0..255) → both [H,W]."""
    mu = _gaussian_blur_replicate(img)
    sigma = torch.sqrt((_gaussian_blur_replicate(img * img) - mu * mu).abs())
    return (img - mu) / (sigma + 1.0), sigma


def aggd_params(v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Asymmetric generalised Gaussian fit per row of float64 [N,M].

    Returns (shape α, left scale β_l, right scale β_r), each [N]; NaN where a row has
    no negative or no positive values (e.g. a flat block).
    """
    neg, pos = v < 0, v > 0
    v2 = v * v
    left_std = torch.sqrt((v2 * neg).sum(1) / neg.sum(1))
    right_std = torch.sqrt((v2 * pos).sum(1) / pos.sum(1))
    gammahat = left_std / right_std
    rhat = v.abs().mean(1) ** 2 / v2.mean(1)
    rhatnorm = rhat * (gammahat**3 + 1) * (gammahat + 1) / (gammahat**2 + 1) ** 2
    # Nearest grid point = MATLAB's argmin((r_gam - rhatnorm).^2) (first one on ties).
    target = torch.nan_to_num(rhatnorm, nan=0.0)
    hi = torch.searchsorted(_R_GAM, target).clamp(1, _R_GAM.numel() - 1)
    lo = hi - 1
    pick_hi = (_R_GAM[hi] - target) ** 2 < (_R_GAM[lo] - target) ** 2
    alpha = _GAM[torch.where(pick_hi, hi, lo)]
    alpha = torch.where(torch.isnan(rhatnorm), torch.full_like(alpha, math.nan), alpha)
    scale = torch.sqrt(_gamma_ratio(1 / alpha, 3 / alpha))
    return alpha, left_std * scale, right_std * scale


def block_features(blocks: torch.Tensor) -> torch.Tensor:
    """18 NIQE features per block of MSCN coefficients: float64 [N,b,b] → [N,18]."""
    n = blocks.shape[0]
    flat = blocks.reshape(n, -1)
    alpha, bl, br = aggd_params(flat)
    feats = [alpha, (bl + br) / 2]
    for shift in _SHIFTS:
        prod = (blocks * torch.roll(blocks, shift, dims=(1, 2))).reshape(n, -1)
        alpha, bl, br = aggd_params(prod)
        mean = (br - bl) * _gamma_ratio(2 / alpha, 1 / alpha)
        feats += [alpha, mean, bl, br]
    return torch.stack(feats, dim=1)


def _blocks(x: torch.Tensor, size: int) -> torch.Tensor:
    """Non-overlapping size×size tiles of [H,W] (H, W multiples of size), row-major → [N,size,size]."""
    h, w = x.shape
    return x.reshape(h // size, size, w // size, size).permute(0, 2, 1, 3).reshape(-1, size, size)


def niqe_features(y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-block NIQE features and sharpness of a grey image.

    y: [H,W] float (values 0..255, e.g. rounded BT.601 Y), at least 96×96.
    Returns (features float64 [N,36], sharpness float64 [N] = mean local σ per block),
    N = floor(H/96)·floor(W/96).
    """
    from patchscaler.data.resize import imresize

    y = y.double()
    nh, nw = y.shape[0] // BLOCK, y.shape[1] // BLOCK
    if nh == 0 or nw == 0:
        raise ValueError(f"NIQE needs an image of at least {BLOCK}x{BLOCK} pixels, got {tuple(y.shape)}")
    img = y[: nh * BLOCK, : nw * BLOCK]
    coeffs, sigma = mscn(img)
    feats = [block_features(_blocks(coeffs, BLOCK))]
    sharpness = _blocks(sigma, BLOCK).mean(dim=(1, 2))
    half = imresize(img.float(), scale=0.5).double()  # MATLAB imresize(im, 0.5), antialiased
    coeffs, _ = mscn(half)
    feats.append(block_features(_blocks(coeffs, BLOCK // 2)))
    return torch.cat(feats, dim=1), sharpness


def _mvg(feats: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(nanmean [D], covariance [D,D] over rows without NaN, ddof=1; zeros if < 2 rows)."""
    mu = torch.nanmean(feats, dim=0)
    complete = feats[~torch.isnan(feats).any(dim=1)]
    if complete.shape[0] < 2:
        return mu, torch.zeros(feats.shape[1], feats.shape[1], dtype=torch.float64)
    return mu, torch.cov(complete.T)


@lru_cache(maxsize=4)
def _load_pristine(path: str) -> tuple[torch.Tensor, torch.Tensor]:
    from safetensors.torch import load_file

    if not os.path.isfile(path):
        raise FileNotFoundError(
            f"NIQE pristine model not found at {path}; fit it with "
            "`python -m patchscaler.metrics.niqe --fit ../shared/data/train --out <path>`"
        )
    t = load_file(path)
    return t["mu"].double(), t["cov"].double()


def pristine_model_info(path: str | os.PathLike = PRISTINE_PATH) -> dict[str, str]:
    """Metadata stored with a pristine model: fit command, image/block counts, sources."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        return dict(f.metadata() or {})


def _pristine_file(pristine: str | os.PathLike | None) -> str:
    """A pristine model's file from its name (``"matlab"``, ``"project"``) or a path; None = ``"matlab"``."""
    if pristine is None:
        pristine = "matlab"
    return str(PRISTINE_MODELS.get(pristine, pristine)) if isinstance(pristine, str) else os.fspath(pristine)


def _distance(mu_d: torch.Tensor, cov_d: torch.Tensor, pristine: str | os.PathLike | None) -> float:
    mu_p, cov_p = _load_pristine(_pristine_file(pristine))
    diff = (mu_p - mu_d).view(-1, 1)
    inv = torch.linalg.pinv((cov_p + cov_d) / 2)
    return math.sqrt(max((diff.T @ inv @ diff).item(), 0.0))


def niqe_scores(img: torch.Tensor, crop_border: int = 0, pristine=("matlab", "project")) -> dict[str, float]:
    """NIQE of one image against several pristine models (the features are computed once):
    ``{name: score}`` for each name or path in ``pristine``. See :func:`niqe`."""
    y = _crop(y_channel(img), crop_border).round()
    feats, _ = niqe_features(y)
    mu_d, cov_d = _mvg(feats)
    return {str(p): _distance(mu_d, cov_d, p) for p in pristine}


def niqe(img: torch.Tensor, crop_border: int = 0, pristine: str | os.PathLike | None = None) -> float:
    """NIQE score of one image (lower = more natural); see the module docstring.

    img: [3,H,W] or [1,3,H,W] float RGB in [0, 1] (quantised to uint8 here) or uint8;
    at least 96×96 after `crop_border`. `pristine`: ``"matlab"`` (default: standard NIQE,
    the authors' parameters), ``"project"`` (this project's own fit) or a .safetensors
    file with `mu` [36] and `cov` [36,36]. Deterministic.
    """
    key = "matlab" if pristine is None else pristine
    return niqe_scores(img, crop_border, (key,))[str(key)]


def fit_pristine(paths: list[Path], max_side: int = 1024, log=None) -> tuple[torch.Tensor, torch.Tensor, dict]:
    """Fit the pristine MVG on the sharp blocks of the images at `paths`.

    Images whose longer side exceeds `max_side` are first downscaled by the smallest
    integer factor that brings them within it (MATLAB bicubic, antialiased; makes the
    big photos cleaner and keeps them from outweighing the rest). Images smaller than
    one block are skipped. Returns (mu [36], cov [36,36], stats dict).
    """
    from patchscaler.data.images import load_image
    from patchscaler.data.resize import imresize, quantize

    kept, used, skipped = [], 0, 0
    for i, p in enumerate(paths):
        rgb = load_image(p)
        factor = math.ceil(max(rgb.shape[-2:]) / max_side)
        if factor > 1:
            rgb = quantize(imresize(rgb, scale=1.0 / factor))
        y = y_channel(rgb).round()
        if min(y.shape) < BLOCK:
            skipped += 1
            continue
        feats, sharp = niqe_features(y)
        kept.append(feats[sharp > SHARPNESS_THRESHOLD * sharp.max()])
        used += 1
        if log is not None and (i + 1) % 50 == 0:
            log(f"  {i + 1}/{len(paths)} images, {sum(k.shape[0] for k in kept)} blocks")
    if not kept:
        raise ValueError("no image of at least 96x96 pixels to fit the pristine model on")
    feats = torch.cat(kept)
    mu, cov = _mvg(feats)
    stats = {"images": str(used), "skipped_small": str(skipped), "blocks": str(feats.shape[0]), "max_side": str(max_side)}
    return mu, cov, stats


def _main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m patchscaler.metrics.niqe",
        description="Score images with NIQE, or fit the pristine model (--fit).",
    )
    parser.add_argument("images", nargs="*", help="image files to score")
    parser.add_argument("--fit", nargs="+", metavar="DIR", help="folders of pristine HR photos to fit the model on")
    parser.add_argument("--out", default=str(PRISTINE_PATH), help="where --fit writes the model (.safetensors)")
    parser.add_argument("--max-side", type=int, default=1024, help="downscale larger fit images to this (px)")
    parser.add_argument("--pristine", default=None, help="matlab (default, standard NIQE), project, or a .safetensors file")
    args = parser.parse_args(argv)

    from patchscaler.data.images import list_images, load_image

    if args.fit:
        paths = []
        for d in args.fit:
            if not os.path.isdir(d):
                print(f"error: {d}: not a folder", file=sys.stderr)
                return 2
            paths += list_images(d)
        if not paths:
            print(f"error: no images under {' '.join(args.fit)}", file=sys.stderr)
            return 2
        t0 = time.time()
        mu, cov, stats = fit_pristine(paths, args.max_side, log=lambda m: print(m, file=sys.stderr))
        from safetensors.torch import save_file

        stats["command"] = "python -m patchscaler.metrics.niqe " + " ".join(
            ["--fit", *args.fit, "--out", args.out, "--max-side", str(args.max_side)]
        )
        stats["sources"] = ", ".join(args.fit)
        save_file({"mu": mu.contiguous(), "cov": cov.contiguous()}, args.out, metadata=stats)
        os.chmod(args.out, 0o644)  # safetensors creates it owner-only; it ships in the package
        print(f"fitted on {stats['images']} images / {stats['blocks']} blocks in {time.time() - t0:.0f} s -> {args.out}")
        return 0
    if not args.images:
        parser.error("give image files to score, or --fit DIR")
    for p in args.images:
        try:
            score = niqe(load_image(p), pristine=args.pristine)
        except (OSError, ValueError) as e:
            print(f"error: {p}: {e}", file=sys.stderr)
            return 2
        print(f"{score:.4f}  {p}")
    return 0


if __name__ == "__main__":
    sys.exit(_main())
