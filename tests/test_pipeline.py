"""PatchScalerPipeline end to end on tiny images, with small randomly initialised models
(the hook ``PatchScalerPipeline(grm=..., sampler=...)``), so nothing here needs shipped
weights: GRM tiling, patch planning and blending, the sampler interface, determinism
across batch composition and chunking, and any image size from 1×1."""

from __future__ import annotations

import json

import pytest
import torch

from patchscaler.inference.codec import PixelUnshuffleCodec
from patchscaler.inference.pipeline import GroupMap, PatchScalerPipeline, WeightsNotAvailableError, build_sampler
from patchscaler.sampling import PGSSampler

from helpers import PGS_TEST_CONFIG, banded_image, tiny_grm, tiny_sampler, write_model_set

@pytest.fixture(scope="module")
def grm():
    return tiny_grm()


@pytest.fixture(scope="module")
def pgs_pipe(grm):
    return PatchScalerPipeline(grm=grm, sampler=tiny_sampler("pgs"))


@pytest.fixture(scope="module")
def none_pipe(grm):
    return PatchScalerPipeline(grm=grm, sampler="none")


def test_none_is_the_grm_decoded(grm, none_pipe):
    lr = banded_image(13, 21)
    (hr, gmap), = none_pipe.upscale_images([lr])
    with torch.no_grad():
        y0, conf = grm(lr[None])
    expected = PixelUnshuffleCodec(4).decode(y0).clamp(0, 1)[0]
    assert hr.shape == (3, 52, 84)
    torch.testing.assert_close(hr, expected, atol=1e-6, rtol=0)
    torch.testing.assert_close(gmap.confidence, conf[0], atol=1e-6, rtol=0)
    assert not gmap.sampled and gmap.evaluations == 0
    assert (gmap.group == -1).all() and (gmap.group_pixels == -1).all()


@pytest.mark.parametrize("shape", [(37, 53), (5, 70), (61, 3)])
def test_grm_tiling_matches_whole_image(grm, shape):
    """Tiles with context >= the GRM's receptive radius reproduce the untiled GRM."""
    lr = torch.stack([banded_image(*shape, seed=1), banded_image(*shape, seed=2)])
    whole = PatchScalerPipeline(grm=grm, sampler="none")
    tiled = PatchScalerPipeline(grm=grm, sampler="none", grm_tile=24, grm_context=4)
    y0_a, c_a = whole.restore(lr)
    y0_b, c_b = tiled.restore(lr)
    torch.testing.assert_close(y0_b, y0_a, atol=1e-5, rtol=0)
    torch.testing.assert_close(c_b, c_a, atol=1e-6, rtol=0)


def test_pgs_groups_steps_and_range(pgs_pipe):
    lr = banded_image(20, 44)
    (hr, gmap), = pgs_pipe.upscale_images([lr], seed=3)
    assert hr.shape == (3, 80, 176) and hr.dtype == torch.float32
    assert 0 <= float(hr.min()) and float(hr.max()) <= 1
    assert isinstance(gmap, GroupMap) and gmap.sampled
    P = gmap.origins.shape[0]
    assert gmap.group.shape == gmap.steps.shape == gmap.qmap.shape == (P,)
    assert set(gmap.group.tolist()) == {0, 1, 2}, "banded image should hit every group"
    n_steps = torch.tensor([n for _, n in PGS_TEST_CONFIG.groups])
    assert torch.equal(gmap.steps, n_steps[gmap.group])
    assert gmap.evaluations == int(n_steps[gmap.group].sum())
    assert gmap.group_pixels.shape == (20, 44)
    assert set(gmap.group_pixels.unique().tolist()) <= {0, 1, 2}
    # Left (dark) pixels are hard, right (bright) ones simple.
    assert gmap.group_pixels[:, 0].eq(2).all() and gmap.group_pixels[:, -1].eq(0).all()
    json.dumps(gmap.summary())
    # The sampler changed the GRM's result.
    (hr_none, _), = PatchScalerPipeline(grm=pgs_pipe.grm, sampler="none").upscale_images([lr])
    assert (hr - hr_none).abs().max() > 1e-3


def test_uniform_gives_every_patch_the_hard_steps(grm):
    pipe = PatchScalerPipeline(grm=grm, sampler=tiny_sampler("uniform"))
    (hr, gmap), = pipe.upscale_images([banded_image(18, 18)])
    assert pipe.sampler_name == "uniform"
    assert gmap.steps.eq(PGS_TEST_CONFIG.groups[2][1]).all()
    assert hr.shape == (3, 72, 72)


def test_pgs_deterministic_across_batch_composition_and_chunking(pgs_pipe):
    a, b, c = banded_image(20, 24, 1), banded_image(20, 24, 2), banded_image(9, 30, 3)
    alone = pgs_pipe.upscale_images([a], seed=7)[0][0]
    batched = pgs_pipe.upscale_images([c, b, a], seed=7, max_batch_patches=1)
    chunked = pgs_pipe.upscale_images(torch.stack([b, a]), seed=7, max_batch_patches=3)
    torch.testing.assert_close(batched[2][0], alone, atol=1e-5, rtol=0)
    torch.testing.assert_close(chunked[1][0], alone, atol=1e-5, rtol=0)
    again = pgs_pipe.upscale_images([a], seed=7)[0][0]
    assert torch.equal(again, alone)
    other_seed = pgs_pipe.upscale_images([a], seed=8)[0][0]
    assert (other_seed - alone).abs().max() > 1e-4


