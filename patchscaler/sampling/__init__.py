"""Samplers: patch-adaptive group sampling (PGS) with the ragged scheduler, and the
uniform baseline; the denoiser interface they drive."""

from patchscaler.sampling.denoiser import DiTDenoiser, PatchDenoiser
from patchscaler.sampling.pgs import (
    PGSConfig,
    PGSOutput,
    PGSSampler,
    UniformSampler,
    assign_groups,
    derive_seeds,
    patch_noise,
    patch_qmap,
)

__all__ = [
    "DiTDenoiser",
    "PatchDenoiser",
    "PGSConfig",
    "PGSOutput",
    "PGSSampler",
    "UniformSampler",
    "assign_groups",
    "derive_seeds",
    "patch_noise",
    "patch_qmap",
]
