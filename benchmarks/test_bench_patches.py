"""gather_patches + blend_patches against the usual ways of doing the same.

Workload (`--benchmark`): a latent of 48x512x512 (the pixel-unshuffled 2048x2048
output of a x4 upscale), 16x16 patches with overlap 4 (43x43 = 1849 patches),
float32, on this CPU. Smoke mode (no flag): 4x40x40, each benchmark run once.

Contenders, in each group:
- cpp:        the C++ kernels via torch.ops.patchscaler.* (allocating their output)
- cpp_out:    the same kernels writing into preallocated outputs (the .out overloads),
              which is what the `copy_` bandwidth yardstick does too
- fold:       F.unfold / F.fold on the regular stride-12 grid of the image padded to
              520x520 (fold cannot express shifted edge patches); the padding is done
              once outside the timing, in the baseline's favour
- tile_loop:  the Python loop of common upscalers: slice each tile, accumulate
              tile*window and window into output and weight tensors, divide
- reference:  the index_put_-based reference of patchscaler.ops.patches
- copy:       `dst.copy_(src)` over as many bytes as the op group reads + writes

extra_info: "bytes" = bytes read + written once each (gather: x in, patches out;
blend: patches in, image out), "GB/s" = bytes / mean time, and in the blend group
"peak_extra_MiB": growth of the process's peak resident memory during one call
(VmHWM after resetting it, minus VmRSS before), output included; "out_MiB" is the
output size. That counts every page a call touches, torch tensors and C++ buffers
alike; only small temporaries that reuse memory the process already holds could
hide from it (the C++ blend's are the coverage index and a [B,H,W] fp32 weight
map, 1/C of the output).
"""

from __future__ import annotations

import gc
import os

import pytest
import torch
import torch.nn.functional as F

from patchscaler.ops.patches import (
    blend_patches,
    gather_patches,
    reference_blend_patches,
    reference_gather_patches,
)
from patchscaler.inference.patch_plan import plan_patches

PATCH, OVERLAP = 16, 4
STRIDE = PATCH - OVERLAP


