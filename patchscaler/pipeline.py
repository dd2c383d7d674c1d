"""The inference pipeline (SPEC §1–2): LR image → GRM → sampler → blend → decode → ×4 image.

    pipe = PatchScalerPipeline(sampler="none")            # shipped GRM, loaded once
    [(hr, groups)] = pipe.upscale_images([lr])            # lr [3,h,w] float [0,1]

Stages, per batch of images:

1. **GRM** at LR resolution → coarse latent ``y0 [B,3s²,h,w]`` and confidence
   ``C [B,1,h,w]``. Large images run as overlapping tiles (at most `grm_tile` LR pixels a
   side) so activation memory stays bounded; tiles are cut and put back with the
   patch ops, giving no weight to a tile's outer `grm_context` pixels (where the
   tile's zero padding differs from the image's) except on the image border. With
   ``grm_context`` ≥ the GRM's receptive radius the tiled result equals the
   whole-image one.
2. **Sampler** (``"pgs"``/``"uniform"``): the latent is cut into overlapping
   `patch_size` patches (`patchscaler.patch_plan`); each patch's Qmap is its mean
   confidence; the sampler denoises every patch of every image in one ragged loop and
   returns ``x̂0`` per patch, which is blended back with the smooth window.
   ``"none"`` keeps ``y0``.
3. **Decode** with the codec (pixel shuffle) and clamp to [0, 1].

Determinism: a patch's diffusion noise comes from its own seed, derived from the
user's seed and the patch's (y, x) position in its image (`derive_seeds`), never
from a global random stream, so an image's result does not depend on the other
images in the batch, on chunk sizes or on the device's RNG state (up to float
rounding of differently-sized matrix products, ~1e-6).

Sampler interface (implemented by `patchscaler.sampling.PGSSampler` /
`UniformSampler`; tests pass their own)::

    sampler(y0_patches [P,C,ph,pw] float32, qmap [P] float32, seeds=[P] int64,
            max_batch_patches=int, progress=callable(n_evaluations) | None)
        -> object with .x0 [P,C,ph,pw], .group [P] int64, .steps [P] int64
"""

from __future__ import annotations

import copy
import functools
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import torch
from torch import Tensor, nn

import patchscaler  # noqa: F401  (registers torch.ops.patchscaler.*)
from patchscaler.codec import PixelUnshuffleCodec
from patchscaler.patch_plan import PatchPlan, blend_window, plan_patches
from patchscaler.sampling.pgs import GROUP_NAMES, UniformSampler, derive_seeds

__all__ = [
    "SAMPLERS",
    "GROUP_NAMES",
    "GroupMap",
    "PatchScalerPipeline",
    "WeightsNotAvailableError",
    "build_sampler",
    "sampler_available",
]

SAMPLERS = ("pgs", "uniform", "none")
DEFAULT_PATCH_SIZE = 16  # latent pixels (= 64×64 HR pixels at ×4), SPEC §2
DEFAULT_PATCH_OVERLAP = 4
DEFAULT_MAX_BATCH_PATCHES = 256
DEFAULT_GRM_TILE = 512  # LR pixels a side: the shipped GRM's widest layer (192 ch) on 512² is 200 MB in fp32
DEFAULT_GRM_CONTEXT = 16  # > the shipped GRM's receptive radius (10 LR pixels: 10 3×3 convs, bicubic taps 2)
_TILE_SLACK = 8  # GRM tiles overlap by 2·context + this, so cores overlap too
DEFAULT_MAX_LR_PIXELS_PER_RUN = 1 << 20  # latent pixels denoised per sampler run; bounds the patch state


class WeightsNotAvailableError(RuntimeError):
    """A sampler or model was asked for whose weights this install does not ship."""


# ----------------------------------------------------------------------------- result


