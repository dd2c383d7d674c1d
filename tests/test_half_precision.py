"""Half precision never gives NaN (black) output: a DiT chunk whose fp16/bf16 output is not
finite runs again in float32, and the reruns are counted (`PGSOutput`, `GroupMap`, the CLI).

The model under test really overflows: `overflowing_dit` has one patch-embedding channel
that sums the 768 values of ``y0`` under a token with weight 200, so a dark patch
(y0 ≈ −0.9) reaches about −1.4e5, beyond fp16's 65504, while a mid-grey one (y0 ≈ 0)
stays near 0. In float32 LayerNorm normalises the large value and the output is finite.
"""

from __future__ import annotations

import pytest
import torch

from helpers import tiny_dit, write_model_set

from patchscaler.sampling import DiTDenoiser, PGSConfig, PGSSampler, UniformSampler

GAIN = 200.0  # |GAIN · Σ y0| over a token: 200 · 691 ≈ 1.4e5 for a dark patch, > 65504
CONFIG = PGSConfig(gammas=(0.6, 0.4), groups=((150, 1), (350, 2), (600, 3)))


def overflowing_dit():
    """A tiny Patch-DiT (random, non-zero output layers) that overflows fp16 on dark y0.
    Its weights are fp16 values (as in the shipped files), so ``.half()`` loses nothing and
    the float32 twin of the fp16 model is this model."""
    dit = tiny_dit()
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in dit.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.02)
        C = dit.config.latent_channels
        dit.patch_embed.weight[0].zero_()
        dit.patch_embed.weight[0, :C] = GAIN  # channels 0..C-1 of the input are y0
        for p in dit.parameters():
            p.copy_(p.half().float())
    return dit.eval()


def latent_patches(dark: list[bool], seed: int = 0) -> torch.Tensor:
    """``[P, 48, 16, 16]``: y0 ≈ −0.9 (a dark patch) or ≈ 0 (mid grey), plus a little noise."""
    g = torch.Generator().manual_seed(seed)
    y0 = torch.randn(len(dark), 48, 16, 16, generator=g) * 0.05
    return y0 + torch.tensor([-0.9 if d else 0.0 for d in dark])[:, None, None, None]


def tiny_rtm(dit):
    from patchscaler.models.rtm import ReferenceTextureMemory
    from patchscaler.models.texture import TextureEncoder, TextureEncoderConfig

    torch.manual_seed(0)
    enc = TextureEncoder(TextureEncoderConfig(widths=(8, 8, 16), key_dim=8, value_grid=2)).eval()
    with torch.no_grad():
        keys, values = enc.encode(torch.randn(10, 48, 16, 16))
    assert tuple(values.shape[1:]) == (dit.config.value_tokens, dit.config.value_dim)
    return ReferenceTextureMemory(keys, values, torch.arange(10), enc)


def test_the_test_model_overflows_in_fp16_only_on_dark_patches():
    dit32 = overflowing_dit()
    dit16 = overflowing_dit().half()
    y0 = latent_patches([True, False])
    t = torch.tensor([300, 300])
    prompt = dit32.encode_prompt(None, None, batch=2)
    with torch.no_grad():
        out32 = dit32(y0, t, y0, prompt)
        out16 = dit16(y0, t, y0, prompt)
        assert float(dit32.patch_embed(torch.cat([y0, y0], 1))[0, 0].abs().max()) > 65504
    assert torch.isfinite(out32).all()
    assert not torch.isfinite(out16[0]).all()  # dark: overflow
    assert torch.isfinite(out16[1]).all()  # mid grey: fine in fp16
    assert (out16[1] - out32[1]).abs().max() < 0.05  # and close to fp32


