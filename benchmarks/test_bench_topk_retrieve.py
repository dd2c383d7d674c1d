"""topk_retrieve: the fused op vs `q @ keys.T` + `torch.topk` and vs faiss' flat
inner-product index (faiss-cpu, optional: `pip install faiss-cpu`; its row skips
with a message when it is absent), at M=4096 queries, D=64, k=4 and two memory
sizes N=65,536 and N=1,048,576 (one group each).

    pytest benchmarks/test_bench_topk_retrieve.py --benchmark   # issue sizes, timed

extra_info: "peak_extra_MiB", the memory a call allocates beyond its inputs and
outputs at its peak (CPU: growth of the process' peak resident set, reset before
the call through /proc/self/clear_refs; CUDA: torch's peak allocated bytes), and
"Gscores/s" (M·N / time). Every row runs with the same number of threads
(torch.get_num_threads(); faiss is set to it).
Bars (CPU, first size): at least as fast as faiss, peak extra memory ≤ 64 MiB where
the unfused baseline allocates M·N·4 bytes.
"""

from __future__ import annotations

import os
import re

import pytest
import torch

from patchscaler.ops.topk_retrieve import topk_retrieve

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
M, D, K = 4096, 64, 4
SIZES = {"N=65536": 65536, "N=1048576": 1 << 20}
SMOKE = {"N=65536": 4096, "N=1048576": 16384}


def _sync():
    if DEVICE == "cuda":
        torch.cuda.synchronize()


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        return int(re.search(rf"^{field}:\s+(\d+) kB", f.read(), re.M).group(1))


def peak_extra_mib(fn) -> float | None:
    """Peak memory one call of fn allocates (MiB), or None where it cannot be measured."""
    if DEVICE == "cuda":
        _sync()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        fn()
        _sync()
        return (torch.cuda.max_memory_allocated() - base) / 2**20
    try:
        rss = _status_kib("VmRSS")
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # resets VmHWM (the peak RSS) to the current RSS
        fn()
        return (_status_kib("VmHWM") - rss) / 1024
    except (OSError, AttributeError):
        return None


def _available_bytes() -> int:
    if DEVICE == "cuda":
        return torch.cuda.mem_get_info()[0]
    with open("/proc/meminfo") as f:
        return int(re.search(r"^MemAvailable:\s+(\d+) kB", f.read(), re.M).group(1)) * 1024


_DATA: dict = {}


def _inputs(size: str, full: bool):
    n = SIZES[size] if full else SMOKE[size]
    m = M if full else 64
    if (size, full) not in _DATA:
        _DATA.clear()  # one size alive at a time (the 1M keys are 256 MiB)
        g = torch.Generator().manual_seed(0)
        q = torch.nn.functional.normalize(torch.randn(m, D, generator=g), dim=1)
        keys = torch.nn.functional.normalize(torch.randn(n, D, generator=g), dim=1)
        _DATA[(size, full)] = (q.to(DEVICE), keys.to(DEVICE))
    return _DATA[(size, full)]


def _run(benchmark, fn, size: str, full: bool, q, keys):
    def timed():
        out = fn()
        _sync()
        return out

    rounds = (5 if size == "N=65536" else 2) if full else 1
    result = benchmark.pedantic(timed, rounds=rounds, warmup_rounds=1 if full else 0, iterations=1)
    benchmark.extra_info["threads"] = torch.get_num_threads()
    peak = peak_extra_mib(fn)
    if peak is not None:
        benchmark.extra_info["peak_extra_MiB"] = round(peak, 1)
    meta = benchmark.stats
    if meta:
        benchmark.extra_info["Gscores/s"] = q.shape[0] * keys.shape[0] / meta.stats.mean / 1e9
    return result


@pytest.fixture(params=list(SIZES))
def size(request, benchmark, full):
    n = SIZES[request.param] if full else SMOKE[request.param]
    benchmark.group = f"topk_retrieve M={M if full else 64} N={n} D={D} k={K} float32 {DEVICE}"
    return request.param


def test_topk_fused(benchmark, full, size):
    q, keys = _inputs(size, full)
    scores, idx = _run(benchmark, lambda: topk_retrieve(q, keys, K), size, full, q, keys)
    ref = torch.topk(q[:64] @ keys.T, K)
    torch.testing.assert_close(scores[:64], ref.values, atol=1e-5, rtol=1e-5)


def test_topk_matmul_then_topk(benchmark, full, size):
    """The unfused baseline: the whole M×N float32 score matrix, then torch.topk."""
    q, keys = _inputs(size, full)
    need = q.shape[0] * keys.shape[0] * 4
    if need > _available_bytes() // 2:
        pytest.skip(f"q @ keys.T would allocate {need / 2**30:.1f} GiB, more than half of the free memory")
    _run(benchmark, lambda: torch.topk(q @ keys.T, K, dim=1), size, full, q, keys)


def test_topk_faiss_flat_ip(benchmark, full, size):
    """faiss IndexFlatIP.search (CPU, BLAS + heaps, same thread count)."""
    faiss = pytest.importorskip("faiss", reason="faiss-cpu not installed (pip install faiss-cpu) - row skipped")
    q, keys = _inputs(size, full)
    faiss.omp_set_num_threads(torch.get_num_threads())
    index = faiss.IndexFlatIP(D)
    index.add(keys.float().cpu().numpy())
    qn = q.float().cpu().numpy()
    benchmark.extra_info["note"] = "faiss-cpu " + faiss.__version__ + (" (host)" if DEVICE == "cuda" else "")
    _run(benchmark, lambda: index.search(qn, K), size, full, q, keys)


def test_peak_memory_cpu_bar(full):
    """The memory bar without timing: the fused op's extra memory at the first size."""
    if DEVICE != "cpu" or not os.path.exists("/proc/self/clear_refs"):
        pytest.skip("CPU peak-RSS measurement needs Linux /proc")
    q, keys = _inputs("N=65536", full)
    peak = peak_extra_mib(lambda: topk_retrieve(q, keys, K))
    assert peak is not None and peak <= 64, f"topk_retrieve peak extra memory {peak:.1f} MiB > 64 MiB"
