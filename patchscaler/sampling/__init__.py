"""Samplers: one execution engine (`engine`: ragged batching, chunking, out-of-memory
halving, fp32 reruns, the fused DDIM step) under policies that say which patch gets which
timesteps — patch-adaptive group sampling (`pgs`), the uniform and plain-DDIM baselines —
each registered in `registry` by its own module; the denoiser interface they drive."""

from patchscaler.sampling.denoiser import DiTDenoiser, PatchDenoiser
from patchscaler.sampling.engine import Sampler, SamplerOutput, SamplingPlan
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
from patchscaler.sampling import registry  # noqa: E402  (registers every sampler, in a fixed order)

__all__ = [
    "DiTDenoiser",
    "PatchDenoiser",
    "PGSConfig",
    "PGSOutput",
    "PGSSampler",
    "Sampler",
    "SamplerOutput",
    "SamplingPlan",
    "UniformSampler",
    "assign_groups",
    "derive_seeds",
    "patch_noise",
    "patch_qmap",
    "registry",
]
