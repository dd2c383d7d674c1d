"""Plain DDIM, the textbook baseline: every patch starts from pure noise (the last
training timestep) and takes the same fixed number of DDIM (η = 0) steps, whatever the
GRM's confidence. It shows what PGS's shortcut start and patch groups save; the quality
preset sets the step budget (`DDIM_STEPS`). Needs the set's Patch-DiT only.

    upscale(x, sampler="ddim", quality="fast")   # 10 steps for every patch
"""

from __future__ import annotations

import torch
from torch import Tensor

from patchscaler.diffusion.schedule import ddim_timesteps
from patchscaler.sampling.denoiser import PatchDenoiser
from patchscaler.sampling.engine import Sampler
from patchscaler.sampling.spec import SamplerSpec, register_sampler

__all__ = ["DDIM_STEPS", "DDIMSampler"]

# DDIM steps per patch for each quality preset: 20 to 50 is the usual range for DDIM
# on diffusion SR; 10 is the cheapest that still starts from noise.
DDIM_STEPS = {"fast": 10, "balanced": 20, "detail": 50}


class DDIMSampler(Sampler):
    """``steps`` DDIM steps for every patch from ``T − 1`` (pure noise: ᾱ ≈ 0 there);
    one group, named "ddim". Calls and output as `patchscaler.sampling.engine.Sampler`."""

    name = "ddim"

    def __init__(self, denoiser: PatchDenoiser, steps: int = DDIM_STEPS["balanced"], *, fp32_fallback: bool = True):
        super().__init__(denoiser, fp32_fallback=fp32_fallback)
        self.start = int(self.alphas_cumprod.shape[0]) - 1
        ddim_timesteps(self.start, steps)  # ValueError for a budget the schedule cannot take
        self.steps = int(steps)

    @property
    def schedules(self) -> tuple[tuple[int, int], ...]:
        return ((self.start, self.steps),)

    @property
    def group_names(self) -> tuple[str, ...]:
        return ("ddim",)

    def assign_groups(self, qmap: Tensor) -> Tensor:
        return torch.zeros(qmap.shape, dtype=torch.long, device=qmap.device)


register_sampler(SamplerSpec(
    "ddim", lambda denoiser, paths, quality: DDIMSampler(denoiser, DDIM_STEPS[quality]),
    ("dit",), True, "plain DDIM from pure noise, the same steps for every patch (10/20/50 by --quality; a baseline)",
))
