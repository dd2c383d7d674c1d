"""``patchscaler.upscale``: the one-call ×4 super-resolution API.

    import patchscaler
    hr = patchscaler.upscale(lr)                     # tensor [3,H,W] / [B,3,H,W] → ×4
    hr_pil = patchscaler.upscale(Image.open(path))   # PIL in → PIL out
    hr, groups = patchscaler.upscale(lr, return_groups=True)

This module checks the options; `patchscaler.imaging.convert` turns the inputs into
float RGB and the results back into the input's kind; the work happens in
:class:`patchscaler.inference.pipeline.PatchScalerPipeline`, which is built once per
(sampler, device, dtype) and cached, so repeated calls do not reload weights.
"""

from __future__ import annotations

import threading
import warnings
from typing import Any, Callable

import numpy as np
import torch
from torch import Tensor

from patchscaler.inference.memory_budget import ChunkSizes, chunk_sizes, parse_memory
from patchscaler.inference.outsize import check_output_size, fit_output, target_size
from patchscaler.imaging.convert import to_items, upscale_alpha
from patchscaler.checkpoints import cached, require, set_manifest, weights_root
from patchscaler.inference.pipeline import PatchScalerPipeline
from patchscaler.sampling.registry import (
    DEFAULT_MODEL,
    DEFAULT_QUALITY,
    DEFAULT_SAMPLER,
    SAMPLERS,
    check_model,
    check_sampler,
    preset_for,
    sampler_available,
)

__all__ = ["upscale", "SUPPORTED_SCALES", "check_options", "default_sampler", "get_pipeline"]

SUPPORTED_SCALES = (4,)

_DTYPE_NAMES = {
    "fp32": torch.float32, "float32": torch.float32, "float": torch.float32,
    "fp16": torch.float16, "float16": torch.float16, "half": torch.float16,
    "bf16": torch.bfloat16, "bfloat16": torch.bfloat16,
}


# ----------------------------------------------------------------------------- options

_warned_default_sampler = False
_warn_lock = threading.Lock()


def default_sampler(model: str | None = None) -> str:
    """What ``sampler=None`` means: the set's own default (``default_sampler`` in its
    ``set.json``, e.g. ``"none"`` for a set whose GRM is its best path), else ``"pgs"`` when
    model set ``model`` has its weights, else ``"none"``.

    The SPEC's default is PGS, but ``upscale(x)`` must also work with a set that has only
    its GRM; then it falls back to the GRM alone and warns once per process (asking for
    ``sampler="pgs"`` explicitly raises instead). A set that names ``"none"`` itself is not warned about.
    """
    global _warned_default_sampler
    own = set_manifest(model).get("default_sampler")
    if own is not None and sampler_available(own, model):
        return own
    if sampler_available(DEFAULT_SAMPLER, model):
        return DEFAULT_SAMPLER
    with _warn_lock:
        if not _warned_default_sampler:
            _warned_default_sampler = True
            warnings.warn(
                f"patchscaler: model set {model or DEFAULT_MODEL!r} has no diffusion (PGS) weights in this install, "
                "so upscale() uses the GRM alone (sampler='none'); pass sampler='none' to silence this",
                UserWarning,
                stacklevel=4,  # the caller of upscale()
            )
    return "none"


def _check_sampler(sampler: str | None, model: str) -> str:
    if sampler is None:
        return default_sampler(model)
    if not isinstance(sampler, str) or sampler.lower() not in SAMPLERS:
        raise ValueError(f"sampler must be one of {', '.join(map(repr, SAMPLERS))} or None, got {sampler!r}")
    return check_sampler(sampler)


def _check_scale(scale: Any) -> int:
    if isinstance(scale, bool) or not isinstance(scale, (int, float)) or scale != int(scale):
        raise ValueError(f"scale must be an integer, got {scale!r}")
    if int(scale) not in SUPPORTED_SCALES:
        raise ValueError(
            f"scale={scale} is not supported: only scale=4 is implemented (×2 is planned future work)"
        )
    return int(scale)


def _check_device(device: Any, fallback: torch.device) -> torch.device:
    if device is None:
        return fallback
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise ValueError(f"device {device!r} is not a valid torch device: {exc}") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device={device!r} was asked for but CUDA is not available; use device='cpu'")
    if dev.type == "cuda" and dev.index is None:
        dev = torch.device("cuda", torch.cuda.current_device())
    return dev


