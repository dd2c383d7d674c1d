"""Cutting an image into patches and blending patches back: `gather_patches`,
`blend_patches` and their adjoint `scatter_add_patches`.

Patches are addressed by `origins`, an int64 tensor [P, 3] of rows (b, y, x):
patch p is `x[b, :, y:y+ph, x:x+pw]`. Origins are arbitrary (any order, overlaps,
repeats) but every patch must lie inside its image; `patchscaler.inference.patch_plan` makes
origins that cover an image and pads images smaller than one patch.

The kernels (C++ on CPU, CUDA on GPU) are registered in C++ under
`torch.ops.patchscaler.*`; this module adds the pure-PyTorch references (the
executable spec the tests compare against), the fake kernels that let
`torch.compile(fullgraph=True)` trace through the ops, and autograd formulas.
Dtypes: float32, float16, bfloat16 (float64 too, for gradcheck); sums are
accumulated in float32. gather and blend also have out= overloads
(`torch.ops.patchscaler.gather_patches.out`, `...blend_patches.out`, or the
wrappers' `out=`) that write into a preallocated tensor, for callers that reuse
buffers: a fresh 50 MB CPU output costs more in page faults than the kernel.
"""

from __future__ import annotations

import torch
from torch import Tensor

from patchscaler.ops import _native  # noqa: F401  (loads the C++ schemas and kernels)

__all__ = [
    "gather_patches",
    "blend_patches",
    "scatter_add_patches",
    "reference_gather_patches",
    "reference_blend_patches",
    "reference_scatter_add_patches",
]


# --------------------------------------------------------------------------- wrappers


def gather_patches(x: Tensor, origins: Tensor, ph: int, pw: int, *, out: Tensor | None = None) -> Tensor:
    """Cut patches out of a batch of images.

    x: [B, C, H, W] float; origins: [P, 3] int64 rows (b, y, x) with
    0 <= y <= H-ph, 0 <= x <= W-pw. Returns [P, C, ph, pw] in x's dtype, with
    `out[p] = x[b_p, :, y_p:y_p+ph, x_p:x_p+pw]`. Differentiable in x.
    `out`: an optional preallocated contiguous [P, C, ph, pw] result (not differentiable).
    """
    if out is not None:
        return torch.ops.patchscaler.gather_patches.out(x, origins, ph, pw, out=out)
    return torch.ops.patchscaler.gather_patches.default(x, origins, ph, pw)


def blend_patches(
    patches: Tensor, origins: Tensor, window: Tensor, B: int, H: int, W: int, *, out: Tensor | None = None
) -> Tensor:
    """Put patches back together, weighting overlaps with a window.

    patches: [P, C, ph, pw] float; origins: [P, 3] int64 (b, y, x); window:
    [ph, pw], same dtype as patches, >= 0 (e.g. `patch_plan.blend_window`).
    Returns [B, C, H, W] in the patches' dtype:
    `out[b,c,y,x] = sum_p w[i,j]*patches[p,c,i,j] / sum_p w[i,j]` over the patches
    p of image b covering (y, x) at (i, j). Pixels whose weight sum is 0 (covered
    by no patch) are 0. Accumulates in float32; deterministic (the same bits on
    every run, for any thread count). Differentiable in patches and window.
    `out`: an optional preallocated contiguous [B, C, H, W] result (not differentiable).
    """
    if out is not None:
        return torch.ops.patchscaler.blend_patches.out(patches, origins, window, B, H, W, out=out)
    return torch.ops.patchscaler.blend_patches.default(patches, origins, window, B, H, W)


def scatter_add_patches(patches: Tensor, origins: Tensor, B: int, H: int, W: int) -> Tensor:
    """Sum patches into images, without window or normalisation (the adjoint of gather).

    patches: [P, C, ph, pw] float; origins: [P, 3] int64 (b, y, x). Returns
    [B, C, H, W] in the patches' dtype, `out[b,c,y,x] = sum_p patches[p,c,i,j]`;
    0 where no patch covers. Accumulates in float32; deterministic.
    """
    return torch.ops.patchscaler.scatter_add_patches.default(patches, origins, B, H, W)