@dataclass
class GroupMap:
    """What the sampler did to one image (``return_groups=True``).

    Coordinates are latent pixels, which at ×s are LR pixels (one latent pixel = an
    s×s HR block). Patches are ``patch_size`` a side, top-left at ``origins``.

    sampler: "pgs", "uniform" or "none".
    scale: the upscaling factor s.
    patch_size: latent patch side (pixels).
    origins: ``[P, 2]`` int64 (y, x) of each patch in the (unpadded) image; patches of
        an image smaller than one patch start at 0 and reach past it.
    qmap: ``[P]`` float32 mean confidence of each patch.
    group: ``[P]`` int64 index into ``group_names`` (−1 everywhere for "none").
    steps: ``[P]`` int64 denoising steps each patch received (0 for "none").
    confidence: ``[1, h, w]`` float32 GRM confidence in (0, 1) per LR pixel.
    group_pixels: ``[h, w]`` int64 group of the patch that weighs most at each LR
        pixel (−1 for "none"): the picture `patchscaler.visualize` draws.
    group_names: names of the groups, easy → hard.
    """

    sampler: str
    scale: int
    patch_size: int
    origins: Tensor
    qmap: Tensor
    group: Tensor
    steps: Tensor
    confidence: Tensor
    group_pixels: Tensor
    group_names: tuple[str, ...] = GROUP_NAMES

    @property
    def sampled(self) -> bool:
        """Whether any diffusion sampling happened (False for sampler "none")."""
        return self.sampler != "none"

    @property
    def evaluations(self) -> int:
        """Denoiser patch-evaluations spent on this image (Σ steps)."""
        return int(self.steps.sum())

    def summary(self) -> dict:
        """JSON-friendly counts: patches and steps per group, evaluations, mean confidence."""
        out: dict[str, Any] = {
            "sampler": self.sampler,
            "patches": int(self.group.numel()),
            "evaluations": self.evaluations,
            "mean_confidence": float(self.confidence.float().mean()) if self.confidence.numel() else None,
        }
        if self.sampled:
            out["groups"] = {
                name: {
                    "patches": int((self.group == g).sum()),
                    "steps": sorted({int(s) for s in self.steps[self.group == g].tolist()}),
                }
                for g, name in enumerate(self.group_names)
            }
            out["uniform_evaluations"] = int(self.steps.max()) * int(self.steps.numel()) if self.steps.numel() else 0
        return out


# ------------------------------------------------------------------------ samplers


def _dit_weights_present() -> bool:
    from patchscaler.models.dit import DEFAULT_DIT_PATH

    return DEFAULT_DIT_PATH.is_file()


def sampler_available(name: str) -> bool:
    """Whether ``name`` can run on this install (its weights ship with the package)."""
    if name == "none":
        return True
    if name in ("pgs", "uniform"):
        try:
            return _dit_weights_present()
        except ImportError:
            return False
    return False


def build_sampler(
    name: str, device: torch.device, dtype: torch.dtype, quality: str = "balanced"
) -> Callable | None:
    """The packaged sampler ``name`` on ``device``/``dtype``; None for "none".

    ``quality``: the shipped PGS config's preset ("fast", "balanced", "detail"; thresholds
    only, so "uniform" is the same for all three). Raises `WeightsNotAvailableError` when the Patch-DiT
    weights are not shipped: asking for diffusion must never quietly return the GRM's output.
    """
    if name == "none":
        return None
    if name not in SAMPLERS:
        raise ValueError(f"unknown sampler {name!r}; choose one of {', '.join(map(repr, SAMPLERS))}")
    if not sampler_available(name):
        from patchscaler.models.dit import DEFAULT_DIT_PATH

        raise WeightsNotAvailableError(
            f"sampler {name!r} needs the Patch-DiT weights ({DEFAULT_DIT_PATH.name}), which this install "
            "of patchscaler does not include; use sampler='none' (the GRM alone) or train them with "
            "`python -m patchscaler.train.dit`"
        )
    from patchscaler.sampling import PGSSampler, UniformSampler
    from patchscaler.sampling.pgs import PGSConfig

    config = PGSConfig.load().preset(quality)
    return (PGSSampler if name == "pgs" else UniformSampler)(_shipped_denoiser(device, dtype), config)