def _check_dtype(dtype: Any, device: torch.device) -> torch.dtype:
    if dtype is None:
        return torch.float32
    if isinstance(dtype, str):
        if dtype.lower() not in _DTYPE_NAMES:
            raise ValueError(f"dtype must be float32, float16 or bfloat16, got {dtype!r}")
        dtype = _DTYPE_NAMES[dtype.lower()]
    if dtype not in (torch.float32, torch.float16, torch.bfloat16):
        raise ValueError(f"dtype must be torch.float32, torch.float16 or torch.bfloat16, got {dtype!r}")
    return dtype


def _check_max_batch(max_batch_patches: Any) -> int | None:
    if max_batch_patches is None:
        return None
    if isinstance(max_batch_patches, bool) or not isinstance(max_batch_patches, int) or max_batch_patches < 1:
        raise ValueError(f"max_batch_patches must be a positive int or None, got {max_batch_patches!r}")
    return max_batch_patches


def _check_progress(progress: Any) -> None:
    if not isinstance(progress, bool) and not callable(progress):
        raise TypeError(f"progress must be a bool or a callable(done, total, stage), got {type(progress).__name__}")


def _check_max_output(max_output_megapixels: Any) -> None:
    if max_output_megapixels is None:
        return
    if isinstance(max_output_megapixels, bool) or not isinstance(max_output_megapixels, (int, float)) \
            or not max_output_megapixels > 0:  # `not > 0`: also NaN
        raise ValueError(f"max_output_megapixels must be a positive number or None, got {max_output_megapixels!r}")


def check_options(
    *,
    sampler: str | None = None,
    model: str = DEFAULT_MODEL,
    quality: str | None = None,
    device: str | torch.device | None = None,
    dtype: torch.dtype | str | None = None,
    max_batch_patches: int | None = None,
    max_output_megapixels: float | None = None,
    outscale: float | None = None,
    width: int | None = None,
    height: int | None = None,
    memory_budget: int | str | None = None,
) -> str:
    """Check `upscale`'s options without an image, with `upscale`'s own checks and errors,
    so a caller about to read many files fails before the first (the ``patchscaler`` command).

    Returns the sampler name ``sampler`` stands for (``None``: `default_sampler`, which may
    warn). Raises what `upscale` raises for these options (ValueError, TypeError,
    `WeightsNotAvailableError` for a missing model set).
    """
    check_output_size(outscale, width, height)
    model = check_model(model)
    require("grm", model)
    name = _check_sampler(sampler, model)
    preset_for(quality, name, model)
    _check_max_batch(max_batch_patches)
    _check_max_output(max_output_megapixels)
    if memory_budget is not None:
        parse_memory(memory_budget)
    _check_dtype(dtype, _check_device(device, torch.device("cpu")))
    return name


def _check_seed(seed: Any) -> int:
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
        raise TypeError(f"seed must be an int, got {type(seed).__name__}")
    return int(seed)


# ------------------------------------------------------------------ pipeline cache


def get_pipeline(
    sampler: str = "none",
    scale: int = 4,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
    quality: str = DEFAULT_QUALITY,
    model: str = DEFAULT_MODEL,
    chunks: ChunkSizes | None = None,
) -> PatchScalerPipeline:
    """The shared pipeline for these settings (built on first use, then reused; in the
    weights cache, so `patchscaler.checkpoints.clear` drops it). ``chunks``: the GRM tile
    and band size of a memory budget (default: the pipeline's own)."""
    key = ("pipeline", str(weights_root().resolve()), model, sampler, scale, str(torch.device(device)), dtype,
           quality if sampler != "none" else None, chunks)
    sizes = {} if chunks is None else dict(grm_tile=chunks.grm_tile, max_lr_pixels_per_run=chunks.band_lr_pixels)
    return cached(key, lambda: PatchScalerPipeline(
        sampler=sampler, model=model, scale=scale, device=device, dtype=dtype, quality=quality, **sizes
    ))


# ------------------------------------------------------------------------- upscale


