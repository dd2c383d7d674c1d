"""Triton kernels of `group_denoise_step` and `shortcut_noise` (the CUDA backend of
patchscaler.ops.group_denoise, which holds the math, the reference and the checks).

One program handles one block of BLOCK elements of one active patch p: it loads that
patch's row number idx[p] and timesteps t[p], t_next[p], looks ᾱ up in the table,
forms the per-patch coefficients in float32 and streams its slice of x_all[idx[p]]
and model_out[p] through registers, writing the updated state back to the same
place. Every byte of patch data is touched once: per element 2 reads (state, model
output) and 1 write (state), plus 1 write when x̂0 is returned — the minimum.

Rows may have any stride between patches (a patch's own elements must be dense;
the launcher makes such a copy otherwise).
"""

from __future__ import annotations

import torch
from torch import Tensor

try:
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover - the op then has no CUDA kernel
    triton = None


def _rows_dense(t: Tensor) -> bool:
    """Each t[i] (all dims but the first) is one dense block."""
    expected = 1
    for size, stride in zip(reversed(t.shape[1:]), reversed(t.stride()[1:])):
        if size != 1 and stride != expected:
            return False
        expected *= size
    return True


def _block_and_warps(E: int) -> tuple[int, int]:
    """Elements per program and warps: 4 elements per thread, at most 4096 per program."""
    block = min(4096, max(128, triton.next_power_of_2(E)))
    return block, max(1, min(8, block // 512))


if triton is not None:

    @triton.jit
    def _group_denoise_step_kernel(
        x_ptr, m_ptr, x0_ptr, idx_ptr, t_ptr, tn_ptr, ac_ptr,
        E, x_row_stride, m_row_stride, clip,
        V_PRED: tl.constexpr, CLIP: tl.constexpr, STORE_X0: tl.constexpr, BLOCK: tl.constexpr,
    ):
        p = tl.program_id(0)
        offs = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
        mask = offs < E

        row = tl.load(idx_ptr + p).to(tl.int64)
        a = tl.load(ac_ptr + tl.load(t_ptr + p)).to(tl.float32)
        tn = tl.load(tn_ptr + p)
        a_next = tl.load(ac_ptr + tl.maximum(tn, 0)).to(tl.float32)
        a_next = tl.where(tn < 0, 1.0, a_next)  # t_next < 0: the last step, land on x̂0
        s = tl.sqrt(a)
        s1 = tl.sqrt(1.0 - a)

        x_row = x_ptr + row * x_row_stride
        x = tl.load(x_row + offs, mask=mask).to(tl.float32)
        m = tl.load(m_ptr + p.to(tl.int64) * m_row_stride + offs, mask=mask).to(tl.float32)
        if V_PRED:
            x0 = s * x - s1 * m
            eps = s1 * x + s * m
        else:
            x0 = (x - s1 * m) / s
            eps = m
        if CLIP:
            x0 = tl.minimum(tl.maximum(x0, -clip), clip)
        out = tl.sqrt(a_next) * x0 + tl.sqrt(1.0 - a_next) * eps
        tl.store(x_row + offs, out.to(x_ptr.dtype.element_ty), mask=mask)
        if STORE_X0:
            tl.store(x0_ptr + p.to(tl.int64) * E + offs, x0.to(x0_ptr.dtype.element_ty), mask=mask)

    @triton.jit
    def _shortcut_noise_kernel(
        y_ptr, n_ptr, out_ptr, t_ptr, ac_ptr, E, y_row_stride, n_row_stride, BLOCK: tl.constexpr,
    ):
        p = tl.program_id(0).to(tl.int64)
        offs = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
        mask = offs < E
        a = tl.load(ac_ptr + tl.load(t_ptr + p)).to(tl.float32)
        y = tl.load(y_ptr + p * y_row_stride + offs, mask=mask).to(tl.float32)
        n = tl.load(n_ptr + p * n_row_stride + offs, mask=mask).to(tl.float32)
        out = tl.sqrt(a) * y + tl.sqrt(1.0 - a) * n
        tl.store(out_ptr + p * E + offs, out.to(out_ptr.dtype.element_ty), mask=mask)


def launch_group_denoise_step(
    x_all: Tensor,
    model_out: Tensor,
    idx: Tensor,
    t: Tensor,
    t_next: Tensor,
    alphas_cumprod: Tensor,
    v_pred: bool,
    clip_x0: float | None,
    x0: Tensor | None,
) -> None:
    """Runs the kernel on checked arguments; updates x_all in place, fills x0 (contiguous) if given."""
    P = model_out.shape[0]
    E = model_out.numel() // P if P else 0
    if P == 0 or E == 0:
        return
    work = x_all if _rows_dense(x_all) else x_all.contiguous()
    m = model_out if _rows_dense(model_out) else model_out.contiguous()
    block, warps = _block_and_warps(E)
    grid = (P, triton.cdiv(E, block))
    _group_denoise_step_kernel[grid](
        work, m, x0 if x0 is not None else work, idx.contiguous(), t.contiguous(),
        t_next.contiguous(), alphas_cumprod.contiguous(),
        E, work.stride(0), m.stride(0), float(clip_x0) if clip_x0 is not None else 0.0,
        V_PRED=v_pred, CLIP=clip_x0 is not None, STORE_X0=x0 is not None, BLOCK=block,
        num_warps=warps,
    )
    if work is not x_all:
        x_all.copy_(work)


def launch_shortcut_noise(y0: Tensor, noise: Tensor, t: Tensor, alphas_cumprod: Tensor, out: Tensor) -> None:
    """Runs the kernel on checked arguments, writing into the contiguous `out`."""
    P = y0.shape[0]
    E = y0.numel() // P if P else 0
    if P == 0 or E == 0:
        return
    y = y0 if _rows_dense(y0) else y0.contiguous()
    n = noise if _rows_dense(noise) else noise.contiguous()
    block, warps = _block_and_warps(E)
    _shortcut_noise_kernel[(P, triton.cdiv(E, block))](
        y, n, out, t.contiguous(), alphas_cumprod.contiguous(), E, y.stride(0), n.stride(0),
        BLOCK=block, num_warps=warps,
    )
