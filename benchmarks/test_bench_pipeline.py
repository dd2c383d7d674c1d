"""End to end: PGS vs the uniform sampler vs the GRM alone, one pytest-benchmark group
per input size, so the ratios come from one run: 512×512 → 2048×2048 (the issue's
comparison) and the two sizes of the CPU speed bars, 128×128 → 512×512 (≤ 4.6 s) and
256×256 → 1024×1024 (≤ 20 s).

    pytest benchmarks/test_bench_pipeline.py --benchmark   # 128, 256 and 512 LR, timed
    pytest benchmarks/test_bench_pipeline.py               # one 48x48 LR smoke run

The input is a crop of the bundled example photo, tiled by reflection up to the size
(real texture and flat regions, so the confidence map and the groups are realistic).
Rows: PGS, PGS with bf16 models, the uniform sampler, the GRM alone (all fp32 but the
bf16 row). extra_info: "dit_evaluations" (denoiser patch-evaluations of the run), "patches", and
"evals_vs_uniform" (the share of the uniform sampler's evaluations this row spent).
Each row is one timed call after one untimed warm-up (model loading is not timed):
a 2048² diffusion upscale on a CPU takes tens of seconds, and the rows differ by
several times, far more than the run-to-run noise.
"""

from __future__ import annotations

import pytest
import torch

from patchscaler.api import get_pipeline
from patchscaler.examples import example_path
from patchscaler.data.images import load_image

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
FULL_SIDES, SMOKE_SIDES = (128, 256, 512), (48,)
# The set with the whole method (Patch-DiT + PGS): the rows compare samplers, so they run on it
# whatever `upscale()` defaults to (the `real` set ships its GRM alone).
MODEL = "bicubic"


def _input(side: int) -> torch.Tensor:
    img = load_image(example_path(MODEL))
    while min(img.shape[-2:]) < side:
        img = torch.cat([img, img.flip(-1)], dim=-1)
        img = torch.cat([img, img.flip(-2)], dim=-2)
    return img[:, :side, :side].contiguous().to(DEVICE)


def pytest_generate_tests(metafunc):
    if "side" in metafunc.fixturenames:
        full = metafunc.config.getoption("--benchmark")
        metafunc.parametrize("side", FULL_SIDES if full else SMOKE_SIDES, ids=lambda s: f"{s}px")


@pytest.fixture(autouse=True)
def _group(request, benchmark):
    s = request.getfixturevalue("side")
    benchmark.group = f"upscale x4 {s}x{s} -> {4 * s}x{4 * s} {DEVICE}"


def _run(benchmark, sampler: str, side: int, full: bool, dtype: torch.dtype = torch.float32) -> None:
    pipe = get_pipeline(sampler, 4, DEVICE, dtype, model=MODEL)
    lr = _input(side)

    def once():
        (hr, groups), = pipe.upscale_images([lr], seed=0)
        if DEVICE == "cuda":
            torch.cuda.synchronize()
        return hr, groups

    hr, groups = benchmark.pedantic(once, rounds=1, warmup_rounds=1 if full else 0, iterations=1)
    assert hr.shape == (3, 4 * side, 4 * side) and torch.isfinite(hr).all()
    benchmark.extra_info["dit_evaluations"] = groups.evaluations
    benchmark.extra_info["patches"] = int(groups.group.numel())
    benchmark.extra_info["threads"] = torch.get_num_threads()
    uniform = groups.summary().get("uniform_evaluations")
    if uniform:
        benchmark.extra_info["evals_vs_uniform"] = round(groups.evaluations / uniform, 3)


def test_upscale_uniform(benchmark, full, side):
    _run(benchmark, "uniform", side, full)


def test_upscale_pgs(benchmark, full, side):
    _run(benchmark, "pgs", side, full)


def test_upscale_pgs_bf16(benchmark, full, side):
    """PGS with the models in bfloat16 (`dtype="bf16"`, the command's --bf16)."""
    _run(benchmark, "pgs", side, full, torch.bfloat16)


def test_upscale_grm_only(benchmark, full, side):
    _run(benchmark, "none", side, full)
