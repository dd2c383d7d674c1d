"""Top-k inner-product retrieval from the Reference Texture Memory (SPEC §2, §3).

    topk_retrieve(q[M,D], keys[N,D], k) -> (scores[M,k] float32, indices[M,k] int64)

scores[i] are the k largest <q[i], keys[j]> over the keys, sorted descending, and
indices[i] the rows of `keys` they come from; equal scores keep the smaller index
first, NaN ranks above +inf (as torch.topk). q and keys: float32, float16 or
bfloat16 (the same); products accumulate in float32. 1 <= k <= N.

Backends: CPU blocked matmul + running top-k (csrc/cpu/topk_retrieve_cpu.cpp), CUDA
fused Triton kernel (kernels/topk_retrieve.py). Neither materialises the M x N score
matrix: the CPU kernel keeps one 512 KiB score tile per thread, the Triton kernel
keeps its tiles in registers. The schema is in csrc/topk_retrieve.cpp; this module
adds the reference, the fake kernel and the CUDA registration.
"""

from __future__ import annotations

import torch
from torch import Tensor

from patchscaler.kernels import TRITON_AVAILABLE

__all__ = ["topk_retrieve", "reference_topk_retrieve", "topk_retrieve_triton"]

INPUT_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def topk_retrieve(q: Tensor, keys: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """The k best keys per query by inner product: (scores [M,k] float32 descending, indices [M,k] int64)."""
    scores, indices = torch.ops.patchscaler.topk_retrieve.default(q, keys, k)
    return scores, indices


def reference_topk_retrieve(q: Tensor, keys: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """Pure-PyTorch topk_retrieve: the full float32 score matrix, then torch.topk (O(M·N) memory)."""
    scores = q.float() @ keys.float().T
    values, indices = torch.topk(scores, k, dim=1, largest=True, sorted=True)
    return values, indices


def _check_args(q: Tensor, keys: Tensor, k: int) -> None:
    op = "topk_retrieve"
    if q.dim() != 2:
        raise ValueError(f"{op}: q must be a 2-D tensor [M, D], got shape {tuple(q.shape)}")
    if keys.dim() != 2:
        raise ValueError(f"{op}: keys must be a 2-D tensor [N, D], got shape {tuple(keys.shape)}")
    if q.shape[1] != keys.shape[1]:
        raise ValueError(
            f"{op}: q and keys must have the same embedding size D, got q {tuple(q.shape)} "
            f"and keys {tuple(keys.shape)}"
        )
    if q.dtype not in INPUT_DTYPES:
        raise ValueError(f"{op}: q must be float32, float16 or bfloat16, got {q.dtype}")
    if keys.dtype != q.dtype:
        raise ValueError(f"{op}: keys dtype {keys.dtype} does not match q dtype {q.dtype}")
    if keys.device != q.device:
        raise ValueError(
            f"{op}: keys is on {keys.device} but q is on {q.device}; all tensors must be on the same device"
        )
    if k < 1:
        raise ValueError(f"{op}: k must be >= 1, got {k}")
    if k > keys.shape[0]:
        raise ValueError(f"{op}: k = {k} is larger than the number of keys N = {keys.shape[0]}")


@torch.library.register_fake("patchscaler::topk_retrieve")
def _topk_retrieve_fake(q, keys, k):
    _check_args(q, keys, k)
    M = q.shape[0]
    return q.new_empty((M, k), dtype=torch.float32), q.new_empty((M, k), dtype=torch.int64)


def topk_retrieve_triton(q: Tensor, keys: Tensor, k: int, splits: int | None = None) -> tuple[Tensor, Tensor]:
    """topk_retrieve through the Triton kernel (the op's CUDA implementation); `splits`
    forces how many programs share the keys of one query block (tests use it)."""
    from patchscaler.kernels.topk_retrieve import launch_topk_retrieve

    _check_args(q, keys, k)
    return launch_topk_retrieve(q, keys, k, splits)


if TRITON_AVAILABLE:

    @torch.library.register_kernel("patchscaler::topk_retrieve", "cuda")
    def _topk_retrieve_cuda(q, keys, k):
        return topk_retrieve_triton(q, keys, k)
