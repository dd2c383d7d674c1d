"""group_denoise_step and shortcut_noise: the fused op vs the eager PyTorch sequence
it replaces, beside a plain copy_ that measures the memory bandwidth of the machine.

    pytest benchmarks/test_bench_group_denoise.py --benchmark   # issue sizes, timed

Figure of merit: GB/s of *useful* traffic. One DDIM step over P_act patches of E
elements must read x_all[idx] and model_out and write x_all[idx]: 3·P_act·E·itemsize
bytes. Every row of a group reports that same byte count divided by its own time, so
the rows compare directly with the copy_ row (2·P_act·E·itemsize bytes per copy).
Bar (SPEC §3 / issue 3): fused ≥ 2× faster than the eager sequence.
shortcut_noise returns a new tensor, so its fair bandwidth reference is the clone()
row (fresh pages must be faulted in), not copy_ into a warm buffer.
"""

from __future__ import annotations

import pytest
import torch

from patchscaler.ops.group_denoise import group_denoise_step, shortcut_noise

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def _sync():
    if DEVICE == "cuda":
        torch.cuda.synchronize()


def _sizes(full: bool) -> tuple[int, int, tuple[int, int, int]]:
    """(P_all, P_act, patch shape): the issue's size, or a tiny smoke size."""
    return (4096, 1024, (48, 16, 16)) if full else (64, 16, (48, 4, 4))


def _alphas_cumprod() -> torch.Tensor:
    return torch.linspace(0.9999, 0.002, 1000, device=DEVICE)


def _report(benchmark, nbytes: int) -> None:
    benchmark.extra_info["bytes"] = nbytes
    benchmark.extra_info["threads"] = torch.get_num_threads()
    meta = benchmark.stats  # None in smoke mode (timing disabled)
    if meta:
        benchmark.extra_info["GB/s"] = nbytes / meta.stats.mean / 1e9


def _run(benchmark, fn, full: bool) -> None:
    def timed():
        fn()
        _sync()

    benchmark.pedantic(timed, rounds=20 if full else 1, warmup_rounds=2 if full else 0, iterations=1)


def _step_inputs(full: bool):
    P_all, P_act, inner = _sizes(full)
    g = torch.Generator().manual_seed(0)
    x_all = torch.randn((P_all,) + inner, generator=g).to(DEVICE)
    model_out = torch.randn((P_act,) + inner, generator=g).to(DEVICE)
    idx = torch.randperm(P_all, generator=g)[:P_act].to(DEVICE)
    t = torch.randint(1, 600, (P_act,), generator=g).to(DEVICE)
    t_next = t - 1
    return x_all, model_out, idx, t, t_next, _alphas_cumprod()


def _step_group(full: bool) -> str:
    P_all, P_act, (C, h, w) = _sizes(full)
    return f"group_denoise_step P_all={P_all} P_act={P_act} {C}x{h}x{w} float32 {DEVICE}"


def _step_bytes(model_out: torch.Tensor) -> int:
    return 3 * model_out.numel() * model_out.element_size()


@pytest.fixture
def step_group(benchmark, full):
    benchmark.group = _step_group(full)


def test_step_fused(benchmark, full, step_group):
    x_all, model_out, idx, t, t_next, ac = _step_inputs(full)
    _run(benchmark, lambda: group_denoise_step(x_all, model_out, idx, t, t_next, ac, "eps"), full)
    _report(benchmark, _step_bytes(model_out))


def test_step_eager(benchmark, full, step_group):
    """The unfused sequence: gather, per-patch coefficients, arithmetic, scatter back."""
    x_all, model_out, idx, t, t_next, ac = _step_inputs(full)

    def eager():
        a = ac[t].view(-1, 1, 1, 1)
        a_next = torch.where(t_next < 0, torch.ones_like(a.view(-1)), ac[t_next.clamp(min=0)]).view(-1, 1, 1, 1)
        x = x_all.index_select(0, idx)
        x0 = (x - (1 - a).sqrt() * model_out) / a.sqrt()
        x_all.index_copy_(0, idx, a_next.sqrt() * x0 + (1 - a_next).sqrt() * model_out)

    _run(benchmark, eager, full)
    _report(benchmark, _step_bytes(model_out))


def test_step_copy_bandwidth(benchmark, full, step_group):
    """copy_ of an active-set-sized tensor: the machine's streaming bandwidth."""
    _, model_out, *_ = _step_inputs(full)
    dst = torch.empty_like(model_out)
    _run(benchmark, lambda: dst.copy_(model_out), full)
    _report(benchmark, 2 * model_out.numel() * model_out.element_size())


# ----------------------------------------------------------------------------------
# shortcut_noise: 2 reads + 1 write per element as well
# ----------------------------------------------------------------------------------


def _noise_inputs(full: bool):
    P_all, _, inner = _sizes(full)
    g = torch.Generator().manual_seed(1)
    y0 = torch.randn((P_all,) + inner, generator=g).to(DEVICE)
    noise = torch.randn((P_all,) + inner, generator=g).to(DEVICE)
    t = torch.randint(0, 600, (P_all,), generator=g).to(DEVICE)
    return y0, noise, t, _alphas_cumprod()


@pytest.fixture
def noise_group(benchmark, full):
    P_all, _, (C, h, w) = _sizes(full)
    benchmark.group = f"shortcut_noise P={P_all} {C}x{h}x{w} float32 {DEVICE}"


def test_noise_fused(benchmark, full, noise_group):
    y0, noise, t, ac = _noise_inputs(full)
    _run(benchmark, lambda: shortcut_noise(y0, noise, t, ac), full)
    _report(benchmark, 3 * y0.numel() * y0.element_size())


def test_noise_eager(benchmark, full, noise_group):
    y0, noise, t, ac = _noise_inputs(full)
    a = lambda: ac[t].view(-1, 1, 1, 1)  # noqa: E731
    _run(benchmark, lambda: a().sqrt() * y0 + (1 - a()).sqrt() * noise, full)
    _report(benchmark, 3 * y0.numel() * y0.element_size())


def test_noise_copy_bandwidth(benchmark, full, noise_group):
    y0, *_ = _noise_inputs(full)
    dst = torch.empty_like(y0)
    _run(benchmark, lambda: dst.copy_(y0), full)
    _report(benchmark, 2 * y0.numel() * y0.element_size())


def test_noise_clone_bandwidth(benchmark, full, noise_group):
    """clone(): a copy into a fresh allocation, which (like any out-of-place op,
    shortcut_noise included) also pays for faulting in the new pages."""
    y0, *_ = _noise_inputs(full)
    _run(benchmark, lambda: y0.clone(), full)
    _report(benchmark, 2 * y0.numel() * y0.element_size())