# ------------------------------------------------------------------------ references


def _patch_index(origins: Tensor, ph: int, pw: int) -> tuple[Tensor, Tensor, Tensor]:
    """Index tensors (b [P,1,1], rows [P,ph,1], cols [P,1,pw]) addressing every patch pixel."""
    b, y, x = origins.long().unbind(1)
    rows = y[:, None] + torch.arange(ph, device=origins.device)
    cols = x[:, None] + torch.arange(pw, device=origins.device)
    return b[:, None, None], rows[:, :, None], cols[:, None, :]


def reference_gather_patches(x: Tensor, origins: Tensor, ph: int, pw: int) -> Tensor:
    """Reference of `gather_patches`: advanced indexing. Returns [P, C, ph, pw]."""
    b, rows, cols = _patch_index(origins, ph, pw)
    # Advanced indices split by the channel slice land first: [P, ph, pw, C].
    return x[b, :, rows, cols].permute(0, 3, 1, 2).contiguous()


def _reference_sum(values: Tensor, origins: Tensor, B: int, H: int, W: int) -> Tensor:
    """sum over patches of values[P, C, ph, pw] into a float32 [B, C, H, W] (index_put_ accumulate)."""
    P, C, ph, pw = values.shape
    out = torch.zeros(B, H, W, C, dtype=torch.float32, device=values.device)
    b, rows, cols = _patch_index(origins, ph, pw)
    out.index_put_((b, rows, cols), values.float().permute(0, 2, 3, 1), accumulate=True)
    return out.permute(0, 3, 1, 2)


def reference_blend_patches(
    patches: Tensor, origins: Tensor, window: Tensor, B: int, H: int, W: int
) -> Tensor:
    """Reference of `blend_patches`: weighted sums with index_put_, divided in float32."""
    P, C, ph, pw = patches.shape
    w = window.float().expand(P, 1, ph, pw)
    num = _reference_sum(patches.float() * w, origins, B, H, W)
    den = _reference_sum(w, origins, B, H, W)
    out = torch.where(den != 0, num / torch.where(den != 0, den, 1.0), 0.0)
    return out.to(patches.dtype).contiguous()


def reference_scatter_add_patches(patches: Tensor, origins: Tensor, B: int, H: int, W: int) -> Tensor:
    """Reference of `scatter_add_patches`."""
    return _reference_sum(patches, origins, B, H, W).to(patches.dtype).contiguous()


# ---------------------------------------------------------------------- fake kernels
# Shapes only (no values: origins' range is checked by the real kernels).


@torch.library.register_fake("patchscaler::gather_patches")
def _gather_patches_fake(x, origins, ph, pw):
    torch._check(x.dim() == 4, lambda: f"gather_patches: x must be 4-D [B, C, H, W], got {tuple(x.shape)}")
    torch._check(
        origins.dim() == 2 and origins.shape[1] == 3,
        lambda: f"gather_patches: origins must be [P, 3], got {tuple(origins.shape)}",
    )
    torch._check(ph > 0 and pw > 0, lambda: f"gather_patches: ph and pw must be > 0, got {ph}, {pw}")
    return x.new_empty((origins.shape[0], x.shape[1], ph, pw))


def _check_blend_fake(op, patches, origins, B, H, W):
    torch._check(patches.dim() == 4, lambda: f"{op}: patches must be 4-D [P, C, ph, pw], got {tuple(patches.shape)}")
    torch._check(
        origins.dim() == 2 and origins.shape[1] == 3 and origins.shape[0] == patches.shape[0],
        lambda: f"{op}: origins must be [P, 3] with P = patches.shape[0], got {tuple(origins.shape)}",
    )
    torch._check(B > 0 and H > 0 and W > 0, lambda: f"{op}: B, H and W must be > 0, got {B}, {H}, {W}")


