"""Memory budget (`patchscaler.inference.memory_budget`) and out-of-memory halving: a step that
runs out of memory is retried in halves (never the whole image) with the same result.
There is no GPU here, so the out-of-memory errors are injected: models that raise
`torch.OutOfMemoryError` on inputs above a size, as CUDA would."""

from __future__ import annotations

import pytest
import torch
from PIL import Image

import numpy as np

from patchscaler.command.cli import main
from patchscaler.inference.memory_budget import MIN_BUDGET, chunk_sizes, parse_memory
from patchscaler.inference.pipeline import PatchScalerPipeline
from patchscaler.sampling import DiTDenoiser, PGSSampler
from patchscaler.sampling.denoiser import DiTDenoiser as _DiTDenoiser

from helpers import PGS_TEST_CONFIG, banded_image, tiny_dit, tiny_grm


class CrampedDenoiser(DiTDenoiser):
    """The tiny DiT denoiser on a device that fits at most ``fits`` patches per call."""

    def __init__(self, fits: int):
        super().__init__(tiny_dit())
        self.fits, self.sizes = fits, []

    def __call__(self, y_t, t, cond):
        if y_t.shape[0] > self.fits:
            raise torch.OutOfMemoryError(f"CUDA out of memory (injected: {y_t.shape[0]} > {self.fits} patches)")
        self.sizes.append(y_t.shape[0])
        return super().__call__(y_t, t, cond)


def _patches(n=40, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 48, 16, 16, generator=g), torch.rand(n, generator=g), torch.arange(n)


def test_sampler_halves_the_chunk_and_gets_the_same_result():
    y0, qmap, seeds = _patches()
    ref = PGSSampler(DiTDenoiser(tiny_dit()), PGS_TEST_CONFIG)(y0, qmap, seeds=seeds, max_batch_patches=16)
    cramped = CrampedDenoiser(fits=3)
    out = PGSSampler(cramped, PGS_TEST_CONFIG)(y0, qmap, seeds=seeds, max_batch_patches=16)
    assert ref.batch_halved_to is None
    assert out.batch_halved_to == 2  # 16 -> 8 -> 4 -> 2
    assert max(cramped.sizes) <= 3 and sum(cramped.sizes) == out.evaluations == ref.evaluations
    assert torch.equal(out.x0, ref.x0)


def test_sampler_gives_a_clear_error_at_the_floor():
    y0, qmap, seeds = _patches(4)
    with pytest.raises(torch.OutOfMemoryError, match="single patch"):
        PGSSampler(CrampedDenoiser(fits=0), PGS_TEST_CONFIG)(y0, qmap, seeds=seeds, max_batch_patches=4)


class CrampedGRM(torch.nn.Module):
    """The tiny GRM on a device that fits at most ``fits`` LR pixels per forward."""

    def __init__(self, fits: int):
        super().__init__()
        self.inner, self.fits = tiny_grm(), fits

    def forward(self, lr):
        if lr.shape[0] * lr.shape[-2] * lr.shape[-1] > self.fits:
            raise torch.OutOfMemoryError("CUDA out of memory (injected)")
        return self.inner(lr)


def test_pipeline_halves_grm_tile_and_dit_batch_and_says_so():
    image = banded_image(100, 90)
    ref_pipe = PatchScalerPipeline(grm=tiny_grm(), sampler=PGSSampler(DiTDenoiser(tiny_dit()), PGS_TEST_CONFIG),
                                   grm_tile=50)
    [(ref, ref_map)] = ref_pipe.upscale_images([image], seed=1, max_batch_patches=64)
    pipe = PatchScalerPipeline(grm=CrampedGRM(fits=60 * 60), sampler=PGSSampler(CrampedDenoiser(5), PGS_TEST_CONFIG),
                               grm_tile=200)
    [(out, gmap)] = pipe.upscale_images([image], seed=1, max_batch_patches=64)
    assert gmap.grm_tile_halved_to == 50 and gmap.dit_batch_halved_to == 4
    assert ref_map.memory_note() is None
    assert "halved to 4 patches" in gmap.memory_note() and "50x50" in gmap.memory_note()
    # Same tiles as the reference (grm_tile=50), the DiT in chunks of 4 instead of 64: same image.
    assert torch.equal(out, ref) and torch.equal(gmap.group, ref_map.group)


@pytest.mark.parametrize("value,expect", [("6G", 6 << 30), ("512M", 512 << 20), ("1.5GiB", int(1.5 * (1 << 30))),
                                          ("2gb", 2 << 30), (1 << 30, 1 << 30)])
def test_parse_memory(value, expect):
    assert parse_memory(value) == expect


@pytest.mark.parametrize("value", ["0", "-1G", "lots", "", "1M", 0, -5, True, float("nan"), None])
def test_parse_memory_rejects(value):
    with pytest.raises(ValueError, match="memory_budget must be"):
        parse_memory(value)


def test_chunk_sizes_grow_with_the_budget():
    small, big = chunk_sizes(MIN_BUDGET), chunk_sizes(16 << 30)
    assert small.max_batch_patches >= 1 and small.grm_tile >= 64 and small.band_lr_pixels >= 1
    assert big.max_batch_patches > small.max_batch_patches and big.grm_tile > small.grm_tile
    assert big.band_lr_pixels > small.band_lr_pixels


def test_upscale_with_a_budget_equals_without(fake_models):
    import patchscaler

    x = banded_image(60, 40)
    ref = patchscaler.upscale(x, sampler="pgs", seed=4)
    assert torch.equal(patchscaler.upscale(x, sampler="pgs", seed=4, memory_budget="64M"), ref)
    with pytest.raises(ValueError, match="memory_budget must be"):
        patchscaler.upscale(x, sampler="pgs", memory_budget="-2G")


def test_cli_max_memory_and_the_out_of_memory_line(fake_models, tmp_path, capsys, monkeypatch):
    fake_models["pgs_available"] = True
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (48, 40, 3), dtype=np.uint8)).save(tmp_path / "a.png")
    assert main([str(tmp_path / "a.png"), "-o", str(tmp_path / "ref.png"), "-q", "--max-memory", "1G"]) == 0
    assert capsys.readouterr().err == ""
    real_call = _DiTDenoiser.__call__

    def cramped(self, y_t, t, cond):
        if y_t.shape[0] > 2:
            raise torch.OutOfMemoryError("CUDA out of memory (injected)")
        return real_call(self, y_t, t, cond)

    monkeypatch.setattr(_DiTDenoiser, "__call__", cramped)
    assert main([str(tmp_path / "a.png"), "-o", str(tmp_path / "out.png"), "-q"]) == 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "out of device memory: Patch-DiT batches halved to" in err[0]
    assert np.array_equal(np.asarray(Image.open(tmp_path / "out.png")), np.asarray(Image.open(tmp_path / "ref.png")))
    assert main([str(tmp_path / "a.png"), "--max-memory", "tiny"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--max-memory must be" in err[0]
