"""The inference pipeline (SPEC §1–2): LR image → GRM → patches → sampler → blend → decode.

    pipe = PatchScalerPipeline(sampler="pgs", model="bicubic")   # weights loaded once
    [(hr, groups)] = pipe.upscale_images([lr])                   # lr [3,h,w] float [0,1]

Per batch of same-size images (`upscale_images` reads in this order):

1. **GRM** at LR resolution → coarse latent ``y0 [B,3s²,h,w]`` and confidence
   ``C [B,1,h,w]`` (`patchscaler.models.grm.restore_tiled`: large images as tiles).
2. **Patches**: the latent is cut into overlapping ``patch_size`` patches
   (`patchscaler.patch_plan`); each patch's Qmap is its mean confidence (`patch_qmap`)
   and its noise seed comes from its (y, x) position (`derive_seeds`).
3. **Sampler** (``"pgs"``/``"uniform"``): every patch of every pending image in one
   ragged loop, returning a `PGSOutput` (x̂0, group, steps per patch). ``"none"`` keeps y0.
4. **Blend** the patches back with the smooth window, **decode** with the codec
   (pixel shuffle), clamp to [0, 1]; a `GroupMap` per image says what happened.

Determinism: a patch's noise comes from its own seed, derived from the user's seed and
its position in its image, never from a global random stream, so an image's result does
not depend on the other images in the batch, on chunk sizes or on the device's RNG state
(up to float rounding of differently-sized matrix products, ~1e-6).

Sampler interface (`patchscaler.sampling.PGSSampler` / `UniformSampler`; tests pass
their own)::

    sampler(y0_patches [P,C,ph,pw] float32, qmap [P] float32, seeds=[P] int64,
            max_batch_patches=int, progress=callable(n_evaluations) | None) -> PGSOutput
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import torch
from torch import Tensor, nn

from patchscaler.checkpoints import WeightsNotAvailableError, check_model
from patchscaler.codec import PixelUnshuffleCodec
from patchscaler.group_map import GROUP_NAMES, GroupMap, group_pixels
from patchscaler.models.grm import check_tiling, load_grm, restore_tiled
from patchscaler.patch_plan import PatchPlan, blend_window, plan_patches
from patchscaler.sampling.pgs import PGSOutput, UniformSampler, derive_seeds, patch_qmap
from patchscaler.sampling.registry import DEFAULT_MODEL, DEFAULT_QUALITY, SAMPLERS, build_sampler, sampler_available

__all__ = [
    "SAMPLERS",
    "GROUP_NAMES",
    "GroupMap",
    "PatchScalerPipeline",
    "WeightsNotAvailableError",
    "build_sampler",
    "sampler_available",
]

DEFAULT_PATCH_SIZE = 16  # latent pixels (= 64×64 HR pixels at ×4), SPEC §2
DEFAULT_PATCH_OVERLAP = 4
DEFAULT_MAX_BATCH_PATCHES = 256
DEFAULT_GRM_TILE = 512  # LR pixels a side: the shipped GRM's widest layer (192 ch) on 512² is 200 MB in fp32
DEFAULT_GRM_CONTEXT = 16  # > the shipped GRM's receptive radius (10 LR pixels: 10 3×3 convs, bicubic taps 2)
DEFAULT_MAX_LR_PIXELS_PER_RUN = 1 << 20  # latent pixels denoised per sampler run; bounds the patch state


@dataclass
class _Unit:
    """A batch of same-size images on its way through the pipeline."""

    indices: list[int]  # positions in the caller's list
    lr: Tensor | None  # [B,3,h,w]
    y0: Tensor | None = None  # [B,C,h,w] float32
    conf: Tensor | None = None  # [B,1,h,w] float32
    plan: PatchPlan | None = None  # latent patches of one image
    seeds: Tensor | None = None  # [B·P] int64
    qmap: Tensor | None = None  # [B·P] float32
    sampled: PGSOutput | None = None  # the sampler's output for this unit's patches


class PatchScalerPipeline:
    """LR images → ×s images (module docstring). Build once, call many times.

    Args:
        grm: the GRM module (``lr [B,3,h,w]`` → ``(y0, confidence)``); default: model set
            ``model``'s, loaded once per (file, device, dtype).
        sampler: "pgs", "uniform", "none" (`patchscaler.sampling.registry`), or a sampler object.
        model: the model set whose weights a GRM or sampler given by name comes from.
        codec: latent codec with ``decode``; default `PixelUnshuffleCodec(scale)`.
        scale: upscaling factor (the GRM's).
        device, dtype: where and in what precision the models run (default CPU, fp32).
            Samplers keep their patch state in float32 whatever the dtype.
        patch_size, patch_overlap: latent patch geometry for the sampler.
        grm_tile: largest LR tile side the GRM sees at once; bigger images are tiled.
        grm_context: tile border (LR pixels) not trusted, ≥ the GRM's receptive radius.
        max_lr_pixels_per_run: at most this many LR pixels go through one sampler run
            (whole images; an image never splits across runs).
        quality: PGS preset for a sampler given by name: "fast", "balanced" (default) or "detail".
    """

    def __init__(
        self,
        *,
        grm: nn.Module | None = None,
        sampler: str | Callable | None = "none",
        model: str = DEFAULT_MODEL,
        codec: Any = None,
        scale: int = 4,
        device: str | torch.device | None = None,
        dtype: torch.dtype | None = None,
        patch_size: int = DEFAULT_PATCH_SIZE,
        patch_overlap: int = DEFAULT_PATCH_OVERLAP,
        grm_tile: int = DEFAULT_GRM_TILE,
        grm_context: int = DEFAULT_GRM_CONTEXT,
        max_lr_pixels_per_run: int = DEFAULT_MAX_LR_PIXELS_PER_RUN,
        quality: str = DEFAULT_QUALITY,
    ):
        self.scale, self.model = int(scale), check_model(model)
        self.device = torch.device(device) if device is not None else torch.device("cpu")
        if self.device.type == "cuda" and self.device.index is None:
            self.device = torch.device("cuda", torch.cuda.current_device())
        self.dtype = dtype or torch.float32
        check_tiling(grm_tile, grm_context)
        if not 0 <= patch_overlap < patch_size:
            raise ValueError(f"need 0 <= patch_overlap < patch_size, got {patch_overlap}, {patch_size}")
        self.patch_size, self.patch_overlap = int(patch_size), int(patch_overlap)
        self.grm_tile, self.grm_context = int(grm_tile), int(grm_context)
        self.max_lr_pixels_per_run = int(max_lr_pixels_per_run)
        self.codec = codec if codec is not None else PixelUnshuffleCodec(self.scale)
        if grm is None:
            self.grm = load_grm(self.scale, self.device, self.dtype, model=self.model)
        else:
            self.grm = _on(grm, self.device, self.dtype)
        if isinstance(sampler, str) or sampler is None:
            self.sampler_name = (sampler or "none").lower()
            self.sampler = build_sampler(self.sampler_name, self.model, self.device, self.dtype, quality)
        else:
            self.sampler_name = getattr(sampler, "name", None) or (
                "uniform" if isinstance(sampler, UniformSampler) else "pgs"
            )
            self.sampler = sampler
        self.window = blend_window(self.patch_size, self.patch_overlap, device=self.device)

    def __repr__(self) -> str:
        return (
            f"PatchScalerPipeline(sampler={self.sampler_name!r}, model={self.model!r}, scale={self.scale}, "
            f"device={self.device}, dtype={self.dtype}, patch={self.patch_size}/{self.patch_overlap}, "
            f"grm_tile={self.grm_tile})"
        )

    @torch.no_grad()
    def restore(self, lr: Tensor, progress: bool = False) -> tuple[Tensor, Tensor]:
        """GRM on ``lr [B,3,h,w]`` float [0,1] → ``(y0 [B,C,h,w], conf [B,1,h,w])`` float32."""
        lr = lr.to(device=self.device, dtype=self.dtype)
        return restore_tiled(self.grm, lr, self.grm_tile, self.grm_context, progress)

    @torch.no_grad()
    def upscale_images(
        self,
        images: Sequence[Tensor] | Tensor,
        *,
        seed: int = 0,
        max_batch_patches: int | None = None,
        progress: bool = False,
    ) -> list[tuple[Tensor, GroupMap]]:
        """Upscale a list of ``[3, h, w]`` (or a ``[B, 3, h, w]`` batch) float images in [0, 1].

        Sizes may differ. Returns, in order, ``(hr [3, s·h, s·w] float32 in [0, 1] on
        the pipeline's device, GroupMap)`` per image.
        """
        results: list[tuple[Tensor, GroupMap] | None] = [None] * len(images)
        for run in self._runs(self._units(images)):
            for unit in run:  # 1. GRM, 2. patches
                unit.y0, unit.conf = self.restore(unit.lr, progress=progress)
                self._plan(unit, seed)
            if self.sampler is not None:  # 3. sampler
                self._sample(run, max_batch_patches, progress)
            for unit in run:  # 4. blend, decode
                for i, res in zip(unit.indices, self._finish(unit)):
                    results[i] = res
                unit.lr = unit.y0 = unit.conf = None  # free as we go
        return results  # type: ignore[return-value]

    # ------------------------------------------------------------------ stages

    def _units(self, images: Sequence[Tensor] | Tensor) -> list[_Unit]:
        """Same-size images grouped (they share GRM forwards and gathers), bounded in LR pixels."""
        images = list(images)
        by_size: dict[tuple[int, int], list[int]] = {}
        for i, im in enumerate(images):
            if im.dim() != 3 or im.shape[0] != 3:
                raise ValueError(f"image {i} must be [3, h, w], got {tuple(im.shape)}")
            by_size.setdefault(tuple(im.shape[-2:]), []).append(i)
        units = []
        for (h, w), idx in by_size.items():
            per_run = max(1, self.max_lr_pixels_per_run // (h * w))
            for k in range(0, len(idx), per_run):
                units.append(_Unit(idx[k : k + per_run], torch.stack([images[i] for i in idx[k : k + per_run]])))
        return units

    def _runs(self, units: list[_Unit]) -> list[list[_Unit]]:
        """Units packed into sampler runs of at most ``max_lr_pixels_per_run`` LR pixels."""
        runs: list[list[_Unit]] = []
        pixels = 0
        for unit in units:
            n = unit.lr.shape[0] * unit.lr.shape[2] * unit.lr.shape[3]
            if not runs or pixels + n > self.max_lr_pixels_per_run:
                runs.append([])
                pixels = 0
            runs[-1].append(unit)
            pixels += n
        return runs

    def _plan(self, unit: _Unit, seed: int) -> None:
        """The unit's patches (padding images smaller than one), their seeds and Qmap."""
        B, _, h, w = unit.y0.shape
        unit.plan = plan_patches(h, w, self.patch_size, self.patch_overlap)
        # Keys (y, x) only: a patch's noise must not depend on its image's batch slot.
        unit.seeds = derive_seeds(seed, unit.plan.origins()).repeat(B)
        unit.qmap = patch_qmap(unit.plan.split(unit.conf.contiguous()))

    def _sample(self, run: list[_Unit], max_batch_patches: int | None, progress: bool) -> None:
        """Denoise the patches of every unit of ``run`` in one sampler call."""
        y0_all = torch.cat([u.plan.split(u.y0.contiguous()) for u in run])
        q_all = torch.cat([u.qmap for u in run])
        bar = None
        if progress:
            from tqdm.auto import tqdm

            total = self._planned_evaluations(q_all)
            bar = tqdm(total=total, desc=f"{self.sampler_name} denoising", unit="patch-step", leave=False)
        try:
            res = self.sampler(
                y0_all.float(),
                q_all.float(),
                seeds=torch.cat([u.seeds for u in run]),
                max_batch_patches=max_batch_patches or DEFAULT_MAX_BATCH_PATCHES,
                progress=bar.update if bar is not None else None,
            )
        finally:
            if bar is not None:
                bar.close()
        start = 0
        for u in run:
            u.sampled = res.part(start, start + u.qmap.shape[0])
            start += u.qmap.shape[0]

    def _planned_evaluations(self, qmap: Tensor) -> int | None:
        """Σ steps the sampler will take, when it exposes its grouping (for the progress bar)."""
        assign = getattr(self.sampler, "assign_groups", None)
        config = getattr(self.sampler, "config", None)
        if assign is None or config is None or not hasattr(config, "groups"):
            return None
        n = torch.tensor([steps for _, steps in config.groups])
        return int(n[assign(qmap).cpu()].sum())

    def _finish(self, unit: _Unit) -> list[tuple[Tensor, GroupMap]]:
        """Blend (if sampled), decode and package the unit's images."""
        B, _, h, w = unit.y0.shape
        plan, out, n = unit.plan, unit.sampled, unit.plan.num_patches
        fp32 = out.fp32_steps if out is not None and out.fp32_steps is not None else torch.zeros(B * n, dtype=torch.long)
        if out is not None:
            latent = plan.merge(out.x0.float().contiguous(), self.window)
            group, steps = out.group.long().cpu(), out.steps.long().cpu()
            gpx = group_pixels(plan, out.group.long().to(self.device), self.window)
        else:
            latent = unit.y0
            group = torch.full((B * n,), -1, dtype=torch.long)
            steps = torch.zeros(B * n, dtype=torch.long)
            gpx = torch.full((B, h, w), -1, dtype=torch.long)
        hr = self.codec.decode(latent.float()).clamp_(0, 1)
        origins = plan.origins()
        results = []
        for i in range(B):
            sl = slice(i * n, (i + 1) * n)
            gmap = GroupMap(
                sampler=self.sampler_name,
                scale=self.scale,
                patch_size=self.patch_size,
                origins=origins,
                qmap=unit.qmap[sl].float().cpu(),
                group=group[sl],
                steps=steps[sl],
                confidence=unit.conf[i].float().cpu(),
                group_pixels=gpx[i],
                fp32_evaluations=int(fp32[sl].sum()),
            )
            results.append((hr[i], gmap))
        return results


def _on(module: nn.Module, device: torch.device, dtype: torch.dtype) -> nn.Module:
    """``module`` in eval mode on ``device``/``dtype``; a copy if it has to change, so a
    module the caller also uses elsewhere (or in another pipeline) is left as it was."""
    params = list(module.parameters()) + list(module.buffers())
    if any(p.device != device or (p.is_floating_point() and p.dtype != dtype) for p in params):
        module = copy.deepcopy(module).to(device=device, dtype=dtype)
    return module.eval()
