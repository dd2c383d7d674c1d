"""What a sampler tells the rest of the package about itself: its `SamplerSpec`, put in
`SAMPLERS` by `register_sampler` when the sampler's module is imported
(`patchscaler.sampling.registry` imports every module of this package), and the quality
presets every sampler is built with."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

__all__ = ["QUALITY_PRESETS", "SAMPLERS", "SamplerSpec", "check_quality", "register_sampler"]

# Speed/quality presets, cheapest first; what each changes is the sampler's own business
# (PGS: thresholds and group caps; DDIM: its step count). "balanced" is the default.
QUALITY_PRESETS = ("fast", "balanced", "detail")


def check_quality(name: str) -> str:
    """``name`` if it is one of `QUALITY_PRESETS`, else ValueError."""
    if name not in QUALITY_PRESETS:
        raise ValueError(f"quality must be one of {', '.join(map(repr, QUALITY_PRESETS))}, got {name!r}")
    return name


@dataclass(frozen=True)
class SamplerSpec:
    """One sampler as the registry, the pipeline, eval and the command line see it.

    name: what ``upscale(sampler=...)`` and ``--sampler`` call it.
    build: ``build(denoiser, paths, quality) -> sampler``: ``denoiser`` is the model set's
        `DiTDenoiser` (None unless ``needs`` has "dit"), ``paths`` maps each component in
        ``needs`` to its file; None: the GRM alone (no sampler object).
    needs: weights components of a model set it needs beyond the GRM ("dit", "pgs", ...).
    presets: whether the quality presets change it (if not, it is built with "balanced").
    help: one line for ``--help``.
    eval_methods: eval's methods for it, name → quality preset (default: its name, "balanced").
    """

    name: str
    build: Callable[[Any, dict[str, Path], str], Callable] | None
    needs: tuple[str, ...]
    presets: bool
    help: str
    eval_methods: dict[str, str] = field(default_factory=dict)


SAMPLERS: dict[str, SamplerSpec] = {}


def register_sampler(spec: SamplerSpec) -> SamplerSpec:
    """Add ``spec`` to `SAMPLERS` (a sampler module calls this when imported); a name
    registered again (a reloaded module) takes the new spec."""
    if spec.name != spec.name.lower():
        raise ValueError(f"sampler names are lower case, got {spec.name!r}")
    if spec.build is not None and not spec.eval_methods:
        spec = SamplerSpec(spec.name, spec.build, spec.needs, spec.presets, spec.help, {spec.name: "balanced"})
    SAMPLERS[spec.name] = spec
    return spec
