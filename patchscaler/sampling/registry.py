"""The samplers and presets, in one table: the command's choices, eval's methods,
`upscale()`'s checks and ``python -m patchscaler.info`` read it. A sampler registers
itself (`patchscaler.sampling.spec.register_sampler`) in its own module of this package;
importing this module imports every module of the package, so adding a sampler is one
new file there.

    build_sampler("pgs", model="bicubic", quality="fast")   # → a PGSSampler on the set's DiT
"""

from __future__ import annotations

import importlib
import pkgutil
from pathlib import Path
from typing import Callable

import torch

from patchscaler.checkpoints import (
    DEFAULT_MODEL,
    MODEL_SETS,
    WeightsNotAvailableError,
    cached,
    check_model,
    require,
    weights_root,
)
from patchscaler.sampling import pgs  # noqa: F401  (first: "pgs", "uniform" lead the choices)
from patchscaler.sampling.spec import QUALITY_PRESETS, SAMPLERS, SamplerSpec, check_quality, register_sampler

__all__ = [
    "DEFAULT_MODEL",
    "DEFAULT_QUALITY",
    "DEFAULT_SAMPLER",
    "EVAL_METHODS",
    "MODEL_SETS",
    "QUALITY_PRESETS",
    "SAMPLERS",
    "SamplerSpec",
    "build_sampler",
    "check_model",
    "check_quality",
    "check_sampler",
    "preset_for",
    "sampler_available",
    "takes_presets",
]


register_sampler(SamplerSpec("none", None, (), False, "the GRM alone, one network pass"))


def _import_sampler_modules() -> None:
    """Import every module of `patchscaler.sampling`, so each sampler there registers itself."""
    package = Path(__file__).parent
    for info in sorted(pkgutil.iter_modules([str(package)]), key=lambda m: m.name):
        importlib.import_module(f"patchscaler.sampling.{info.name}")


_import_sampler_modules()
DEFAULT_SAMPLER = "pgs"
DEFAULT_QUALITY = "balanced"
# eval's diffusion methods: name → (sampler, quality preset), from each sampler's spec.
EVAL_METHODS: dict[str, tuple[str, str]] = {
    method: (spec.name, quality) for spec in SAMPLERS.values() for method, quality in spec.eval_methods.items()
}


def check_sampler(name: object) -> str:
    """``name`` (any case) as a key of `SAMPLERS`, else ValueError."""
    if not isinstance(name, str) or name.lower() not in SAMPLERS:
        raise ValueError(f"unknown sampler {name!r}; choose one of {', '.join(map(repr, SAMPLERS))}")
    return name.lower()


def takes_presets(name: str | None) -> bool:
    """Whether the quality presets change what sampler ``name`` does (pgs, ddim; not the GRM
    alone, the `real` default's sampler): `preset_for` refuses a preset named for one
    where they would not, and the web app greys its preset radio out."""
    return name in SAMPLERS and SAMPLERS[name].presets


def preset_for(quality: str | None, sampler: str, model: str | None = None) -> str:
    """The preset a run of ``sampler`` uses: ``quality`` checked, `DEFAULT_QUALITY` for None.

    A preset named for a sampler without presets (the GRM alone, the `real` default's
    sampler; uniform) is a ValueError, not silently ignored: a caller asking for
    "detail" would get the same image and think it was the detail preset. (None is the
    caller not asking; the pipeline of such a sampler ignores the value.)
    """
    if quality is None:
        return DEFAULT_QUALITY
    check_quality(quality)
    if not takes_presets(sampler):
        takes = ", ".join(name for name in SAMPLERS if takes_presets(name))
        hint = "; model='bicubic' runs pgs" if sampler == "none" and model != "bicubic" else ""
        raise ValueError(f"quality={quality!r} is a preset of the samplers {takes}, but this run's sampler is "
                         f"{sampler!r}" + (f" (model set {model!r})" if model else "") + f", which has none{hint}")
    return quality


def sampler_available(name: str, model: str | None = None) -> bool:
    """Whether sampler ``name`` can run with model set ``model`` (its GRM and what it needs)."""
    try:
        for component in ("grm",) + SAMPLERS[check_sampler(name)].needs:
            require(component, model)
    except (FileNotFoundError, ValueError):
        return False
    return True


def build_sampler(
    name: str,
    model: str | None = None,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
    quality: str = DEFAULT_QUALITY,
) -> Callable | None:
    """Sampler ``name`` on model set ``model``'s DiT + texture memory; None for "none".

    ``quality``: the set's PGS preset (thresholds only). Raises `WeightsNotAvailableError`
    naming the missing file when the set lacks what the sampler needs: asking for
    diffusion never quietly returns the GRM's output, nor another set's.
    """
    spec = SAMPLERS[check_sampler(name)]
    model = check_model(model or DEFAULT_MODEL)
    check_quality(quality)
    if spec.build is None:
        return None
    try:
        paths = {c: require(c, model, purpose=f"sampler {spec.name!r}") for c in spec.needs}
    except WeightsNotAvailableError as e:
        raise WeightsNotAvailableError(f"{e}; or use sampler='none' (the GRM alone)") from None
    denoiser = _denoiser(model, torch.device(device), dtype) if "dit" in spec.needs else None
    return spec.build(denoiser, paths, quality if spec.presets else DEFAULT_QUALITY)


def _denoiser(model: str, device: torch.device, dtype: torch.dtype):
    """The set's DiT + texture memory, loaded once per (weights root, set, device, dtype) and
    shared by every sampler built on them (the presets differ only in their thresholds)."""
    from patchscaler.sampling.denoiser import DiTDenoiser

    key = ("denoiser", str(weights_root().resolve()), model, str(device), dtype)
    return cached(key, lambda: DiTDenoiser.from_pretrained(device=device, dtype=dtype, model=model))