@functools.lru_cache(maxsize=8)
def _shipped_denoiser(device: torch.device, dtype: torch.dtype):
    """The packaged DiT + texture memory, loaded once per (device, dtype) and shared by
    every sampler built on them (the presets differ only in their thresholds)."""
    from patchscaler.sampling import DiTDenoiser

    return DiTDenoiser.from_pretrained(device=device, dtype=dtype)


# ------------------------------------------------------------------------ pipeline

def _load_shipped_grm(scale: int, device: torch.device, dtype: torch.dtype) -> nn.Module:
    from patchscaler.models.grm import load_grm, weights_path

    if not weights_path(scale).is_file():
        raise WeightsNotAvailableError(
            f"the GRM weights ({weights_path(scale)}) are not in this install of patchscaler; "
            "reinstall it, or train them with `python -m patchscaler.train.grm`"
        )
    return load_grm(scale=scale, device=device, dtype=dtype)  # cached per (scale, device, dtype)


@dataclass
class _Unit:
    """A batch of same-size images on its way through the pipeline."""

    indices: list[int]  # positions in the caller's list
    lr: Tensor  # [B,3,h,w]
    y0: Tensor | None = None  # [B,C,h,w] float32
    conf: Tensor | None = None  # [B,1,h,w] float32
    plan: PatchPlan | None = None  # latent patches of one image
    seeds: Tensor | None = None  # [B·P] int64
    qmap: Tensor | None = None  # [B·P] float32
    out: dict = field(default_factory=dict)  # sampler outputs for this unit's patches


