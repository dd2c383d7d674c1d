"""Triton kernel of `topk_retrieve` (the CUDA backend of patchscaler.ops.topk_retrieve):
fused inner-product scoring and running top-k, after faiss' GPU brute-force search
(faiss/gpu/impl/Distance.cu): the M x N score matrix never reaches memory.

Each program owns a block of BM queries and a contiguous range of key tiles (a
"split"). For every tile of BN keys it computes the [BM, BN] score tile with
`tl.dot` (float32 accumulation) and merges it into a running top-KP list per query
held in registers.

The merge works on *packed* int64 keys: the float32 score mapped to an
order-preserving int32 (flip the magnitude bits of negatives) in the high half,
`2^32-1 - key index` in the low half. Comparing packed values compares scores, and
on equal scores prefers the smaller key index; every packed value is unique, so one
`max` gives both the best score and its index. Per tile, while some query still
has a tile score above its current KP-th best (the running minimum), the tile's
best is moved into the slot of that minimum. The first tile fills the lists (KP
rounds); after that a tile rarely holds more than a couple of winners, so the merge
costs about one comparison per score. At the end a bitonic `tl.sort` orders the
list.

With few query blocks (small M) the key range is split across programs so the GPU
fills up; each program then writes its packed list to a small [S, M, KP] workspace
and a top-k over the S·KP candidates per query (tiny, in torch) finishes.

NaN scores rank above +inf, as in torch.topk.
"""

from __future__ import annotations

import os

import torch
from torch import Tensor

try:
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover - the op then has no CUDA kernel
    triton = None

_LOW_MASK = 2**32 - 1
# Largest k the kernel serves: its [BM, next_pow2(k)] int64 list lives in registers.
# Larger k (not a texture-memory use) goes through `_topk_blocked` instead.
MAX_KERNEL_K = 64


if triton is not None:

    @triton.jit
    def _topk_retrieve_kernel(
        q_ptr, k_ptr, out_v_ptr, out_i_ptr, ws_ptr,
        M, N, D, K, tiles_per_split,
        stride_qm, stride_qd, stride_kn, stride_kd,
        BM: tl.constexpr, BN: tl.constexpr, BD: tl.constexpr, KP: tl.constexpr,
        WRITE_PACKED: tl.constexpr, DOT_FP32: tl.constexpr, IEEE: tl.constexpr,
    ):
        pid_m = tl.program_id(0)
        pid_s = tl.program_id(1)
        empty: tl.constexpr = -9223372036854775807 - 1  # below every packed score

        rm = pid_m * BM + tl.arange(0, BM)
        rd = tl.arange(0, BD)
        q = tl.load(
            q_ptr + rm.to(tl.int64)[:, None] * stride_qm + rd[None, :] * stride_qd,
            mask=(rm < M)[:, None] & (rd < D)[None, :], other=0.0,
        )
        if DOT_FP32:
            q = q.to(tl.float32)

        # Empty slots are distinct (empty + slot) so "the slot holding the minimum" is unique.
        run = tl.full((BM, KP), empty, tl.int64) + tl.arange(0, KP).to(tl.int64)[None, :]
        thr = tl.min(run, axis=1)

        n_begin = pid_s * tiles_per_split * BN
        n_end = tl.minimum(N, n_begin + tiles_per_split * BN)
        for n0 in range(n_begin, n_end, BN):
            rn = n0 + tl.arange(0, BN)
            valid = rn < n_end
            kt = tl.load(
                k_ptr + rn.to(tl.int64)[None, :] * stride_kn + rd[:, None] * stride_kd,
                mask=valid[None, :] & (rd < D)[:, None], other=0.0,
            )
            if DOT_FP32:
                kt = kt.to(tl.float32)
            if IEEE:
                s = tl.dot(q, kt, input_precision="ieee")
            else:
                s = tl.dot(q, kt)
            s = tl.where(s == s, s, float("nan"))  # one NaN bit pattern, above +inf
            bits = s.to(tl.int32, bitcast=True)
            ordered = tl.where(bits >= 0, bits, bits ^ 0x7FFFFFFF)
            packed = (ordered.to(tl.int64) << 32) | (4294967295 - rn.to(tl.int64))[None, :]
            packed = tl.where(valid[None, :], packed, empty)

            best = tl.max(packed, axis=1)
            more = tl.max((best > thr).to(tl.int32), axis=0)
            while more > 0:
                take = best > thr
                run = tl.where((run == thr[:, None]) & take[:, None], best[:, None], run)
                packed = tl.where(packed == best[:, None], empty, packed)
                thr = tl.min(run, axis=1)
                best = tl.max(packed, axis=1)
                more = tl.max((best > thr).to(tl.int32), axis=0)

        row_ok = (rm < M)[:, None]
        cols = tl.arange(0, KP)
        if WRITE_PACKED:
            ws = ws_ptr + (pid_s.to(tl.int64) * M + rm.to(tl.int64))[:, None] * KP + cols[None, :]
            tl.store(ws, run, mask=row_ok)
        else:
            run = tl.sort(run, dim=1, descending=True)
            hi = (run >> 32).to(tl.int32)
            val = tl.where(hi >= 0, hi, hi ^ 0x7FFFFFFF).to(tl.float32, bitcast=True)
            idx = 4294967295 - (run & 4294967295)
            out = rm.to(tl.int64)[:, None] * K + cols[None, :]
            keep = row_ok & (cols < K)[None, :]
            tl.store(out_v_ptr + out, val, mask=keep)
            tl.store(out_i_ptr + out, idx, mask=keep)


