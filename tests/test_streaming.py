"""Streaming over bands (`patchscaler.inference.band_plan`, `patchscaler.inference.output_buffer`): the
result is bit-identical to the one-band (unstreamed) run, and what goes through the
sampler at once is bounded by the band budget, not by the image's height."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import patchscaler
from patchscaler.inference.band_plan import band_patch_rows, plan_bands
from patchscaler.inference.output_buffer import ArrayOutput
from patchscaler.inference.patch_plan import plan_patches
from patchscaler.inference.pipeline import PatchScalerPipeline

from helpers import banded_image, tiny_grm, tiny_sampler

H, W = 150, 44  # latent rows: 13 patch rows of 16 with overlap 4
ONE_BAND = 1 << 30


@pytest.mark.parametrize("height,rows", [(150, 1), (150, 2), (150, 5), (150, 13), (16, 1), (9, 1), (29, 2)])
def test_bands_partition_the_rows(height, rows):
    plan = plan_patches(height, 20, 16, 4)
    bands = plan_bands(plan, rows)
    assert [r for b in bands for r in b.patch_rows] == list(range(len(plan.ys)))
    assert bands[0].final_rows[0] == 0 and bands[-1].final_rows[1] == height
    for prev, nxt in zip(bands, bands[1:]):
        assert prev.final_rows[1] == nxt.final_rows[0]
    for b in bands:
        a, z = b.final_rows
        covering = [i for i, y in enumerate(plan.ys) if y < z and y + 16 > a]
        assert list(b.blend_rows) == covering  # exactly the patch rows that reach the final rows
        assert b.blend_rows.stop <= b.patch_rows.stop  # never a patch row not sampled yet


def test_band_height_from_the_budget():
    plan = plan_patches(H, W, 16, 4)
    assert band_patch_rows(plan, 16) == 1 and band_patch_rows(plan, 27) == 1 and band_patch_rows(plan, 28) == 2
    assert band_patch_rows(plan, 1) == 1  # at least one patch row


@pytest.mark.parametrize("sampler", ["pgs", "none"])
def test_streamed_equals_unstreamed(sampler):
    grm, samp = tiny_grm(), (tiny_sampler("pgs") if sampler == "pgs" else "none")
    images = [banded_image(H, W, 1), banded_image(H, W, 2), banded_image(9, 7, 3)]
    whole = PatchScalerPipeline(grm=grm, sampler=samp, max_lr_pixels_per_run=ONE_BAND)
    ref = whole.upscale_images(images, seed=3, max_batch_patches=7)
    for budget in (W * 20, W * 40):  # 1 and 3 patch rows per band: 13 and 5 bands
        pipe = PatchScalerPipeline(grm=grm, sampler=samp, max_lr_pixels_per_run=budget)
        assert len(pipe._units(images[:1], None)[0].bands) > 2
        out = pipe.upscale_images(images, seed=3, max_batch_patches=7)
        for (a, ga), (b, gb) in zip(ref, out):
            assert torch.equal(a, b)
            for field in ("qmap", "group", "steps", "confidence", "group_pixels"):
                assert torch.equal(getattr(ga, field), getattr(gb, field)), field


class _Recording:
    """A sampler wrapper that records how many patches each call got."""

    def __init__(self, inner):
        self.inner, self.calls = inner, []
        self.config, self.assign_groups = inner.config, inner.assign_groups

    def __call__(self, y0, qmap, **kw):
        self.calls.append(y0.shape[0])
        return self.inner(y0, qmap, **kw)


def test_sampler_work_is_bounded_by_the_band_not_the_height():
    budget = W * 28  # two patch rows (16 + 12 latent rows) of 4 patches: 8 patches per band
    for height in (60, 300):
        rec = _Recording(tiny_sampler("pgs"))
        PatchScalerPipeline(grm=tiny_grm(), sampler=rec, max_lr_pixels_per_run=budget).upscale_images(
            [banded_image(height, W)])
        assert max(rec.calls) <= 8, (height, rec.calls)
    assert len(rec.calls) == 13  # 300 rows: 25 patch rows, 13 bands


def test_array_output_is_the_quantized_float_result(fake_models):
    """Array/PIL inputs are written into a preallocated uint8/uint16 buffer band by band;
    the pixels are those of quantizing the float result."""
    rng = np.random.default_rng(0)
    rgba = rng.integers(0, 256, size=(40, 30, 4), dtype=np.uint8)
    out = patchscaler.upscale(rgba, sampler="pgs", seed=2)
    x = torch.from_numpy(rgba[..., :3].astype(np.float32) / 255).permute(2, 0, 1)
    ref = patchscaler.upscale(x, sampler="pgs", seed=2)
    expect = np.floor(ref.clamp(0, 1).permute(1, 2, 0).numpy() * 255.0 + 0.5).astype(np.uint8)
    assert out.dtype == np.uint8 and out.shape == (160, 120, 4)
    assert np.array_equal(out[..., :3], expect)
    grey16 = rng.integers(0, 65536, size=(20, 24), dtype=np.uint16)
    out16 = patchscaler.upscale(grey16, sampler="none")
    ref16 = patchscaler.upscale(torch.from_numpy(grey16.astype(np.float32) / 65535).expand(3, -1, -1), sampler="none")
    expect16 = np.floor(ref16.mean(0).clamp(0, 1).numpy() * 65535.0 + 0.5).astype(np.uint16)
    assert out16.dtype == np.uint16 and np.array_equal(out16, expect16)


def test_array_output_buffer_takes_bands_in_place():
    buf = ArrayOutput(8, 4, np.uint8, alpha=True)
    buf.write(0, torch.zeros(3, 4, 4))
    buf.write(4, torch.ones(3, 4, 4))
    buf.write_alpha(torch.full((1, 8, 4), 0.5))
    assert buf.array.shape == (8, 4, 4)
    assert (buf.array[:4, :, :3] == 0).all() and (buf.array[4:, :, :3] == 255).all() and (buf.array[..., 3] == 128).all()


def test_streamed_equals_unstreamed_with_the_shipped_models():
    """The same with the shipped GRM, texture memory and Patch-DiT (`patchscaler/weights/bicubic`):
    a crop of the bundled example, 5 bands against one, and against DiT batches of 1."""
    from PIL import Image

    from patchscaler.checkpoints import PACKAGE_WEIGHTS, weights_root

    assert weights_root() == PACKAGE_WEIGHTS  # not a test's tiny weights
    src = np.asarray(Image.open(PACKAGE_WEIGHTS.parent / "examples" / "dandelions_lr.png").convert("RGB"))
    x = torch.from_numpy(src[:120, :64].astype(np.float32) / 255).permute(2, 0, 1).contiguous()
    [(ref, ref_map)] = PatchScalerPipeline(sampler="pgs", model="bicubic", max_lr_pixels_per_run=ONE_BAND).upscale_images([x], seed=0)
    pipe = PatchScalerPipeline(sampler="pgs", model="bicubic", max_lr_pixels_per_run=64 * 28)
    assert len(pipe._units([x], None)[0].bands) == 5
    [(out, gmap)] = pipe.upscale_images([x], seed=0, max_batch_patches=1)
    assert set(ref_map.group.tolist()) == {0, 1, 2}
    assert torch.equal(out, ref) and torch.equal(gmap.group, ref_map.group)
