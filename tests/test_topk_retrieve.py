"""topk_retrieve: every backend against `reference_topk_retrieve` on odd shapes, all
input dtypes and strided inputs; opcheck, torch.compile and the argument errors.

Ties may be ordered differently by different backends, so results are compared
through their scores: the sorted scores match the reference's, and the score of
every returned index (recomputed from the full matrix) is the returned score.

The Triton kernel runs on CPU tensors under TRITON_INTERPRET=1 in a child pytest
(`test_triton_interpreted` re-runs the `test_interp_*` tests of this file), because
the variable must be set before triton.jit functions are created.
"""

from __future__ import annotations

import pytest
import torch

from helpers import (
    DEVICES,
    needs_interpreter,
    run_interpreted_tests,
    runs_interpreter_child,
)
from patchscaler.ops.topk_retrieve import reference_topk_retrieve, topk_retrieve, topk_retrieve_triton

DTYPES = [torch.float32, torch.float16, torch.bfloat16]

# (M, N, D, k): sizes 1, primes, k = N, k = 64, several query blocks and key tiles.
SHAPES = [
    (1, 1, 1, 1),
    (1, 17, 3, 17),
    (13, 1031, 64, 4),
    (37, 2053, 24, 64),
    (131, 3001, 7, 5),
    (0, 10, 8, 3),
]
# Smaller ones for the interpreter (it runs the kernel in numpy).
INTERP_SHAPES = [(1, 1, 1, 1), (1, 17, 3, 17), (5, 300, 24, 7), (37, 1000, 64, 4), (70, 129, 16, 64)]

# Scores are float32 accumulations of the same (upcast) products in a different order.
SCORE_TOL = dict(atol=1e-4, rtol=1e-4)


def retrieval_inputs(M, N, D, dtype, device, seed=0, layout="contiguous"):
    g = torch.Generator().manual_seed(seed)
    q = torch.nn.functional.normalize(torch.randn(M, D, generator=g), dim=1)
    keys = torch.nn.functional.normalize(torch.randn(N, D, generator=g), dim=1)
    if layout == "strided":  # q column-major, keys every other row of a bigger table
        q = q.T.contiguous().T
        big = torch.randn(2 * N, D, generator=g)
        big[::2] = keys
        keys = big[::2]
    return q.to(dtype).to(device), keys.to(dtype).to(device)


def check_topk(fn, q, keys, k):
    scores, idx = fn(q, keys, k)
    M = q.shape[0]
    assert scores.shape == (M, k) and idx.shape == (M, k)
    assert scores.dtype == torch.float32 and idx.dtype == torch.int64
    if M == 0:
        return
    ref_scores, _ = reference_topk_retrieve(q, keys, k)
    torch.testing.assert_close(scores, ref_scores, **SCORE_TOL)
    # Sorted descending, valid and distinct indices, and each index carries its score.
    assert bool((scores[:, :-1] >= scores[:, 1:]).all())
    assert bool(((idx >= 0) & (idx < keys.shape[0])).all())
    assert bool((idx.sort(dim=1).values.diff(dim=1) > 0).all()) if k > 1 else True
    full = q.float() @ keys.float().T
    torch.testing.assert_close(full.gather(1, idx), scores, **SCORE_TOL)


def op_topk(q, keys, k):
    return torch.ops.patchscaler.topk_retrieve(q, keys, k)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES)
def test_matches_reference(device, dtype, shape):
    M, N, D, k = shape
    check_topk(op_topk, *retrieval_inputs(M, N, D, dtype, device), k)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_strided_inputs(device, dtype):
    check_topk(op_topk, *retrieval_inputs(29, 1500, 40, dtype, device, layout="strided"), 9)


@pytest.mark.parametrize("threads", [1, 3, 8])
@pytest.mark.parametrize("M", [1, 5, 300])
def test_key_splits_cpu(threads, M):
    # Few query blocks and several threads: the CPU kernel splits the keys and merges.
    old = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        check_topk(op_topk, *retrieval_inputs(M, 9000, 16, torch.float32, "cpu"), 6)
    finally:
        torch.set_num_threads(old)


@pytest.mark.parametrize("device", DEVICES)
def test_ties_keep_smaller_index_first(device):
    # All keys equal: every score ties, so the documented order is 0, 1, ..., k-1.
    # Integer data keeps the products exact, so the tie survives any summation order.
    q = torch.randint(-3, 4, (3, 8), device=device).float()
    keys = torch.ones(5000, 8, device=device)
    scores, idx = topk_retrieve(q, keys, 7)
    assert torch.equal(idx, torch.arange(7, device=device).expand(3, 7))