class Workload:
    def __init__(self, full: bool):
        B, C, H, W = (1, 48, 512, 512) if full else (1, 4, 40, 40)
        self.B, self.C, self.H, self.W = B, C, H, W
        self.label = f"{C}x{H}x{W} p{PATCH}/o{OVERLAP}"
        g = torch.Generator().manual_seed(0)
        self.x = torch.randn(B, C, H, W, generator=g)
        self.plan = plan_patches(H, W, PATCH, OVERLAP)
        self.origins = self.plan.batch_origins(B)
        self.window = self.plan.window()
        self.patches = gather_patches(self.x, self.origins, PATCH, PATCH)
        self.patches_out = torch.empty_like(self.patches)
        self.image_out = torch.empty_like(self.x)
        # fold's regular grid: pad to the next size the stride tiles exactly.
        self.Hp = PATCH + -(-(H - PATCH) // STRIDE) * STRIDE
        self.Wp = PATCH + -(-(W - PATCH) // STRIDE) * STRIDE
        self.x_pad = F.pad(self.x, (0, self.Wp - W, 0, self.Hp - H), mode="replicate")
        self.fold_patches = fold_gather(self.x_pad)
        self.gather_bytes = self.x.nbytes + self.patches.nbytes
        self.blend_bytes = self.patches.nbytes + self.x.nbytes


@pytest.fixture(scope="module")
def work(full) -> Workload:
    return Workload(full)


# ----------------------------------------------------------------------- baselines


def fold_gather(x_pad: torch.Tensor) -> torch.Tensor:
    """[B, C, Hp, Wp] on the regular grid -> [P, C, ph, pw] with F.unfold."""
    B, C = x_pad.shape[:2]
    cols = F.unfold(x_pad, PATCH, stride=STRIDE)  # [B, C*ph*pw, L]
    return cols.view(B, C, PATCH, PATCH, -1).permute(0, 4, 1, 2, 3).reshape(-1, C, PATCH, PATCH)


def fold_blend(patches, window, B, Hp, Wp, H, W) -> torch.Tensor:
    """[P, C, ph, pw] -> [B, C, H, W]: F.fold of window*patches over F.fold of the window."""
    P, C = patches.shape[:2]
    L = P // B
    cols = (patches * window).view(B, L, C * PATCH * PATCH).transpose(1, 2)
    num = F.fold(cols, (Hp, Wp), PATCH, stride=STRIDE)
    den = F.fold(window.reshape(1, -1, 1).expand(1, PATCH * PATCH, L), (Hp, Wp), PATCH, stride=STRIDE)
    return (num / den)[..., :H, :W]


def tile_loop_gather_blend(x, plan, window) -> torch.Tensor:
    """The loop of common tiled upscalers (the model would run on each `tile`)."""
    out = torch.zeros_like(x)
    wsum = torch.zeros_like(x[:, :1])
    for y in plan.ys:
        for x0 in plan.xs:
            tile = x[:, :, y : y + PATCH, x0 : x0 + PATCH]
            out[:, :, y : y + PATCH, x0 : x0 + PATCH] += tile * window
            wsum[:, :, y : y + PATCH, x0 : x0 + PATCH] += window
    return out / wsum


def tile_loop_blend(patches, plan, window, B, C, H, W) -> torch.Tensor:
    out = torch.zeros(B, C, H, W)
    wsum = torch.zeros(B, 1, H, W)
    k = 0
    for y in plan.ys:
        for x0 in plan.xs:
            out[0, :, y : y + PATCH, x0 : x0 + PATCH] += patches[k] * window
            wsum[0, :, y : y + PATCH, x0 : x0 + PATCH] += window
            k += 1
    return out / wsum


# ------------------------------------------------------------------------ helpers


def run(benchmark, fn, nbytes: int, rounds: int = 15):
    """Time fn (15 rounds after a warm-up) and record bytes and GB/s."""
    result = benchmark.pedantic(fn, rounds=rounds, warmup_rounds=1)
    benchmark.extra_info["bytes"] = nbytes
    stats = getattr(benchmark, "stats", None)  # None in smoke mode (timing disabled)
    if stats is not None:
        benchmark.extra_info["GB/s"] = nbytes / stats.stats.mean / 1e9
    return result


def _proc_status(key: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    raise KeyError(key)


def peak_extra_bytes(fn) -> int | None:
    """Growth of peak resident memory during one call of fn (output included), or None."""
    if not os.path.exists("/proc/self/clear_refs"):
        return None
    gc.collect()
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # resets VmHWM to the current RSS
    except OSError:
        return None
    before = _proc_status("VmRSS")
    out = fn()
    peak = _proc_status("VmHWM") - before
    del out
    return peak


def record_memory(benchmark, fn, out_bytes: int):
    peak = peak_extra_bytes(fn)
    benchmark.extra_info["out_MiB"] = out_bytes / 2**20
    if peak is not None:
        benchmark.extra_info["peak_extra_MiB"] = peak / 2**20
        benchmark.extra_info["peak/out"] = peak / out_bytes


def copy_pair(nbytes: int):
    src = torch.randn(nbytes // 4)
    dst = torch.randn(nbytes // 4)
    return src, dst


# ------------------------------------------------------------------- gather+blend

GB = "gather+blend"


@pytest.mark.benchmark(group=GB)
def test_gather_blend_cpp(benchmark, work):
    w = work

    def fn():
        p = gather_patches(w.x, w.origins, PATCH, PATCH)
        return blend_patches(p, w.origins, w.window, w.B, w.H, w.W)

    benchmark.group = f"{GB} {w.label}"
    out = run(benchmark, fn, w.gather_bytes + w.blend_bytes)
    torch.testing.assert_close(out, w.x)


@pytest.mark.benchmark(group=GB)
def test_gather_blend_cpp_out(benchmark, work):
    w = work
    ops = torch.ops.patchscaler

    def fn():
        ops.gather_patches.out(w.x, w.origins, PATCH, PATCH, out=w.patches_out)
        return ops.blend_patches.out(w.patches_out, w.origins, w.window, w.B, w.H, w.W, out=w.image_out)

    benchmark.group = f"{GB} {w.label}"
    out = run(benchmark, fn, w.gather_bytes + w.blend_bytes)
    torch.testing.assert_close(out, w.x)


@pytest.mark.benchmark(group=GB)
def test_gather_blend_fold(benchmark, work):
    w = work

    def fn():
        return fold_blend(fold_gather(w.x_pad), w.window, w.B, w.Hp, w.Wp, w.H, w.W)

    benchmark.group = f"{GB} {w.label}"
    out = run(benchmark, fn, w.gather_bytes + w.blend_bytes)
    torch.testing.assert_close(out, w.x)


@pytest.mark.benchmark(group=GB)
def test_gather_blend_tile_loop(benchmark, work):
    w = work
    benchmark.group = f"{GB} {w.label}"
    out = run(benchmark, lambda: tile_loop_gather_blend(w.x, w.plan, w.window), w.gather_bytes + w.blend_bytes, rounds=5)
    torch.testing.assert_close(out, w.x)


@pytest.mark.benchmark(group=GB)
def test_gather_blend_reference(benchmark, work):
    w = work

    def fn():
        p = reference_gather_patches(w.x, w.origins, PATCH, PATCH)
        return reference_blend_patches(p, w.origins, w.window, w.B, w.H, w.W)

    benchmark.group = f"{GB} {w.label}"
    out = run(benchmark, fn, w.gather_bytes + w.blend_bytes, rounds=3)
    torch.testing.assert_close(out, w.x)


@pytest.mark.benchmark(group=GB)
def test_gather_blend_copy(benchmark, work):
    """copy_ of |x| + |patches| bytes: reads and writes exactly as many bytes as gather+blend."""
    w = work
    src, dst = copy_pair(w.gather_bytes)
    benchmark.group = f"{GB} {w.label}"
    run(benchmark, lambda: dst.copy_(src), 2 * src.nbytes)


# -------------------------------------------------------------------------- blend

BL = "blend"


@pytest.mark.benchmark(group=BL)
def test_blend_cpp(benchmark, work):
    w = work
    fn = lambda: blend_patches(w.patches, w.origins, w.window, w.B, w.H, w.W)  # noqa: E731
    benchmark.group = f"{BL} {w.label}"
    out = run(benchmark, fn, w.blend_bytes)
    record_memory(benchmark, fn, w.x.nbytes)
    torch.testing.assert_close(out, w.x)


@pytest.mark.benchmark(group=BL)
def test_blend_cpp_out(benchmark, work):
    w = work
    op = torch.ops.patchscaler.blend_patches.out
    benchmark.group = f"{BL} {w.label}"
    out = run(benchmark, lambda: op(w.patches, w.origins, w.window, w.B, w.H, w.W, out=w.image_out), w.blend_bytes)
    torch.testing.assert_close(out, w.x)


@pytest.mark.benchmark(group=BL)
def test_blend_fold(benchmark, work):
    w = work
    fn = lambda: fold_blend(w.fold_patches, w.window, w.B, w.Hp, w.Wp, w.H, w.W)  # noqa: E731
    benchmark.group = f"{BL} {w.label}"
    out = run(benchmark, fn, w.blend_bytes)
    record_memory(benchmark, fn, w.x.nbytes)
    torch.testing.assert_close(out, w.x)


@pytest.mark.benchmark(group=BL)
def test_blend_tile_loop(benchmark, work):
    w = work
    fn = lambda: tile_loop_blend(w.patches, w.plan, w.window, w.B, w.C, w.H, w.W)  # noqa: E731
    benchmark.group = f"{BL} {w.label}"
    out = run(benchmark, fn, w.blend_bytes, rounds=5)
    record_memory(benchmark, fn, w.x.nbytes)
    torch.testing.assert_close(out, w.x)


@pytest.mark.benchmark(group=BL)
def test_blend_reference(benchmark, work):
    w = work
    fn = lambda: reference_blend_patches(w.patches, w.origins, w.window, w.B, w.H, w.W)  # noqa: E731
    benchmark.group = f"{BL} {w.label}"
    out = run(benchmark, fn, w.blend_bytes, rounds=3)
    record_memory(benchmark, fn, w.x.nbytes)
    torch.testing.assert_close(out, w.x)


@pytest.mark.benchmark(group=BL)
def test_blend_copy(benchmark, work):
    w = work
    src, dst = copy_pair(w.blend_bytes // 2)
    benchmark.group = f"{BL} {w.label}"
    run(benchmark, lambda: dst.copy_(src), 2 * src.nbytes)


# ------------------------------------------------------------------------- gather

GA = "gather"


@pytest.mark.benchmark(group=GA)
def test_gather_cpp(benchmark, work):
    w = work
    benchmark.group = f"{GA} {w.label}"
    out = run(benchmark, lambda: gather_patches(w.x, w.origins, PATCH, PATCH), w.gather_bytes)
    assert torch.equal(out, w.patches)


@pytest.mark.benchmark(group=GA)
def test_gather_cpp_out(benchmark, work):
    w = work
    op = torch.ops.patchscaler.gather_patches.out
    benchmark.group = f"{GA} {w.label}"
    out = run(benchmark, lambda: op(w.x, w.origins, PATCH, PATCH, out=w.patches_out), w.gather_bytes)
    assert torch.equal(out, w.patches)


@pytest.mark.benchmark(group=GA)
def test_gather_unfold(benchmark, work):
    w = work
    benchmark.group = f"{GA} {w.label}"
    run(benchmark, lambda: fold_gather(w.x_pad), w.gather_bytes)


@pytest.mark.benchmark(group=GA)
def test_gather_reference(benchmark, work):
    w = work
    benchmark.group = f"{GA} {w.label}"
    out = run(benchmark, lambda: reference_gather_patches(w.x, w.origins, PATCH, PATCH), w.gather_bytes, rounds=5)
    assert torch.equal(out, w.patches)


@pytest.mark.benchmark(group=GA)
def test_gather_copy(benchmark, work):
    w = work
    src, dst = copy_pair(w.gather_bytes // 2)
    benchmark.group = f"{GA} {w.label}"
    run(benchmark, lambda: dst.copy_(src), 2 * src.nbytes)