@pytest.mark.parametrize("with_rtm", [False, True])
def test_fp16_sampler_reruns_overflowing_chunks_in_fp32_and_equals_the_fp32_sampler(with_rtm):
    dit32 = overflowing_dit()
    rtm = tiny_rtm(dit32) if with_rtm else None
    den32 = DiTDenoiser(dit32, rtm)
    den16 = DiTDenoiser(overflowing_dit().half(), rtm)
    y0 = latent_patches([True] * 5)
    qmap = torch.linspace(0.1, 0.9, 5)
    seeds = torch.arange(5)
    # Uniform: every patch in every chunk, one chunk per iteration, so the float32
    # reruns see exactly the batches the float32 sampler sees.
    ref = UniformSampler(den32, CONFIG)(y0, qmap, seeds=seeds, max_batch_patches=8)
    out = UniformSampler(den16, CONFIG)(y0, qmap, seeds=seeds, max_batch_patches=8)
    assert ref.fp32_reruns == 0 and ref.fp32_evaluations == 0  # a float32 denoiser is not checked
    assert out.fp32_reruns == out.dit_calls == 3  # every chunk overflowed
    assert out.fp32_steps.tolist() == [3] * 5 and out.fp32_evaluations == out.evaluations
    assert torch.equal(out.x0, ref.x0)
    unguarded = UniformSampler(den16, CONFIG, fp32_fallback=False)(y0, qmap, seeds=seeds, max_batch_patches=8)
    assert unguarded.fp32_reruns == 0
    assert not torch.isfinite(unguarded.x0).any()  # what the guard prevents: all NaN/Inf


def test_only_chunks_with_a_non_finite_output_rerun_and_the_count_is_per_patch():
    dark = [True, False, False, False, True, True, False]
    y0 = latent_patches(dark)
    qmap = torch.full((7,), 0.5)  # all medium: 2 steps each, same active set every iteration
    den16 = DiTDenoiser(overflowing_dit().half())
    den32 = DiTDenoiser(overflowing_dit())
    seeds = torch.arange(7)
    # Chunks of 2 per iteration: (0,1) dark+mid, (2,3) mid, (4,5) dark, (6,) mid.
    out = PGSSampler(den16, CONFIG)(y0, qmap, seeds=seeds, max_batch_patches=2)
    assert out.steps.tolist() == [2] * 7 and out.dit_calls == 8
    assert out.fp32_reruns == 2 * 2  # two chunks per iteration had a dark patch
    assert out.fp32_steps.tolist() == [2, 2, 0, 0, 2, 2, 0]  # the chunk is rerun, its mid patch too
    assert torch.isfinite(out.x0).all()
    ref = PGSSampler(den32, CONFIG)(y0, qmap, seeds=seeds, max_batch_patches=2)
    rerun = out.fp32_steps > 0
    assert torch.equal(out.x0[rerun], ref.x0[rerun])  # rerun chunks: exactly the fp32 result
    assert not torch.equal(out.x0[~rerun], ref.x0[~rerun])  # the rest stayed fp16 ...
    torch.testing.assert_close(out.x0[~rerun], ref.x0[~rerun], atol=0.05, rtol=0)  # ... close to fp32
    unguarded = PGSSampler(den16, CONFIG, fp32_fallback=False)(y0, qmap, seeds=seeds, max_batch_patches=2)
    assert not torch.isfinite(unguarded.x0[torch.tensor(dark)]).all(dim=(1, 2, 3)).any()
    assert torch.equal(unguarded.x0[~rerun], out.x0[~rerun])
    # Per image: `part` keeps each patch's count.
    assert out.part(0, 4).fp32_evaluations == 4 and out.part(4, 7).fp32_evaluations == 4


def test_bf16_denoiser_is_guarded_and_the_fp32_twin_is_made_once():
    den = DiTDenoiser(overflowing_dit().to(torch.bfloat16))
    made = []
    den._make_float32 = lambda: made.append(1) or overflowing_dit()  # count the builds
    y0 = latent_patches([False] * 3)
    with torch.no_grad():
        den.dit.patch_embed.weight[0, 0, 0, 0] = float("inf")  # bf16 has fp32's range: force a NaN
    out = PGSSampler(den, CONFIG)(y0, torch.full((3,), 0.5), seeds=torch.arange(3), max_batch_patches=1)
    assert out.fp32_reruns == out.dit_calls == 6 and len(made) == 1
    assert den.float32_dit() is den.float32_dit() and len(made) == 1
    assert torch.isfinite(out.x0).all()
    fp32 = DiTDenoiser(overflowing_dit())
    assert fp32.float32_dit() is fp32.dit  # a float32 denoiser is its own twin


