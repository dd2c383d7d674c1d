"""Where the patches go: origins that cover an image, and the window that blends them.

A plan cuts an image of any size >= 1x1 into overlapping ph x pw patches:

- Along each axis the origins step by `patch - overlap` from 0, and the last
  patch is shifted back inside the image (origin `size - patch`), so every pixel
  is covered, no patch hangs over the border, and neighbours overlap by at
  least `overlap` pixels (the last pair by more).
- An image smaller than one patch along an axis is padded up to the patch size
  at its bottom/right by edge replication (`pad_to_patch`), cut as a single
  patch along that axis, and the blended result is cropped back
  (`PatchPlan.merge`). Replication keeps the padded content close to the image's
  own statistics (zeros would look like a hard edge to the denoiser), and unlike
  reflection it works for any size, 1 pixel included.

`blend_window` is a separable raised-cosine taper: 1 in the middle, ramping down
over `overlap` pixels at every side to a positive floor, so it is > 0 wherever a
pixel is covered and `blend_patches` (which divides by the summed weights) is
well defined. For neighbours overlapping by exactly `overlap`, the two ramps sum
to a constant, so interior seams are a plain cross-fade.

Origins are int64 tensors: [P, 2] rows (y, x) for one image, or [B*P, 3] rows
(b, y, x) for a batch (`batch_origins`), the form `gather_patches` and
`blend_patches` take.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from patchscaler.ops.patches import blend_patches, gather_patches, scatter_add_patches

__all__ = [
    "axis_origins",
    "patch_origins",
    "batch_origins",
    "blend_window",
    "padded_size",
    "pad_to_patch",
    "PatchPlan",
    "plan_patches",
]


def _pair(v: int | tuple[int, int]) -> tuple[int, int]:
    if isinstance(v, int):
        return (v, v)
    a, b = v
    return (int(a), int(b))


def axis_origins(size: int, patch: int, overlap: int) -> list[int]:
    """Start offsets of the patches along one axis of length `size` (pixels).

    Covers [0, max(size, patch)): step `patch - overlap`, last origin moved to
    `size - patch`. A single origin 0 when size <= patch (the axis is padded).
    """
    if size < 1:
        raise ValueError(f"size must be >= 1, got {size}")
    if patch < 1:
        raise ValueError(f"patch must be >= 1, got {patch}")
    if not 0 <= overlap < patch:
        raise ValueError(f"overlap must be in [0, patch) = [0, {patch}), got {overlap}")
    if size <= patch:
        return [0]
    stride = patch - overlap
    n = -(-(size - patch) // stride) + 1  # ceil: the fewest patches that reach the end
    return [min(i * stride, size - patch) for i in range(n)]


def padded_size(height: int, width: int, patch: int | tuple[int, int]) -> tuple[int, int]:
    """(H', W') = (max(H, ph), max(W, pw)): the size the image is cut at."""
    ph, pw = _pair(patch)
    return max(height, ph), max(width, pw)


def pad_to_patch(x: Tensor, patch: int | tuple[int, int]) -> Tensor:
    """Pad x [..., H, W] at the bottom/right by edge replication to at least one patch.

    Returns x itself when it is already >= ph x pw.
    """
    ph, pw = _pair(patch)
    H, W = x.shape[-2:]
    pad_h, pad_w = max(ph - H, 0), max(pw - W, 0)
    if pad_h == 0 and pad_w == 0:
        return x
    # F.pad's replicate mode wants a batch dim (and float for some versions); index
    # instead: clamped row/column indices are edge replication, for any dtype/rank.
    rows = torch.arange(H + pad_h, device=x.device).clamp_(max=H - 1)
    cols = torch.arange(W + pad_w, device=x.device).clamp_(max=W - 1)
    return x.index_select(-2, rows).index_select(-1, cols)


def patch_origins(
    height: int, width: int, patch: int | tuple[int, int] = 16, overlap: int | tuple[int, int] = 4
) -> Tensor:
    """Origins [P, 2] int64 (y, x), row-major, covering an image padded to `padded_size`."""
    ph, pw = _pair(patch)
    oh, ow = _pair(overlap)
    ys = torch.tensor(axis_origins(height, ph, oh), dtype=torch.int64)
    xs = torch.tensor(axis_origins(width, pw, ow), dtype=torch.int64)
    return torch.cartesian_prod(ys, xs).reshape(-1, 2)


def batch_origins(origins_yx: Tensor, batch: int) -> Tensor:
    """[P, 2] (y, x) origins of one image -> [batch*P, 3] (b, y, x), image-major.

    Patch k of image b is row b*P + k.
    """
    if batch < 1:
        raise ValueError(f"batch must be >= 1, got {batch}")
    if origins_yx.dim() != 2 or origins_yx.shape[1] != 2:
        raise ValueError(f"origins_yx must be [P, 2] (y, x), got {tuple(origins_yx.shape)}")
    P = origins_yx.shape[0]
    b = torch.arange(batch, dtype=torch.int64, device=origins_yx.device).repeat_interleave(P)
    return torch.cat([b[:, None], origins_yx.to(torch.int64).repeat(batch, 1)], dim=1)


def _taper(n: int, overlap: int, floor: float) -> Tensor:
    """1-D window of length n: sin^2 ramps over `overlap` samples at both ends, floor > 0."""
    w = torch.ones(n, dtype=torch.float64)
    if overlap > 0:
        k = torch.arange(n, dtype=torch.float64)
        # Sample the ramp at pixel centres (k + 0.5): never exactly 0, and a ramp up
        # and the mirrored ramp down over the same `overlap` pixels sum to 1.
        up = torch.sin(0.5 * math.pi * (k + 0.5) / overlap).square()
        up = torch.where(k < overlap, up, 1.0)
        w = torch.minimum(up, up.flip(0))
    return floor + (1.0 - floor) * w


def blend_window(
    patch: int | tuple[int, int],
    overlap: int | tuple[int, int],
    floor: float = 1e-3,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str | None = None,
) -> Tensor:
    """Blending window [ph, pw] in (0, 1]: separable raised-cosine taper over `overlap`.

    `floor` (> 0) is the smallest weight, so edge pixels covered by one patch keep
    a positive weight sum.
    """
    ph, pw = _pair(patch)
    oh, ow = _pair(overlap)
    if not 0 < floor <= 1:
        raise ValueError(f"floor must be in (0, 1], got {floor}")
    w = _taper(ph, min(oh, ph), floor)[:, None] * _taper(pw, min(ow, pw), floor)[None, :]
    return w.to(dtype=dtype, device=device)


@dataclass(frozen=True)
class PatchPlan:
    """How to cut images of `height` x `width` (pixels of the latent) into patches.

    `ys`, `xs`: origins along each axis (see `axis_origins`); the patches are
    their cartesian product, row-major.
    """

    height: int
    width: int
    patch: tuple[int, int]
    overlap: tuple[int, int]
    ys: tuple[int, ...]
    xs: tuple[int, ...]

    @property
    def padded(self) -> tuple[int, int]:
        """(H', W'): the size the (padded) image is cut at."""
        return padded_size(self.height, self.width, self.patch)

    @property
    def grid(self) -> tuple[int, int]:
        """Patches per column and per row."""
        return len(self.ys), len(self.xs)

    @property
    def num_patches(self) -> int:
        """Patches per image."""
        return len(self.ys) * len(self.xs)

    def origins(self, device: torch.device | str | None = None) -> Tensor:
        """[P, 2] int64 (y, x) origins of one image."""
        o = torch.cartesian_prod(torch.tensor(self.ys), torch.tensor(self.xs)).reshape(-1, 2)
        return o.to(device=device, dtype=torch.int64)

    def batch_origins(self, batch: int, device: torch.device | str | None = None) -> Tensor:
        """[batch*P, 3] int64 (b, y, x) origins, image-major."""
        return batch_origins(self.origins(device), batch)

    def window(self, dtype: torch.dtype = torch.float32, device=None, floor: float = 1e-3) -> Tensor:
        """The blending window [ph, pw] for this plan's patch and overlap."""
        return blend_window(self.patch, self.overlap, floor=floor, dtype=dtype, device=device)

    def split(self, x: Tensor) -> Tensor:
        """x [B, C, H, W] -> patches [B*P, C, ph, pw] (padded if smaller than a patch)."""
        if tuple(x.shape[-2:]) != (self.height, self.width):
            raise ValueError(f"plan is for {self.height}x{self.width} images, got x of shape {tuple(x.shape)}")
        xp = pad_to_patch(x, self.patch)
        return gather_patches(xp, self.batch_origins(x.shape[0], x.device), *self.patch)

    def merge(self, patches: Tensor, window: Tensor | None = None, *, weights: Tensor | None = None) -> Tensor:
        """patches [B*P, C, ph, pw] -> blended images [B, C, H, W] (cropped back from padding).

        `window` [ph, pw]: the one blending window of every patch (default: the plan's).
        `weights` [B*P, 1, ph, pw] instead: a weight per patch pixel, `sum w*patch / sum w`;
        every pixel must get a positive weight sum.
        """
        P = self.num_patches
        if patches.shape[0] % P != 0:
            raise ValueError(f"expected a multiple of {P} patches, got {patches.shape[0]}")
        B = patches.shape[0] // P
        Hp, Wp = self.padded
        origins = self.batch_origins(B, patches.device)
        if weights is not None:
            out = scatter_add_patches(patches * weights, origins, B, Hp, Wp) / scatter_add_patches(weights, origins, B, Hp, Wp)
        else:
            if window is None:
                window = self.window(patches.dtype, patches.device)
            out = blend_patches(patches, origins, window, B, Hp, Wp)
        return out[..., : self.height, : self.width]


def plan_patches(
    height: int, width: int, patch: int | tuple[int, int] = 16, overlap: int | tuple[int, int] = 4
) -> PatchPlan:
    """A `PatchPlan` for height x width images (defaults: latent patch 16, overlap 4)."""
    ph, pw = _pair(patch)
    oh, ow = _pair(overlap)
    return PatchPlan(
        height=height,
        width=width,
        patch=(ph, pw),
        overlap=(oh, ow),
        ys=tuple(axis_origins(height, ph, oh)),
        xs=tuple(axis_origins(width, pw, ow)),
    )