@torch.library.register_fake("patchscaler::blend_patches")
def _blend_patches_fake(patches, origins, window, B, H, W):
    _check_blend_fake("blend_patches", patches, origins, B, H, W)
    torch._check(
        window.shape == patches.shape[2:],
        lambda: f"blend_patches: window must have shape [ph, pw] = {list(patches.shape[2:])}, got {list(window.shape)}",
    )
    torch._check(
        window.dtype == patches.dtype,
        lambda: f"blend_patches: window dtype {window.dtype} does not match patches dtype {patches.dtype}",
    )
    return patches.new_empty((B, patches.shape[1], H, W))


@torch.library.register_fake("patchscaler::scatter_add_patches")
def _scatter_add_patches_fake(patches, origins, B, H, W):
    _check_blend_fake("scatter_add_patches", patches, origins, B, H, W)
    return patches.new_empty((B, patches.shape[1], H, W))


# -------------------------------------------------------------------------- autograd
# gather and scatter_add are adjoint linear maps: each one's backward is the other.
# blend: out = N / S with N = sum_p w*patch_p, S = sum_p w, so
#   d/d patch_p[c,i,j] = w[i,j] * g/S          at (b_p, c, y_p+i, x_p+j)
#   d/d w[i,j]         = sum_{p,c} g/S * (patch_p[c,i,j] - out)   at the same pixels.
# Both are gathers of [B,C,H,W] maps; S is recomputed by scatter-adding the window.


def _gather_setup(ctx, inputs, output):
    x, origins, ph, pw = inputs
    ctx.save_for_backward(origins)
    ctx.image_shape = (x.shape[0], x.shape[2], x.shape[3])


def _gather_backward(ctx, grad):
    (origins,) = ctx.saved_tensors
    B, H, W = ctx.image_shape
    return scatter_add_patches(grad, origins, B, H, W), None, None, None


def _scatter_setup(ctx, inputs, output):
    patches, origins, B, H, W = inputs
    ctx.save_for_backward(origins)
    ctx.patch_shape = (patches.shape[2], patches.shape[3])


def _scatter_backward(ctx, grad):
    (origins,) = ctx.saved_tensors
    ph, pw = ctx.patch_shape
    return gather_patches(grad, origins, ph, pw), None, None, None, None


def _blend_setup(ctx, inputs, output):
    patches, origins, window, B, H, W = inputs
    need_window = ctx.needs_input_grad[2]
    ctx.save_for_backward(
        origins, window, patches if need_window else None, output if need_window else None
    )
    ctx.image_shape = (B, H, W)


def _blend_backward(ctx, grad):
    origins, window, patches, output = ctx.saved_tensors
    B, H, W = ctx.image_shape
    P = origins.shape[0]
    ph, pw = window.shape
    w32 = window.float()
    wsum = scatter_add_patches(w32.expand(P, 1, ph, pw).contiguous(), origins, B, H, W)
    g = grad.float() * torch.where(wsum != 0, 1.0 / torch.where(wsum != 0, wsum, 1.0), 0.0)
    g_patches = gather_patches(g, origins, ph, pw)
    grad_patches = grad_window = None
    if ctx.needs_input_grad[0]:
        grad_patches = (g_patches * w32).to(grad.dtype)
    if ctx.needs_input_grad[2]:
        residual = patches.float() - gather_patches(output.float(), origins, ph, pw)
        grad_window = (g_patches * residual).sum(dim=(0, 1)).to(window.dtype)
    return grad_patches, None, grad_window, None, None, None


torch.library.register_autograd("patchscaler::gather_patches", _gather_backward, setup_context=_gather_setup)
torch.library.register_autograd(
    "patchscaler::scatter_add_patches", _scatter_backward, setup_context=_scatter_setup
)
torch.library.register_autograd("patchscaler::blend_patches", _blend_backward, setup_context=_blend_setup)