def upscale(
    x: Any,
    *,
    scale: int = 4,
    sampler: str | None = None,
    model: str = DEFAULT_MODEL,
    quality: str | None = None,
    seed: int = 0,
    device: str | torch.device | None = None,
    dtype: torch.dtype | str | None = None,
    max_batch_patches: int | None = None,
    return_groups: bool = False,
    progress: bool | Callable[[int, int, str], None] = False,
    max_output_megapixels: float | None = None,
    outscale: float | None = None,
    width: int | None = None,
    height: int | None = None,
    memory_budget: int | str | None = None,
) -> Any:
    """Upscale images ×4 with PatchScaler.

    Args:
        x: one of
            * ``torch.Tensor`` ``[3, H, W]`` or ``[B, 3, H, W]``, float (any float dtype),
              values in [0, 1] → tensor ``[..., 3, 4H, 4W]`` with the input's dtype and device;
            * ``PIL.Image.Image`` (RGB, L, RGBA, LA, P, I;16, ...) → PIL image of the same mode;
            * ``numpy.ndarray`` ``[H, W]``, ``[H, W, 3]`` or ``[H, W, 4]`` (uint8, uint16, or
              float in [0, 1]) → array of the same dtype and layout;
            * a list of the above (sizes may differ) → list of results.
            Greyscale is upscaled as RGB and returned as the mean of the channels; an
            alpha channel is upscaled separately with bicubic interpolation.
        scale: upscaling factor; only 4 (×2 is future work).
        sampler: ``"pgs"`` (patch-adaptive group sampling, the method), ``"uniform"``
            (every patch the hard group's steps: the slow baseline), ``"none"`` (the GRM
            alone, one network pass), another registered one (``"ddim"``, ...;
            `patchscaler.sampling.registry.SAMPLERS`), or ``None``: ``"pgs"`` when its DiT weights ship
            with this install, otherwise ``"none"`` with a one-time warning.
            Asking for ``"pgs"``/``"uniform"`` without their weights raises.
        model: the model set whose weights run: ``"bicubic"`` (trained on bicubic
            downscaling, the benchmark protocol) or ``"real"`` (real-world degradations);
            default `patchscaler.checkpoints.DEFAULT_MODEL`. ``python -m patchscaler.info``
            lists the sets this install has.
        quality: PGS preset: ``"fast"``, ``"balanced"`` (default) or ``"detail"``. Same
            step counts per group, thresholds that put about 8 %, 12 % or 30 % of the
            patches in the hard group (calibrated, ``weights/pgs_config.json``): ~0.19,
            ~0.26 and ~0.43 of the uniform sampler's evaluations on held-out photos,
            and at most 40 %, 55 % or 90 % of an image's patches hard (65 %, 85 %, 75 %
            medium), the lowest confidence first, so a preset changes the cost even on an
            image whose confidence is low everywhere. ``"ddim"``: 10, 20 or 50 steps.
            None (default): ``"balanced"`` where the sampler has presets. Naming one
            for a sampler without presets (``"none"``, the `real` set's default, and
            ``"uniform"``) raises ValueError rather than being ignored.
        seed: the diffusion noise of every patch is derived from ``seed`` and the patch's
            position in its image, so a result does not depend on the other images in
            the batch, on ``max_batch_patches`` or on the device's random state.
        device: where to compute (default: the input tensor's device; CUDA if available
            for PIL/numpy inputs; else CPU).
        dtype: model precision: ``torch.float32`` (default), ``torch.float16`` or
            ``torch.bfloat16`` (also "fp16"/"bf16"); the output keeps the input's dtype.
        max_batch_patches: at most this many 16×16 latent patches (64×64 output pixels)
            go through the denoiser at once; bounds memory (default: the sampler's own).
        return_groups: also return a :class:`~patchscaler.inference.group_map.GroupMap` per image
            (group and step count of every patch, confidence map): ``(out, groups)``;
            ``groups`` is a list for batches and lists, a single GroupMap otherwise.
        progress: True: show tqdm progress bars (GRM tiles, denoising); or a callable
            ``progress(done: int, total: int, stage: str)``, called as the work of the
            call advances: stage ``"grm"`` counts GRM tiles (an untiled image is one),
            ``"dit"`` the Patch-DiT's patch-evaluations, whose total the sampler plans
            before the first one runs (it grows image by image in a list of sizes).
        max_output_megapixels: refuse images whose ×4 output would have more pixels than
            this (default None: no limit; the pipeline streams over bands of rows, so memory
            grows with the width, and the output itself is the area term). It bounds the ×4
            working size, whatever ``outscale``/``width``/``height`` ask for.
        outscale: output scale in (1, 4] instead of 4: the ×4 result resized with an
            antialiased bicubic filter (`patchscaler.inference.outsize`), e.g. 2 for twice the size.
        width, height: exact output size in pixels instead (at most ×4 of the input);
            given one of them, the other keeps the aspect ratio. Not with ``outscale``.
        memory_budget: bytes (or "6G", "512M") the computation should fit in: sets the
            patches per Patch-DiT call (unless ``max_batch_patches`` is given), the GRM
            tile and the band height (`patchscaler.inference.memory_budget`). Whatever the budget,
            a CUDA out-of-memory error halves the failing step's chunk and retries that
            step only (GroupMap.memory_note says it happened). DiT batches and bands never
            change the result; a smaller GRM tile may, in the last bit, on images it tiles.

    Raises:
        TypeError: ``x`` (or ``seed``) of the wrong type, or an integer tensor.
        ValueError: wrong shape/channels, empty image, values outside [0, 1], NaN/inf,
            output above ``max_output_megapixels``, unknown ``sampler`` or ``model``,
            unsupported ``scale``, ``device`` or ``dtype``.
        patchscaler.checkpoints.WeightsNotAvailableError: the model set, or a file of it
            that ``sampler`` needs, is not in this install.
    """
    scale = _check_scale(scale)
    out_spec = check_output_size(outscale, width, height, scale=scale)
    model = check_model(model)
    require("grm", model)  # a missing set fails here, before the sampler default is chosen
    sampler_name = _check_sampler(sampler, model)
    quality = preset_for(quality, sampler_name, model)  # here too: sampler="none" never reaches the PGS config
    seed = _check_seed(seed)
    _check_progress(progress)
    max_batch_patches = _check_max_batch(max_batch_patches)
    chunks = chunk_sizes(parse_memory(memory_budget)) if memory_budget is not None else None
    if chunks is not None and max_batch_patches is None:
        max_batch_patches = chunks.max_batch_patches
    items, packing = to_items(x, "x")

    fallback = items[0].rgb.device if isinstance(x, Tensor) else (
        torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else torch.device("cpu")
    )
    dev = _check_device(device, fallback)
    dt = _check_dtype(dtype, dev)
    _check_max_output(max_output_megapixels)
    if max_output_megapixels is not None:
        limit = float(max_output_megapixels) * 1e6
        for i, item in enumerate(items):
            h, w = item.rgb.shape[-2:]
            out_px = h * w * scale * scale
            if out_px > limit:
                name = "x" if len(items) == 1 else f"x[{i}]"
                raise ValueError(
                    f"{name}: the ×{scale} output would be {w * scale}x{h * scale} = {out_px / 1e6:.3g} MP, above "
                    f"max_output_megapixels={max_output_megapixels:g}; pass a larger max_output_megapixels "
                    "(or None) if the memory is there"
                )

    sizes = [target_size(*item.rgb.shape[-2:], out_spec, scale=scale) for item in items]
    pipe = get_pipeline(sampler_name, scale, dev, dt, quality, model, chunks)
    # Array and PIL outputs at ×4 go straight into their final buffer, band by band; a
    # resized output (outscale, width, height) needs the ×4 float image first.
    buffers = [
        item.output(item.rgb.shape[-2] * scale, item.rgb.shape[-1] * scale) if item.output is not None and out_spec is None else None
        for item in items
    ]
    results = pipe.upscale_images(
        [item.rgb for item in items], seed=seed, max_batch_patches=max_batch_patches, progress=progress,
        outputs=buffers,
    )
    outs, groups = [], []
    for item, size, (hr, gmap) in zip(items, sizes, results):
        alpha_hr = upscale_alpha(item.alpha, scale) if item.alpha is not None else None
        if isinstance(hr, Tensor):
            hr, alpha_hr = fit_output(hr, alpha_hr, size)
        outs.append(item.restore(hr, alpha_hr))
        groups.append(gmap)

    if packing == "batch":
        out: Any = torch.stack(outs)
    elif packing == "single":
        out = outs[0]
    else:
        out = outs
    if return_groups:
        return out, (groups if packing != "single" else groups[0])
    return out