def test_a_model_non_finite_in_fp32_too_is_an_error():
    den = DiTDenoiser(overflowing_dit().half())
    with torch.no_grad():
        den.float32_dit().final.bias.fill_(float("nan"))
    with pytest.raises(FloatingPointError, match="even in float32"):
        PGSSampler(den, CONFIG)(latent_patches([True]), torch.tensor([0.5]), seeds=[0])


def _overflowing_set(root):
    from patchscaler.checkpoints import weights_file
    from patchscaler.models.dit import save_dit

    write_model_set(root)  # the default set, which upscale() uses when no set is named
    save_dit(overflowing_dit(), weights_file("dit", root=root), half=False)


def test_upscale_fp16_reports_the_reruns_and_matches_fp32(tmp_path, monkeypatch):
    import patchscaler
    from patchscaler.checkpoints import clear

    _overflowing_set(tmp_path)
    monkeypatch.setenv("PATCHSCALER_WEIGHTS", str(tmp_path))
    clear()
    try:
        dark = torch.full((3, 20, 28), 0.05)  # every patch's y0 ≈ −0.9: all overflow
        grey = torch.full((3, 20, 28), 0.5)
        # One call each: in one call their patches would share chunks (a rerun takes the whole chunk).
        (d16, gm_d), (g16, gm_g) = (patchscaler.upscale(x, sampler="pgs", dtype="fp16", return_groups=True)
                                    for x in (dark, grey))
        (d32, ref_d), (g32, ref_g) = (patchscaler.upscale(x, sampler="pgs", return_groups=True) for x in (dark, grey))
        assert gm_d.evaluations > 0 and gm_d.fp32_evaluations == gm_d.evaluations
        assert gm_g.evaluations > 0 and gm_g.fp32_evaluations == 0
        assert gm_d.summary()["fp32_evaluations"] == gm_d.evaluations
        assert ref_d.fp32_evaluations == ref_g.fp32_evaluations == 0
        assert torch.isfinite(d16).all() and d16.mean() > 0.01  # not black
        # The GRM ran in fp16, so the DiT's input differs from fp32's by fp16 rounding.
        torch.testing.assert_close(d16, d32, atol=2e-2, rtol=0)
        torch.testing.assert_close(g16, g32, atol=2e-2, rtol=0)
    finally:
        clear()


def test_cli_prints_one_line_for_the_reruns(tmp_path, monkeypatch, capsys):
    import numpy as np
    from PIL import Image

    from patchscaler.checkpoints import clear
    from patchscaler.command.cli import main

    _overflowing_set(tmp_path / "w")
    monkeypatch.setenv("PATCHSCALER_WEIGHTS", str(tmp_path / "w"))
    Image.fromarray(np.full((20, 28, 3), 13, np.uint8)).save(tmp_path / "dark.png")
    Image.fromarray(np.full((20, 28, 3), 128, np.uint8)).save(tmp_path / "grey.png")
    clear()
    try:
        assert main([str(tmp_path / "dark.png"), "-o", str(tmp_path / "d.png"), "--fp16", "--sampler", "pgs", "-q"]) == 0
        err = capsys.readouterr().err
        lines = [ln for ln in err.splitlines() if "recomputed in float32" in ln]
        assert len(lines) == 1 and "dark.png" in lines[0]
        assert np.asarray(Image.open(tmp_path / "d.png")).mean() > 2  # not black
        assert main([str(tmp_path / "grey.png"), "-o", str(tmp_path / "g.png"), "--fp16", "--sampler", "pgs", "-q"]) == 0
        assert "recomputed in float32" not in capsys.readouterr().err
    finally:
        clear()