def _unpack(packed: Tensor) -> tuple[Tensor, Tensor]:
    """Packed int64 (see module docstring) -> (float32 scores, int64 indices)."""
    hi = (packed >> 32).to(torch.int32)
    bits = torch.where(hi >= 0, hi, hi ^ 0x7FFFFFFF)
    return bits.view(torch.float32), _LOW_MASK - (packed & _LOW_MASK)


def _interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def _config(M: int, D: int, k: int) -> tuple[int, int, int, int, int]:
    """(BM, BN, BD, KP, num_warps). Chosen from ptxas register reports for sm_90 (no
    spills for D <= 256, k <= 64 in float32/float16): the fp32 score tile, its packed
    int64 copy and the running lists must all fit in registers, hence 8 warps and
    narrower key tiles for large D."""
    bd = max(16, triton.next_power_of_2(D))
    bm = 32 if M <= 32 else 64
    bn = 64 if bd <= 64 else 32
    kp = max(2, triton.next_power_of_2(k))
    return bm, bn, bd, kp, 8


def _target_programs(device: torch.device) -> int:
    if device.type == "cuda":
        return 4 * torch.cuda.get_device_properties(device).multi_processor_count
    return 1


def _topk_blocked(q: Tensor, keys: Tensor, k: int, budget_bytes: int = 64 << 20) -> tuple[Tensor, Tensor]:
    """Blocked matmul + top-k merge in torch, at most ~budget_bytes of scores alive (k > MAX_KERNEL_K)."""
    M, N = q.shape[0], keys.shape[0]
    chunk = max(k, budget_bytes // (4 * max(M, 1)))
    qf = q.float()
    best_v = best_i = None
    for n0 in range(0, N, chunk):
        s = qf @ keys[n0 : n0 + chunk].float().T
        v, i = torch.topk(s, min(k, s.shape[1]), dim=1)
        i += n0
        if best_v is not None:
            v, j = torch.topk(torch.cat([best_v, v], dim=1), k, dim=1)
            i = torch.cat([best_i, i], dim=1).gather(1, j)
        best_v, best_i = v, i
    return best_v, best_i


def launch_topk_retrieve(q: Tensor, keys: Tensor, k: int, splits: int | None = None) -> tuple[Tensor, Tensor]:
    """Runs the kernel on checked arguments. `splits` forces the number of key splits
    (default: enough programs to fill the device); returns (scores, indices)."""
    M, D = q.shape
    N = keys.shape[0]
    if k > MAX_KERNEL_K and M > 0:
        return _topk_blocked(q, keys, k)
    scores = torch.empty((M, k), dtype=torch.float32, device=q.device)
    indices = torch.empty((M, k), dtype=torch.int64, device=q.device)
    if M == 0:
        return scores, indices
    bm, bn, bd, kp, warps = _config(M, D, k)
    n_qblocks = triton.cdiv(M, bm)
    n_tiles = triton.cdiv(N, bn)
    if splits is None:
        splits = triton.cdiv(_target_programs(q.device), n_qblocks)
    splits = max(1, min(splits, n_tiles))
    tiles_per_split = triton.cdiv(n_tiles, splits)
    splits = triton.cdiv(n_tiles, tiles_per_split)
    ws = torch.empty((splits, M, kp), dtype=torch.int64, device=q.device) if splits > 1 else indices
    # The interpreter (triton 3.8) multiplies bfloat16 dot operands as their raw uint16
    # bits; upcasting first keeps the interpreted kernel exact. Never needed on GPU.
    dot_fp32 = q.dtype == torch.bfloat16 and _interpreting()
    _topk_retrieve_kernel[(n_qblocks, splits)](
        q, keys, scores, indices, ws,
        M, N, D, k, tiles_per_split,
        q.stride(0), q.stride(1), keys.stride(0), keys.stride(1),
        BM=bm, BN=bn, BD=bd, KP=kp,
        WRITE_PACKED=splits > 1, DOT_FP32=dot_fp32, IEEE=q.dtype == torch.float32 or dot_fp32,
        num_warps=warps,
    )
    if splits > 1:
        best = torch.topk(ws.permute(1, 0, 2).reshape(M, splits * kp), k, dim=1).values
        s, i = _unpack(best)
        scores.copy_(s)
        indices.copy_(i)
    return scores, indices
