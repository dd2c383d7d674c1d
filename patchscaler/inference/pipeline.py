"""The inference pipeline (SPEC §1–2): LR image → GRM → patches → sampler → blend → decode.

    pipe = PatchScalerPipeline(sampler="pgs", model="bicubic")   # weights loaded once
    [(hr, groups)] = pipe.upscale_images([lr])                   # lr [3,h,w] float [0,1]

Per batch of same-size images (`upscale_images` reads in this order):

1. **GRM** at LR resolution → coarse latent ``y0 [B,3s²,h,w]`` and confidence
   ``C [B,1,h,w]`` (`patchscaler.inference.grm_tiles.restore_tiled`: large images as tiles).
2. **Patches**: the latent is cut into overlapping ``patch_size`` patches
   (`patchscaler.inference.patch_plan`); each patch's Qmap is its mean confidence (`patch_qmap`)
   and its noise seed comes from its (y, x) position (`derive_seeds`).
3. **Sampler** (any registered one, `patchscaler.sampling.registry`): its policy groups
   each image's patches from the image's whole Qmap (at the image's first band), then
   every patch of every pending band runs in one ragged loop of the shared engine
   (`patchscaler.sampling.engine`), returning a `SamplerOutput` (x̂0, group, steps per
   patch). ``"none"`` keeps y0.
4. **Blend** the patches back with the smooth window, **decode** with the codec
   (pixel shuffle), clamp to [0, 1]; a `GroupMap` per image says what happened.

Steps 2–4 stream over **bands** of patch rows (`patchscaler.inference.band_plan`): each band's
patches are sampled, the rows no later patch reaches are blended, decoded and written
into the image's preallocated output (`patchscaler.inference.output_buffer`), and only the overlap
rows' patches are kept for the next band, so the working set grows with the width, not
the area. Bands of several images share a sampler call up to ``max_lr_pixels_per_run``.
The result does not depend on the band size (the blend sums each pixel's patches in the
same order; a patch's samples do not depend on its batch). On an out-of-memory error the
DiT chunk or the GRM tile halves and that step is retried.

Determinism: a patch's noise comes from its own seed, derived from the user's seed and
its position in its image, never from a global random stream, and on the CPU a patch's
denoiser output does not depend on the other patches of its call (the DiT and the
texture prompt pad small calls, `patchscaler.models.dit`), so an image's result does not
depend on chunk sizes, bands or the device's RNG state, bit for bit. The GRM runs on
same-size images in batches (`LR_PIXELS_PER_UNIT`), and its convs may round differently
with the batch size (~1e-7): same-size images given together can differ in the last bit
from the same images given alone. On a GPU, kernels chosen by shape may round differently.

Progress: ``progress=True`` shows tqdm bars; a callable gets ``progress(done, total, stage)``
with stage "grm" (GRM tiles) and "dit" (patch-evaluations of the denoiser, whose total the
sampler's plan gives before the first one runs).

Sampler interface (`patchscaler.sampling.engine.Sampler`; tests pass their own)::

    sampler(y0_patches [P,C,ph,pw] float32, qmap [P] float32, seeds=[P] int64,
            max_batch_patches=int, progress=callable(n_evaluations) | None,
            group=[P] int64) -> SamplerOutput

with, optionally, ``name``, ``assign_groups(qmap [P] of one image) -> group [P]`` (then
``group`` is passed) and ``planned_evaluations(group) -> int`` (then progress has a total).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field, replace
from typing import Any, Callable, Sequence

import torch
from torch import Tensor, nn

from patchscaler.inference.band_plan import Band, BandBlender, band_patch_rows, plan_bands
from patchscaler.checkpoints import WeightsNotAvailableError, check_model
from patchscaler.inference.codec import PixelUnshuffleCodec
from patchscaler.inference.group_map import GROUP_NAMES, GroupMap, group_pixels
from patchscaler.inference.grm_tiles import check_tiling, restore_tiled, tile_overlap
from patchscaler.models.grm import load_grm
from patchscaler.inference.output_buffer import FloatOutput
from patchscaler.inference.patch_plan import PatchPlan, blend_window, plan_patches
from patchscaler.sampling.engine import SamplerOutput, derive_seeds, patch_qmap
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
DEFAULT_GRM_CONTEXT = 16  # for a GRM without a config; a `GRM`'s own is `GRMConfig.receptive_radius`
# Latent (= LR) pixels per band, the unit the pipeline streams in: a band's working set
# (its GRM latent, patches, noise, sampler state and prompts) is about 1.3 kB per LR
# pixel in fp32, so 2^18 LR pixels is ~350 MB whatever the image's size.
DEFAULT_MAX_LR_PIXELS_PER_RUN = 1 << 18
# Same-size images share GRM forwards up to this many LR pixels. Fixed, not a memory
# setting: the GRM's conv results can differ in the last bit with the batch size, and the
# output must not depend on the memory budget. (The GRM latent of a unit, ~200 MB at this
# size, lives until its last band.)
LR_PIXELS_PER_UNIT = 1 << 20


@dataclass
class _Unit:
    """A batch of same-size images on its way through the pipeline, band by band."""

    indices: list[int]  # positions in the caller's list
    lr: Tensor  # [B,3,h,w]
    plan: PatchPlan
    bands: list[Band]
    blender: BandBlender
    outputs: list[Any]  # per image: where its HR rows go (`patchscaler.inference.output_buffer`)
    y0: Tensor | None = None  # [B,C,h,w] float32: the GRM's latent, from the first band to the last
    conf: Tensor | None = None  # [B,1,h,w] float32
    grm_tile_halved_to: int | None = None  # the GRM's tile after out-of-memory halvings
    parts: list[SamplerOutput] = field(default_factory=list)  # the sampler's output per band, [B·band patches]
    qmaps: list[Tensor] = field(default_factory=list)  # per band [B·band patches] float32, on the device
    group: Tensor | None = None  # [B, P] int64: the sampler's groups, planned per whole image


@dataclass
class _Job:
    """One band of one unit: its GRM latent, patches, seeds and Qmap, then its samples."""

    unit: _Unit
    band: Band
    index: int = 0  # of the band in unit.bands
    y0: Tensor | None = None  # [B,C,rows,w] float32, the band's latent rows (a view of the unit's)
    patches: Tensor | None = None  # [B·Pb,C,ph,pw]
    seeds: Tensor | None = None  # [B·Pb] int64
    qmap: Tensor | None = None  # [B·Pb] float32
    group: Tensor | None = None  # [B·Pb] int64, when the sampler plans whole images
    sampled: SamplerOutput | None = None


class PatchScalerPipeline:
    """LR images → ×s images (module docstring). Build once, call many times; one
    pipeline may be used from several threads at once (a call keeps its state to itself).

    Args:
        grm: the GRM module (``lr [B,3,h,w]`` → ``(y0, confidence)``); default: model set
            ``model``'s, loaded once per (file, device, dtype).
        sampler: a registered name ("pgs", "uniform", "ddim", "none", ...;
            `patchscaler.sampling.registry`), or a sampler object.
        model: the model set whose weights a GRM or sampler given by name comes from.
        codec: latent codec with ``decode``; default `PixelUnshuffleCodec(scale)`.
        scale: upscaling factor (the GRM's).
        device, dtype: where and in what precision the models run (default CPU, fp32).
            Samplers keep their patch state in float32 whatever the dtype.
        patch_size, patch_overlap: latent patch geometry for the sampler.
        grm_tile: largest LR tile side the GRM sees at once; bigger images are tiled.
        grm_context: tile border (LR pixels) not trusted, ≥ the GRM's receptive radius
            (default: the GRM's `GRMConfig.receptive_radius`, or `DEFAULT_GRM_CONTEXT`
            for a module without a config).
        max_lr_pixels_per_run: at most this many LR pixels go through one sampler run:
            large images are cut into bands of patch rows (at least one patch row per
            band), small ones share a run.
        quality: preset for a sampler given by name: "fast", "balanced" (default) or "detail".
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
        grm_context: int | None = None,
        max_lr_pixels_per_run: int = DEFAULT_MAX_LR_PIXELS_PER_RUN,
        quality: str = DEFAULT_QUALITY,
    ):
        self.scale, self.model = int(scale), check_model(model)
        self.device = torch.device(device) if device is not None else torch.device("cpu")
        if self.device.type == "cuda" and self.device.index is None:
            self.device = torch.device("cuda", torch.cuda.current_device())
        self.dtype = dtype or torch.float32
        if not 0 <= patch_overlap < patch_size:
            raise ValueError(f"need 0 <= patch_overlap < patch_size, got {patch_overlap}, {patch_size}")
        self.patch_size, self.patch_overlap = int(patch_size), int(patch_overlap)
        self.max_lr_pixels_per_run = int(max_lr_pixels_per_run)
        self.codec = codec if codec is not None else PixelUnshuffleCodec(self.scale)
        if grm is None:
            self.grm = load_grm(self.scale, self.device, self.dtype, model=self.model)
        else:
            self.grm = _on(grm, self.device, self.dtype)
        if grm_context is None:
            config = getattr(self.grm, "config", None)
            grm_context = getattr(config, "receptive_radius", DEFAULT_GRM_CONTEXT)
        check_tiling(grm_tile, grm_context)
        self.grm_tile, self.grm_context = int(grm_tile), int(grm_context)
        if isinstance(sampler, str) or sampler is None:
            self.sampler_name = (sampler or "none").lower()
            self.sampler = build_sampler(self.sampler_name, self.model, self.device, self.dtype, quality)
        else:
            self.sampler_name = getattr(sampler, "name", None) or type(sampler).__name__
            self.sampler = sampler
        self.window = blend_window(self.patch_size, self.patch_overlap, device=self.device)

    def __repr__(self) -> str:
        return (
            f"PatchScalerPipeline(sampler={self.sampler_name!r}, model={self.model!r}, scale={self.scale}, "
            f"device={self.device}, dtype={self.dtype}, patch={self.patch_size}/{self.patch_overlap}, "
            f"grm_tile={self.grm_tile})"
        )

    @torch.no_grad()
    def restore(self, lr: Tensor, progress: bool = False, on_halve: Callable[[int], None] | None = None,
                on_tile: Callable[[int, int], None] | None = None) -> tuple[Tensor, Tensor]:
        """GRM on ``lr [B,3,h,w]`` float [0,1] → ``(y0 [B,C,h,w], conf [B,1,h,w])`` float32.

        On out-of-memory the tile side halves and this image's GRM runs again (down to
        the smallest tile `check_tiling` allows, then the error); ``on_halve(tile)`` is told.
        ``on_tile(done, total)``: tiles done so far (`restore_tiled`).
        """
        lr = lr.to(device=self.device, dtype=self.dtype)
        tile = self.grm_tile
        while True:
            try:
                return restore_tiled(self.grm, lr, tile, self.grm_context, progress, on_tile=on_tile)
            except torch.OutOfMemoryError:
                smaller = min(tile, max(lr.shape[-2:])) // 2
                if smaller <= tile_overlap(self.grm_context):  # the smallest tile check_tiling allows
                    raise torch.OutOfMemoryError(
                        f"{self.device} ran out of memory running the GRM even on {tile}x{tile} tiles; "
                        "free memory on the device, or run on the CPU"
                    ) from None
                if self.device.type == "cuda":
                    torch.cuda.empty_cache()
                tile = smaller
                if on_halve is not None:
                    on_halve(tile)

    @torch.no_grad()
    def upscale_images(
        self,
        images: Sequence[Tensor] | Tensor,
        *,
        seed: int = 0,
        max_batch_patches: int | None = None,
        progress: bool | Callable[[int, int, str], None] = False,
        outputs: Sequence[Any] | None = None,
    ) -> list[tuple[Any, GroupMap]]:
        """Upscale a list of ``[3, h, w]`` (or a ``[B, 3, h, w]`` batch) float images in [0, 1].

        Sizes may differ. Returns, in order, ``(hr, GroupMap)`` per image: ``hr`` is
        ``outputs[i]`` when given (an object with ``write(top, rows [3, r, s·w])``, e.g.
        `patchscaler.inference.output_buffer.ArrayOutput`, filled band by band), else a
        ``[3, s·h, s·w]`` float32 tensor in [0, 1] on the pipeline's device.
        ``progress``: True for tqdm bars, or ``progress(done, total, stage)`` (module docstring).
        """
        if outputs is not None and len(outputs) != len(images):
            raise ValueError(f"need one output per image ({len(images)}), got {len(outputs)}")
        results: list[tuple[Any, GroupMap] | None] = [None] * len(images)
        bar = self._progress_bar() if progress is True and self.sampler is not None else None
        tracker = _Progress(progress if callable(progress) else None, bar)
        try:
            for run in self._runs(self._units(images, outputs)):
                for job in run:  # 1. GRM, 2. patches (of one band)
                    self._restore_band(job, seed, progress is True, tracker)
                if self.sampler is not None:  # 3. sampler
                    self._sample(run, max_batch_patches, tracker)
                for job in run:  # 4. blend, decode into the outputs
                    self._write_band(job)
                    if job.band is job.unit.bands[-1]:
                        for i, res in zip(job.unit.indices, self._finish(job.unit)):
                            results[i] = res
        finally:
            if bar is not None:
                bar.close()
        return results  # type: ignore[return-value]

    # ------------------------------------------------------------------ stages

    def _units(self, images: Sequence[Tensor] | Tensor, outputs: Sequence[Any] | None) -> list[_Unit]:
        """Same-size images grouped (they share GRM forwards and gathers), bounded in LR pixels,
        each with its band plan and an output per image."""
        images = list(images)
        by_size: dict[tuple[int, int], list[int]] = {}
        for i, im in enumerate(images):
            if im.dim() != 3 or im.shape[0] != 3:
                raise ValueError(f"image {i} must be [3, h, w], got {tuple(im.shape)}")
            by_size.setdefault(tuple(im.shape[-2:]), []).append(i)
        units = []
        for (h, w), idx in by_size.items():
            per_run = max(1, LR_PIXELS_PER_UNIT // (h * w))
            plan = plan_patches(h, w, self.patch_size, self.patch_overlap)
            for k in range(0, len(idx), per_run):
                part = idx[k : k + per_run]
                B = len(part)
                rows = band_patch_rows(plan, self.max_lr_pixels_per_run // (B * w))
                units.append(_Unit(
                    indices=part,
                    lr=torch.stack([images[i] for i in part]),
                    plan=plan,
                    bands=plan_bands(plan, rows),
                    blender=BandBlender(plan, self.window, B),
                    outputs=[outputs[i] if outputs is not None and outputs[i] is not None
                             else FloatOutput(h * self.scale, w * self.scale, self.device) for i in part],
                ))
        return units

    def _runs(self, units: list[_Unit]) -> list[list[_Job]]:
        """Every unit's bands, in order, packed into sampler runs of at most
        ``max_lr_pixels_per_run`` LR pixels (a band alone may be more: one patch row)."""
        runs: list[list[_Job]] = []
        pixels = 0
        for unit in units:
            B, _, _, w = unit.lr.shape
            for index, band in enumerate(unit.bands):
                n = B * (band.latent_rows[1] - band.latent_rows[0]) * w
                if not runs or pixels + n > self.max_lr_pixels_per_run:
                    runs.append([])
                    pixels = 0
                runs[-1].append(_Job(unit, band, index))
                pixels += n
        return runs

    def _restore_band(self, job: _Job, seed: int, progress: bool, tracker: "_Progress") -> None:
        """The band's latent rows, patches, seeds, Qmap and groups. The GRM runs on the whole
        image (tiled) at the unit's first band: a conv over a strip of rows is not
        bit-identical to the same rows of the whole-image conv (oneDNN picks its algorithm by
        shape), and its output, at LR size, is a sixteenth of the ×4 image's pixels."""
        unit, (top, bottom) = job.unit, job.band.latent_rows
        if unit.y0 is None:
            unit.y0, unit.conf = self.restore(unit.lr, progress=progress,
                                              on_halve=lambda tile: setattr(unit, "grm_tile_halved_to", tile),
                                              on_tile=tracker.grm_tiles)
            tracker.grm_unit_done()
            self._plan_unit(unit, tracker)
        job.y0 = unit.y0[:, :, top:bottom]
        sub = self._band_plan(unit, job.band)
        B = job.y0.shape[0]
        # Keys (y, x) only: a patch's noise must not depend on its image's batch slot or band.
        origins = sub.origins() + torch.tensor([top, 0])
        job.seeds = derive_seeds(seed, origins).repeat(B)
        job.qmap = unit.qmaps[job.index]
        if unit.group is not None:
            nx = len(unit.plan.xs)
            rows = job.band.patch_rows
            job.group = unit.group[:, rows.start * nx : rows.stop * nx].reshape(-1)
        if self.sampler is not None:
            job.patches = sub.split(job.y0.contiguous())

    @staticmethod
    def _band_plan(unit: _Unit, band: Band) -> PatchPlan:
        """The unit's plan cut to ``band``'s patch rows, in the band's latent rows."""
        top, bottom = band.latent_rows
        plan = unit.plan
        return replace(plan, height=bottom - top, ys=tuple(plan.ys[i] - top for i in band.patch_rows))

    def _plan_unit(self, unit: _Unit, tracker: "_Progress") -> None:
        """Every band's Qmap, and the sampler's groups for each whole image: a policy that
        caps a group's share of an image must see all of its patches, not a band's."""
        B = unit.lr.shape[0]
        for band in unit.bands:
            top, bottom = band.latent_rows
            conf = unit.conf[:, :, top:bottom]
            unit.qmaps.append(patch_qmap(self._band_plan(unit, band).split(conf.contiguous())))
        assign = getattr(self.sampler, "assign_groups", None)
        if assign is None:
            return
        qmap = torch.cat([q.view(B, -1) for q in unit.qmaps], dim=1)  # [B, P], the plan's row-major order
        unit.group = torch.stack([assign(q) for q in qmap])
        planned = getattr(self.sampler, "planned_evaluations", None)
        if planned is not None:
            tracker.plan_dit(planned(unit.group.reshape(-1)))

    def _progress_bar(self):
        from tqdm.auto import tqdm

        return tqdm(desc=f"{self.sampler_name} denoising", unit="patch-step", leave=False)

    def _sample(self, run: list[_Job], max_batch_patches: int | None, tracker: "_Progress") -> None:
        """Denoise the patches of every band of ``run`` in one sampler call."""
        groups = {"group": torch.cat([j.group for j in run])} if all(j.group is not None for j in run) else {}
        res = self.sampler(
            torch.cat([j.patches for j in run]).float(),
            torch.cat([j.qmap for j in run]).float(),
            seeds=torch.cat([j.seeds for j in run]),
            max_batch_patches=max_batch_patches or DEFAULT_MAX_BATCH_PATCHES,
            progress=tracker.dit if tracker.active else None,
            **groups,
        )
        start = 0
        for job in run:
            job.sampled = res.part(start, start + job.qmap.shape[0])
            start += job.qmap.shape[0]
            job.patches = None

    def _write_band(self, job: _Job) -> None:
        """Blend the band's final rows (the GRM latent for "none"), decode, write to the outputs."""
        unit, band = job.unit, job.band
        a, b = band.final_rows
        if job.sampled is not None:
            latent = unit.blender.add(band, job.sampled.x0.float())
            unit.parts.append(replace(job.sampled, x0=job.sampled.x0[:0]))  # the counts; x0 is blended
            job.sampled = None
        else:
            latent = job.y0[:, :, a - band.latent_rows[0] : b - band.latent_rows[0]]
        job.y0 = None
        hr = self.codec.decode(latent.float()).clamp_(0, 1)
        for out, rows in zip(unit.outputs, hr):
            out.write(a * self.scale, rows)

    def _finish(self, unit: _Unit) -> list[tuple[Any, GroupMap]]:
        """Package the unit's images: its outputs and a GroupMap each."""
        B, _, h, w = unit.lr.shape
        plan, n = unit.plan, unit.plan.num_patches
        qmap = torch.cat([q.cpu().view(B, -1) for q in unit.qmaps], dim=1)  # [B, P], the plan's row-major order
        if unit.parts:
            def per_image(field_of) -> Tensor:
                return torch.cat([field_of(p).cpu().view(B, -1) for p in unit.parts], dim=1)

            group, steps = per_image(lambda p: p.group.long()), per_image(lambda p: p.steps.long())
            fp32 = per_image(lambda p: p.fp32_steps if p.fp32_steps is not None else torch.zeros_like(p.steps))
            halved = [p.batch_halved_to for p in unit.parts if p.batch_halved_to is not None]
            gpx = group_pixels(plan, group.reshape(-1).to(self.device), self.window)
            names = getattr(unit.parts[0], "group_names", None) or GROUP_NAMES
        else:
            group = torch.full((B, n), -1, dtype=torch.long)
            steps = fp32 = torch.zeros(B, n, dtype=torch.long)
            gpx = torch.full((B, h, w), -1, dtype=torch.long)
            halved, names = [], GROUP_NAMES
        origins = plan.origins()
        results = []
        for i in range(B):
            gmap = GroupMap(
                sampler=self.sampler_name,
                scale=self.scale,
                patch_size=self.patch_size,
                origins=origins,
                qmap=qmap[i].float(),
                group=group[i],
                steps=steps[i],
                confidence=unit.conf[i].float().cpu(),
                group_pixels=gpx[i],
                group_names=tuple(names),
                fp32_evaluations=int(fp32[i].sum()),
                dit_batch_halved_to=min(halved) if halved else None,
                grm_tile_halved_to=unit.grm_tile_halved_to,
            )
            out = unit.outputs[i]
            results.append((out.tensor if isinstance(out, FloatOutput) else out, gmap))
        unit.lr = unit.y0 = unit.conf = None  # type: ignore[assignment]
        return results


class _Progress:
    """One call's progress: GRM tiles and DiT patch-evaluations, told to a
    ``report(done, total, stage)`` callable and/or the tqdm bar of ``progress=True``.
    Counts only grow (a GRM retried on smaller tiles after out-of-memory starts over)."""

    def __init__(self, report: Callable[[int, int, str], None] | None, bar: Any):
        self.report, self.bar = report, bar
        self.done = {"grm": 0, "dit": 0}
        self.total = {"grm": 0, "dit": 0}
        self._grm_base = 0  # tiles of the units already restored

    @property
    def active(self) -> bool:
        return self.report is not None or self.bar is not None

    def _emit(self, stage: str) -> None:
        if self.report is not None:
            # A sampler that cannot plan its work has no total: it is what is done so far.
            self.report(self.done[stage], max(self.total[stage], self.done[stage]), stage)

    def plan_dit(self, evaluations: int) -> None:
        """A unit's images were planned: ``evaluations`` more to come."""
        self.total["dit"] += evaluations
        if self.bar is not None:
            self.bar.total = self.total["dit"]
            self.bar.refresh()
        self._emit("dit")

    def dit(self, evaluations: int) -> None:
        """A denoiser call ran ``evaluations`` patch-evaluations."""
        self.done["dit"] += evaluations
        if self.bar is not None:
            self.bar.update(evaluations)
        self._emit("dit")

    def grm_tiles(self, done: int, total: int) -> None:
        """The current unit's GRM has run ``done`` of its ``total`` tiles."""
        self.done["grm"] = max(self.done["grm"], self._grm_base + done)
        self.total["grm"] = max(self.total["grm"], self._grm_base + total)
        self._emit("grm")

    def grm_unit_done(self) -> None:
        self._grm_base = self.total["grm"]


def _on(module: nn.Module, device: torch.device, dtype: torch.dtype) -> nn.Module:
    """``module`` in eval mode on ``device``/``dtype``; a copy if it has to change, so a
    module the caller also uses elsewhere (or in another pipeline) is left as it was."""
    params = list(module.parameters()) + list(module.buffers())
    if any(p.device != device or (p.is_floating_point() and p.dtype != dtype) for p in params):
        module = copy.deepcopy(module).to(device=device, dtype=dtype)
    return module.eval()