@pytest.mark.parametrize("device", DEVICES)
def test_nan_ranks_first(device):
    q = torch.randn(2, 4, device=device)
    keys = torch.randn(100, 4, device=device)
    keys[37] = float("nan")
    scores, idx = topk_retrieve(q, keys, 3)
    assert (idx[:, 0] == 37).all() and scores[:, 0].isnan().all()
    assert not scores[:, 1:].isnan().any()


@pytest.mark.parametrize("device", DEVICES)
def test_large_n_small_m(device):
    q, keys = retrieval_inputs(2, 200_003, 32, torch.float32, device)
    check_topk(op_topk, q, keys, 64)


@pytest.mark.parametrize("device", DEVICES)
def test_opcheck(device):
    q, keys = retrieval_inputs(7, 300, 16, torch.float32, device)
    torch.library.opcheck(torch.ops.patchscaler.topk_retrieve.default, (q, keys, 5))


def test_torch_compile_fullgraph():
    def retrieve_and_weight(q, keys, values):
        scores, idx = topk_retrieve(torch.nn.functional.normalize(q, dim=1), keys, 4)
        return (scores.softmax(dim=1)[..., None] * values[idx]).sum(dim=1)

    q, keys = retrieval_inputs(9, 500, 16, torch.float32, "cpu")
    values = torch.randn(500, 3)
    expected = retrieve_and_weight(q, keys, values)
    actual = torch.compile(retrieve_and_weight, fullgraph=True, backend="inductor")(q, keys, values)
    torch.testing.assert_close(actual, expected)


ERRORS = {
    "k > N": ((3, 8), (5, 8), 6, "k = 6 is larger than the number of keys N = 5"),
    "k < 1": ((3, 8), (5, 8), 0, "k must be >= 1"),
    "D mismatch": ((3, 8), (5, 7), 2, "same embedding size D"),
    "q not 2-D": ((8,), (5, 8), 2, "q must be a 2-D tensor"),
    "keys not 2-D": ((3, 8), (5, 8, 1), 2, "keys must be a 2-D tensor"),
    "no keys": ((3, 8), (0, 8), 1, "larger than the number of keys N = 0"),
}


@pytest.mark.parametrize("case", sorted(ERRORS))
def test_errors(case):
    q_shape, k_shape, k, match = ERRORS[case]
    with pytest.raises(ValueError, match=match):
        topk_retrieve(torch.randn(q_shape), torch.randn(k_shape), k)


def test_dtype_errors():
    with pytest.raises(ValueError, match="keys dtype torch.float16 does not match q dtype torch.float32"):
        topk_retrieve(torch.randn(3, 8), torch.randn(5, 8).half(), 2)
    with pytest.raises(ValueError, match="q must be float32, float16 or bfloat16"):
        topk_retrieve(torch.randn(3, 8).double(), torch.randn(5, 8).double(), 2)


def test_device_mismatch_is_reported():
    with pytest.raises(ValueError, match="keys is on meta but q is on cpu"):
        topk_retrieve(torch.randn(3, 8), torch.randn(5, 8, device="meta"), 2)


# ----------------------------------------------------------------------------------
# Triton kernel under the interpreter (CPU tensors)
# ----------------------------------------------------------------------------------

@runs_interpreter_child
def test_triton_interpreted():
    run_interpreted_tests(__file__)


@needs_interpreter
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", INTERP_SHAPES)
@pytest.mark.parametrize("splits", [None, 3])
def test_interp_matches_reference(dtype, shape, splits):
    M, N, D, k = shape
    check_topk(lambda q, keys, k: topk_retrieve_triton(q, keys, k, splits),
               *retrieval_inputs(M, N, D, dtype, "cpu"), k)


@needs_interpreter
def test_interp_strided_ties_nan():
    check_topk(topk_retrieve_triton, *retrieval_inputs(19, 200, 40, torch.float16, "cpu", layout="strided"), 5)
    q = torch.randint(-3, 4, (3, 8)).float()
    _, idx = topk_retrieve_triton(q, torch.ones(300, 8), 7, 2)
    assert torch.equal(idx, torch.arange(7).expand(3, 7))
    keys = torch.randn(100, 16)
    keys[37] = float("nan")
    scores, idx = topk_retrieve_triton(torch.randn(2, 16), keys, 3)
    assert (idx[:, 0] == 37).all() and scores[:, 0].isnan().all()


@needs_interpreter
def test_interp_errors():
    with pytest.raises(ValueError, match="larger than the number of keys"):
        topk_retrieve_triton(torch.randn(3, 8), torch.randn(5, 8), 6)


def test_inputs_that_require_grad():
    # The op has no derivative; it must still run on tensors that require grad (the CPU
    # kernel's worker threads would otherwise see autograd state).
    q, keys = retrieval_inputs(40, 3000, 16, torch.float32, "cpu")
    check_topk(op_topk, q.requires_grad_(), keys.requires_grad_(), 3)