class PatchScalerPipeline:
    """LR images → ×s images (module docstring). Build once, call many times.

    Args:
        grm: the GRM module (``lr [B,3,h,w]`` → ``(y0, confidence)``); default: the
            shipped weights for ``scale``, loaded once per (device, dtype).
        sampler: "pgs", "uniform", "none", or a sampler object (module docstring).
        codec: latent codec with ``decode``; default `PixelUnshuffleCodec(scale)`.
        scale: upscaling factor (the GRM's).
        device, dtype: where and in what precision the models run (default CPU, fp32).
            Samplers keep their patch state in float32 whatever the dtype.
        patch_size, patch_overlap: latent patch geometry for the sampler.
        grm_tile: largest LR tile side the GRM sees at once; bigger images are tiled.
        grm_context: tile border (LR pixels) not trusted, ≥ the GRM's receptive radius.
        max_lr_pixels_per_run: at most this many LR pixels go through one sampler run
            (whole images; an image never splits across runs).
        quality: PGS preset for a sampler given by name: "fast", "balanced" (default) or
            "detail" (calibrated thresholds that send fewer or more patches to the hard group).
    """

    def __init__(
        self,
        *,
        grm: nn.Module | None = None,
        sampler: str | Callable | None = "none",
        codec: Any = None,
        scale: int = 4,
        device: str | torch.device | None = None,
        dtype: torch.dtype | None = None,
        patch_size: int = DEFAULT_PATCH_SIZE,
        patch_overlap: int = DEFAULT_PATCH_OVERLAP,
        grm_tile: int = DEFAULT_GRM_TILE,
        grm_context: int = DEFAULT_GRM_CONTEXT,
        max_lr_pixels_per_run: int = DEFAULT_MAX_LR_PIXELS_PER_RUN,
        quality: str = "balanced",
    ):
        self.scale = int(scale)
        self.device = torch.device(device) if device is not None else torch.device("cpu")
        if self.device.type == "cuda" and self.device.index is None:
            self.device = torch.device("cuda", torch.cuda.current_device())
        self.dtype = dtype or torch.float32
        if grm_tile <= 2 * grm_context + _TILE_SLACK:
            raise ValueError(f"grm_tile ({grm_tile}) must exceed 2*grm_context + {_TILE_SLACK} = {2 * grm_context + _TILE_SLACK}")
        if not 0 <= patch_overlap < patch_size:
            raise ValueError(f"need 0 <= patch_overlap < patch_size, got {patch_overlap}, {patch_size}")
        self.patch_size, self.patch_overlap = int(patch_size), int(patch_overlap)
        self.grm_tile, self.grm_context = int(grm_tile), int(grm_context)
        self.max_lr_pixels_per_run = int(max_lr_pixels_per_run)
        self.codec = codec if codec is not None else PixelUnshuffleCodec(self.scale)
        if grm is None:
            grm = _load_shipped_grm(self.scale, self.device, self.dtype)
        else:
            grm = _on(grm, self.device, self.dtype)
        self.grm = grm
        if isinstance(sampler, str) or sampler is None:
            self.sampler_name = (sampler or "none").lower()
            self.sampler = build_sampler(self.sampler_name, self.device, self.dtype, quality)
        else:
            self.sampler_name = getattr(sampler, "name", None) or (
                "uniform" if isinstance(sampler, UniformSampler) else "pgs"
            )
            self.sampler = sampler
        self._windows: dict[tuple, Tensor] = {}

    def __repr__(self) -> str:
        return (
            f"PatchScalerPipeline(sampler={self.sampler_name!r}, scale={self.scale}, device={self.device}, "
            f"dtype={self.dtype}, patch={self.patch_size}/{self.patch_overlap}, grm_tile={self.grm_tile})"
        )

    # ------------------------------------------------------------------ GRM

    def _tile_weights(self, plan: PatchPlan, batch: int) -> Tensor:
        """``[batch·T, 1, th, tw]`` float32: 1 on each tile's trusted core, 0 on its outer
        ``grm_context`` band, except along sides that lie on the image border (there the
        tile's zero padding is the image's own, so those pixels are exact too)."""
        (th, tw), c = plan.patch, self.grm_context

        def axis(origin: int, n: int, size: int) -> Tensor:
            w = torch.ones(n)
            if origin > 0:
                w[:c] = 0
            if origin + n < size:
                w[n - c :] = 0
            return w

        wy = torch.stack([axis(y, th, plan.height) for y, _ in plan.origins().tolist()])
        wx = torch.stack([axis(x, tw, plan.width) for _, x in plan.origins().tolist()])
        w = (wy[:, :, None] * wx[:, None, :])[:, None]
        return w.repeat(batch, 1, 1, 1).to(self.device)

    @torch.no_grad()
    def restore(self, lr: Tensor, progress: bool = False) -> tuple[Tensor, Tensor]:
        """GRM on ``lr [B,3,h,w]`` float [0,1] → ``(y0 [B,C,h,w], conf [B,1,h,w])`` float32.

        Images larger than ``grm_tile`` run as overlapping tiles, at most ``grm_tile²``
        pixels per forward.
        """
        lr = lr.to(device=self.device, dtype=self.dtype)
        B, _, h, w = lr.shape
        if h <= self.grm_tile and w <= self.grm_tile:
            y0, conf = self.grm(lr)
            return y0.float(), conf.float()
        # Tiles overlap by 2·context + a little, so every pixel lies in some tile's trusted core.
        overlap = 2 * self.grm_context + _TILE_SLACK
        th, tw = _balanced_tile(h, self.grm_tile, overlap), _balanced_tile(w, self.grm_tile, overlap)
        plan = plan_patches(h, w, (th, tw), (min(overlap, th - 1), min(overlap, tw - 1)))
        tiles = plan.split(lr.contiguous())
        # Several small tiles per forward, as long as they add up to one full tile's pixels.
        per_forward = max(1, self.grm_tile**2 // (th * tw))
        outs_y0, outs_conf = [], []
        chunks = tiles.split(per_forward)
        if progress and len(chunks) > 1:
            from tqdm.auto import tqdm

            chunks = tqdm(chunks, desc="GRM tiles", unit="batch", leave=False)
        for chunk in chunks:
            y0, conf = self.grm(chunk)
            outs_y0.append(y0.float())
            outs_conf.append(conf.float())
        # Blend with a per-tile weight (sum of w·tile / sum of w); cores overlap, so the
        # weight sum is >= 1 everywhere, and every contributing value is exact.
        weights = self._tile_weights(plan, B)
        origins = plan.batch_origins(B, self.device)
        den = torch.ops.patchscaler.scatter_add_patches(weights, origins, B, h, w)
        y0 = torch.ops.patchscaler.scatter_add_patches(torch.cat(outs_y0) * weights, origins, B, h, w) / den
        conf = torch.ops.patchscaler.scatter_add_patches(torch.cat(outs_conf) * weights, origins, B, h, w) / den
        return y0, conf

    # -------------------------------------------------------------- sampler

    def _patch_window(self) -> Tensor:
        key = ("patch", self.patch_size, self.patch_overlap)
        if key not in self._windows:
            self._windows[key] = blend_window(self.patch_size, self.patch_overlap, device=self.device)
        return self._windows[key]

    def _plan_unit(self, unit: _Unit, seed: int) -> None:
        """Plan the unit's patches (padding images smaller than one), their seeds and Qmap."""
        B, _, h, w = unit.y0.shape
        unit.plan = plan_patches(h, w, self.patch_size, self.patch_overlap)
        # Keys (y, x) only: a patch's noise must not depend on its image's batch slot.
        unit.seeds = derive_seeds(seed, unit.plan.origins()).repeat(B)
        unit.qmap = unit.plan.split(unit.conf.contiguous()).mean(dim=(1, 2, 3))

    def _run_sampler(self, units: list[_Unit], max_batch_patches: int | None, progress: bool) -> None:
        """Denoise the patches of all ``units`` in one sampler call; results go to ``unit.out``."""
        y0_all = torch.cat([u.plan.split(u.y0.contiguous()) for u in units])
        q_all = torch.cat([u.qmap for u in units])
        s_all = torch.cat([u.seeds for u in units])
        bar, callback = None, None
        if progress:
            from tqdm.auto import tqdm

            total = self._planned_evaluations(q_all)
            bar = tqdm(total=total, desc=f"{self.sampler_name} denoising", unit="patch-step", leave=False)
            callback = bar.update
        try:
            res = self.sampler(
                y0_all.float(),
                q_all.float(),
                seeds=s_all,
                max_batch_patches=max_batch_patches or DEFAULT_MAX_BATCH_PATCHES,
                progress=callback,
            )
        finally:
            if bar is not None:
                bar.close()
        start = 0
        for u in units:
            n = u.qmap.shape[0]
            sl = slice(start, start + n)
            u.out = {"x0": res.x0[sl], "group": res.group[sl], "steps": res.steps[sl]}
            start += n

    def _planned_evaluations(self, qmap: Tensor) -> int | None:
        """Σ steps the sampler will take, when it exposes its grouping (for the progress bar)."""
        assign = getattr(self.sampler, "assign_groups", None)
        config = getattr(self.sampler, "config", None)
        if assign is None or config is None or not hasattr(config, "groups"):
            return None
        n = torch.tensor([steps for _, steps in config.groups])
        return int(n[assign(qmap).cpu()].sum())

    # ---------------------------------------------------------------- driver

    def _finish_unit(self, unit: _Unit) -> list[tuple[Tensor, GroupMap]]:
        """Blend (if sampled), decode and package the unit's images."""
        B, _, h, w = unit.y0.shape
        plan = unit.plan
        latent = plan.merge(unit.out["x0"].float().contiguous(), self._patch_window()) if unit.out else unit.y0
        hr = self.codec.decode(latent.float()).clamp_(0, 1)
        group_px = self._group_pixels(unit) if unit.out else None
        n = plan.num_patches
        origins = plan.origins()
        results = []
        for i in range(B):
            sl = slice(i * n, (i + 1) * n)
            if unit.out:
                group, steps = unit.out["group"][sl].long().cpu(), unit.out["steps"][sl].long().cpu()
                gpx = group_px[i]
            else:
                group = torch.full((n,), -1, dtype=torch.long)
                steps = torch.zeros(n, dtype=torch.long)
                gpx = torch.full((h, w), -1, dtype=torch.long)
            gmap = GroupMap(
                sampler=self.sampler_name,
                scale=self.scale,
                patch_size=self.patch_size,
                origins=origins,
                qmap=unit.qmap[sl].float().cpu(),
                group=group,
                steps=steps,
                confidence=unit.conf[i].float().cpu(),
                group_pixels=gpx,
            )
            results.append((hr[i], gmap))
        return results

    def _group_pixels(self, unit: _Unit) -> Tensor:
        """``[B, h, w]`` int64: per LR pixel, the group of the patch with the largest window weight there."""
        B, _, h, w = unit.y0.shape
        groups = unit.out["group"].long().to(self.device)
        k = int(groups.max()) + 1 if groups.numel() else 1
        one_hot = torch.nn.functional.one_hot(groups, k).float()[:, :, None, None]
        # Each patch votes for its group with its window weight; blending normalises the
        # votes per pixel, and the argmax is the group of the patch that weighs most.
        votes = unit.plan.merge((one_hot * self._patch_window()).contiguous(), torch.ones_like(self._patch_window()))
        return votes.argmax(1).cpu()

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
        if isinstance(images, Tensor) and images.dim() == 4:
            images = list(images)
        images = list(images)
        # Same-size images share GRM forwards and gathers; runs are bounded in LR pixels.
        by_size: dict[tuple[int, int], list[int]] = {}
        for i, im in enumerate(images):
            if im.dim() != 3 or im.shape[0] != 3:
                raise ValueError(f"image {i} must be [3, h, w], got {tuple(im.shape)}")
            by_size.setdefault(tuple(im.shape[-2:]), []).append(i)
        units: list[_Unit] = []
        for (h, w), idx in by_size.items():
            per_run = max(1, self.max_lr_pixels_per_run // (h * w))
            for k in range(0, len(idx), per_run):
                chunk = idx[k : k + per_run]
                units.append(_Unit(chunk, torch.stack([images[i] for i in chunk])))

        results: list[tuple[Tensor, GroupMap] | None] = [None] * len(images)
        pending: list[_Unit] = []
        pending_pixels = 0

        def flush() -> None:
            nonlocal pending, pending_pixels
            if not pending:
                return
            if self.sampler is not None:
                self._run_sampler(pending, max_batch_patches, progress)
            for u in pending:
                for i, res in zip(u.indices, self._finish_unit(u)):
                    results[i] = res
                u.lr = u.y0 = u.conf = None  # free as we go
            pending, pending_pixels = [], 0

        for unit in units:
            pixels = unit.lr.shape[0] * unit.lr.shape[2] * unit.lr.shape[3]
            if pending and pending_pixels + pixels > self.max_lr_pixels_per_run:
                flush()
            unit.y0, unit.conf = self.restore(unit.lr, progress=progress)
            self._plan_unit(unit, seed)
            pending.append(unit)
            pending_pixels += pixels
        flush()
        return results  # type: ignore[return-value]


def _on(module: nn.Module, device: torch.device, dtype: torch.dtype) -> nn.Module:
    """``module`` in eval mode on ``device``/``dtype``; a copy if it has to change, so a
    module the caller also uses elsewhere (or in another pipeline) is left as it was."""
    params = list(module.parameters()) + list(module.buffers())
    if any(p.device != device or (p.is_floating_point() and p.dtype != dtype) for p in params):
        module = copy.deepcopy(module).to(device=device, dtype=dtype)
    return module.eval()


def _balanced_tile(size: int, max_tile: int, overlap: int) -> int:
    """Tile side along an axis of ``size``: the fewest tiles of at most ``max_tile`` that
    cover it with ``overlap``, made equal, so no tile is mostly a repeat of its neighbour."""
    if size <= max_tile:
        return size
    n = -(-(size - overlap) // (max_tile - overlap))
    return min(max_tile, -(-(size + (n - 1) * overlap) // n))
