"""Variance-preserving noise schedule and DDIM timestep sequences (SPEC §2).

Forward process at integer timestep ``t ∈ [0, T)``::

    y_t = sqrt(ᾱ_t)·x0 + sqrt(1 − ᾱ_t)·ε,    ε ~ N(0, I)

``alphas_cumprod[t] = ᾱ_t``. The convention for "no noise" (the end of a DDIM
trajectory, the clean ``x̂0``) is the timestep ``-1``, whose ᾱ is 1; the ops
(`group_denoise_step`) and the sampler use the same convention.

Why the cosine schedule (Nichol & Dhariwal 2021) and not DDPM's linear one: the
pixel-unshuffle latent is pixel data of a 64×64 HR patch, the regime the cosine
schedule was designed for, and only ``t ≤ T3 ≈ 600`` is ever used. At the SPEC's
default start timesteps the two give (signal-to-noise ratio ᾱ/(1−ᾱ))::

    t      150     350     600
    cosine  15.7    2.55    0.51
    linear   3.7    0.40    0.026

With the linear schedule a *simple* patch (1–2 steps) would start buried under
noise of std 0.46 and a *hard* patch at t=600 would start from almost pure noise, so
the shortcut path (starting from the noised coarse latent ``y0``) would carry almost
nothing. The cosine schedule spreads t ≤ 600 over SNR 10⁴…0.5, the useful range for
refining a coarse restoration.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

__all__ = [
    "NUM_TRAIN_TIMESTEPS",
    "SCHEDULES",
    "make_alphas_cumprod",
    "ddim_timesteps",
    "ddim_step_pairs",
    "alpha_bar",
]

NUM_TRAIN_TIMESTEPS = 1000
SCHEDULES = ("cosine", "linear")


def make_alphas_cumprod(
    kind: str = "cosine", num_timesteps: int = NUM_TRAIN_TIMESTEPS, dtype: torch.dtype = torch.float32
) -> Tensor:
    """The ᾱ table ``[num_timesteps]`` (decreasing from ≈1 to ≈0), computed in float64, returned in `dtype`.

    kind: "cosine" (default, see module docstring; offset s = 0.008, β clipped to 0.999)
    or "linear" (DDPM: β from 1e-4 to 0.02, scaled for num_timesteps ≠ 1000).
    """
    if num_timesteps < 1:
        raise ValueError(f"num_timesteps must be >= 1, got {num_timesteps}")
    if kind == "cosine":
        s = 0.008

        def f(t: Tensor) -> Tensor:
            return torch.cos((t / num_timesteps + s) / (1 + s) * math.pi / 2) ** 2

        i = torch.arange(num_timesteps, dtype=torch.float64)
        betas = (1 - f(i + 1) / f(i)).clamp(max=0.999)
    elif kind == "linear":
        scale = 1000.0 / num_timesteps
        betas = torch.linspace(scale * 1e-4, scale * 0.02, num_timesteps, dtype=torch.float64)
    else:
        raise ValueError(f"unknown schedule {kind!r}; expected one of {SCHEDULES}")
    return torch.cumprod(1.0 - betas, dim=0).to(dtype)


def alpha_bar(alphas_cumprod: Tensor, t: Tensor) -> Tensor:
    """ᾱ at integer timesteps ``t`` (any shape, int64), with ᾱ(−1) = 1; same shape as t, table's dtype."""
    t = t.long()
    ones = torch.ones((), dtype=alphas_cumprod.dtype, device=alphas_cumprod.device)
    return torch.where(t < 0, ones, alphas_cumprod[t.clamp(min=0)])


def ddim_timesteps(t_start: int, num_steps: int) -> list[int]:
    """The ``num_steps`` timesteps a patch visits when it starts at ``t_start`` and takes
    ``num_steps`` DDIM steps down to x̂0, evenly spaced: ``⌊t_start·(N−k)/N + ½⌋`` for k = 0..N−1.

    The first is ``t_start`` itself (where the shortcut noising put the patch); the
    step from the last one goes to ``-1`` (x̂0). Strictly decreasing, all ≥ 0, so
    ``num_steps`` may be at most ``t_start + 1``.
    """
    if num_steps < 1:
        raise ValueError(f"num_steps must be >= 1, got {num_steps}")
    if t_start < 0:
        raise ValueError(f"t_start must be >= 0, got {t_start}")
    if num_steps > t_start + 1:
        raise ValueError(f"cannot take {num_steps} distinct steps from t={t_start}")
    # floor(x + 1/2), not round(): Python's round-half-to-even maps 1.5 and 2.5 both to 2.
    seq = [(2 * t_start * (num_steps - k) + num_steps) // (2 * num_steps) for k in range(num_steps)]
    if num_steps == t_start + 1:  # the rounding above would end on 0 twice
        seq = list(range(t_start, -1, -1))
    # With spacing t_start/N >= 1 the rounded values cannot collide.
    assert all(a > b for a, b in zip(seq, seq[1:])), seq
    return seq


def ddim_step_pairs(t_start: int, num_steps: int) -> list[tuple[int, int]]:
    """``[(t, t_next), ...]`` for each of the ``num_steps`` DDIM steps; the last t_next is −1 (x̂0)."""
    seq = ddim_timesteps(t_start, num_steps)
    return list(zip(seq, seq[1:] + [-1]))