def test_runs_split_by_pixel_budget_give_the_same_result(grm):
    images = [banded_image(16, 20, s) for s in range(3)]
    big = PatchScalerPipeline(grm=grm, sampler=tiny_sampler())
    small = PatchScalerPipeline(grm=grm, sampler=tiny_sampler(), max_lr_pixels_per_run=16 * 20)
    for (x, _), (y, _) in zip(big.upscale_images(images, seed=1), small.upscale_images(images, seed=1)):
        torch.testing.assert_close(x, y, atol=1e-5, rtol=0)


@pytest.mark.parametrize("size", [(1, 1), (1, 17), (17, 1), (16, 16), (2, 33)])
@pytest.mark.parametrize("sampler", ["none", "pgs"])
def test_any_size_from_one_pixel(grm, size, sampler):
    pipe = PatchScalerPipeline(grm=grm, sampler=tiny_sampler() if sampler == "pgs" else "none")
    h, w = size
    (hr, gmap), = pipe.upscale_images([banded_image(h, w)])
    assert hr.shape == (3, 4 * h, 4 * w)
    assert torch.isfinite(hr).all() and 0 <= float(hr.min()) and float(hr.max()) <= 1
    assert gmap.confidence.shape == (1, h, w) and gmap.group_pixels.shape == (h, w)


def test_mixed_sizes_keep_order(pgs_pipe):
    images = [banded_image(5, 7), banded_image(20, 18), banded_image(5, 7, seed=4)]
    out = pgs_pipe.upscale_images(images)
    assert [tuple(hr.shape) for hr, _ in out] == [(3, 20, 28), (3, 80, 72), (3, 20, 28)]
    alone = pgs_pipe.upscale_images([images[2]])[0][0]
    torch.testing.assert_close(out[2][0], alone, atol=1e-5, rtol=0)


def test_low_precision_models_stay_close(grm):
    lr = banded_image(12, 12)
    ref = PatchScalerPipeline(grm=grm, sampler="none").upscale_images([lr])[0][0]
    bf16 = PatchScalerPipeline(grm=grm, sampler="none", dtype=torch.bfloat16).upscale_images([lr])[0][0]
    assert bf16.dtype == torch.float32
    assert (bf16 - ref).abs().max() < 0.05
    # The caller's module is not converted in place.
    assert next(grm.parameters()).dtype == torch.float32


def test_diffusion_without_its_weights_raises_not_falls_back(weights_dir):
    write_model_set(weights_dir, "bicubic")
    write_model_set(weights_dir, "real", dit=False)  # a partial set: its GRM only
    assert isinstance(build_sampler("pgs", "bicubic"), PGSSampler)
    with pytest.raises(WeightsNotAvailableError, match=r"dit_x4\.safetensors.*'real'.*sampler='none'"):
        build_sampler("pgs", "real")
    with pytest.raises(WeightsNotAvailableError, match="dit_x4"):
        PatchScalerPipeline(model="real", sampler="uniform")
    assert PatchScalerPipeline(model="real", sampler="none").upscale_images([banded_image(5, 6)])[0][0].shape == (3, 20, 24)
    with pytest.raises(ValueError, match="unknown sampler"):
        build_sampler("ddpm")
    with pytest.raises(ValueError, match="model must be one of"):
        build_sampler("pgs", "realistic")


def test_a_missing_model_set_is_a_clear_error(weights_dir):
    write_model_set(weights_dir, "bicubic")
    with pytest.raises(WeightsNotAvailableError, match=r"model set 'real' .* not in this install.*'bicubic'"):
        PatchScalerPipeline(model="real", sampler="none")


def test_bad_settings_are_rejected(grm):
    with pytest.raises(ValueError, match="grm_tile"):
        PatchScalerPipeline(grm=grm, grm_tile=8, grm_context=4)
    with pytest.raises(ValueError, match="patch_overlap"):
        PatchScalerPipeline(grm=grm, patch_size=8, patch_overlap=8)
    with pytest.raises(ValueError, match=r"\[3, h, w\]"):
        PatchScalerPipeline(grm=grm).upscale_images([torch.rand(1, 4, 4)])


def test_group_caps_hold_for_the_whole_image_when_it_streams_in_bands(grm):
    """A cap is a share of the image's patches, lowest confidence first: the pipeline plans
    groups on the whole image's Qmap, so bands sampled one call at a time get the same groups."""
    from dataclasses import replace

    from patchscaler.sampling import DiTDenoiser

    from helpers import tiny_dit

    sampler = PGSSampler(DiTDenoiser(tiny_dit()), replace(PGS_TEST_CONFIG, max_share=(0.2, 0.3)))
    dark = banded_image(60, 20) * 0.3  # every patch below the hard threshold
    [(ref, whole)] = PatchScalerPipeline(grm=grm, sampler=sampler).upscale_images([dark])
    banded_pipe = PatchScalerPipeline(grm=grm, sampler=sampler, max_lr_pixels_per_run=20 * 16)
    assert len(banded_pipe._units([dark], None)[0].bands) == 5
    [(out, banded)] = banded_pipe.upscale_images([dark])
    assert whole.group.numel() == 10  # 5 patch rows of 2
    assert torch.bincount(whole.group, minlength=3).tolist() == [5, 3, 2]  # 0.3·10 medium, 0.2·10 hard
    assert torch.equal(banded.group, whole.group) and torch.equal(out, ref)


def test_presets_give_different_hard_counts_on_a_dark_image(fake_models):
    """End to end through `upscale()`: the thresholds put every patch of a dark image in the
    hard group under every preset; the caps make "fast" < "balanced" < "detail"."""
    import patchscaler

    dark = banded_image(64, 64) * 0.1
    hard = {}
    for quality in ("fast", "balanced", "detail"):
        _, gmap = patchscaler.upscale(dark, sampler="pgs", quality=quality, return_groups=True)
        hard[quality] = int(gmap.group.eq(2).sum())
    assert hard["fast"] < hard["balanced"] < hard["detail"] < gmap.group.numel()
