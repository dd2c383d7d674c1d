"""The plain DDIM baseline (`patchscaler.sampling.ddim`), added as one file: the same
engine as PGS gives it the same per-patch trajectory as the uniform sampler with a
(T−1, N) hard group, and it runs by name through `upscale()`, the command line and eval."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

import patchscaler
from patchscaler.diffusion.schedule import make_alphas_cumprod
from patchscaler.sampling import PGSConfig, UniformSampler
from patchscaler.sampling.ddim import DDIM_STEPS, DDIMSampler
from patchscaler.sampling.registry import EVAL_METHODS, SAMPLERS

from helpers import banded_image

AC = make_alphas_cumprod("cosine", 1000, dtype=torch.float64)


class SmoothDenoiser:
    """An analytic stand-in whose output depends on y_t, t and y0, so the result depends on
    the noise and on every timestep a patch visits."""

    schedule, alphas_cumprod, prediction = "cosine", AC, "eps"

    def __init__(self):
        self.calls = []

    def condition(self, y0):
        return {"y0": y0.float()}

    def __call__(self, y_t, t, cond):
        self.calls.append(int(t.numel()))
        return 0.5 * torch.tanh(y_t) + (t.float() / 1000).view(-1, 1, 1, 1) * torch.sin(cond["y0"])


def test_every_patch_gets_the_budget_from_pure_noise():
    g = torch.Generator().manual_seed(0)
    y0, qmap = torch.randn(9, 12, 4, 4, generator=g), torch.rand(9, generator=g)
    seeds = torch.arange(9) * 7 + 1
    den = SmoothDenoiser()
    out = DDIMSampler(den, steps=6)(y0, qmap, seeds, max_batch_patches=4)
    assert out.steps.tolist() == [6] * 9 and out.group.tolist() == [0] * 9
    assert out.group_names == ("ddim",)
    assert out.evaluations == 54 == sum(den.calls) and max(den.calls) <= 4
    # The same engine, asked by the uniform policy for (999, 6) on every patch, must give
    # the same bits: the baseline differs from the others in its policy only.
    uniform = UniformSampler(SmoothDenoiser(), PGSConfig(groups=((100, 1), (300, 2), (999, 6))))
    ref = uniform(y0, qmap, seeds, max_batch_patches=9)
    assert torch.equal(out.x0, ref.x0)


def test_a_budget_the_schedule_cannot_take_is_an_error():
    with pytest.raises(ValueError, match="cannot take 1001 distinct steps"):
        DDIMSampler(SmoothDenoiser(), steps=1001)


def test_registered_for_the_api_command_line_and_eval():
    spec = SAMPLERS["ddim"]
    assert spec.needs == ("dit",) and spec.presets
    from patchscaler.sampling.registry import takes_presets

    # Which samplers the quality presets reach (the command refuses --quality elsewhere).
    assert [name for name in SAMPLERS if takes_presets(name)] == ["pgs", "ddim"]
    assert not takes_presets("none") and not takes_presets("uniform") and not takes_presets(None)
    assert EVAL_METHODS["ddim"] == ("ddim", "balanced")
    from patchscaler.eval import available_methods

    assert "ddim" in available_methods()


def test_upscale_by_name_presets_set_the_budget(fake_models):
    x = banded_image(12, 20)
    evaluations = {}
    for quality in ("fast", "balanced"):
        hr, gmap = patchscaler.upscale(x, sampler="ddim", quality=quality, return_groups=True)
        assert hr.shape == (3, 48, 80) and gmap.sampler == "ddim"
        assert gmap.group_names == ("ddim",) and gmap.steps.eq(DDIM_STEPS[quality]).all()
        assert gmap.summary()["groups"]["ddim"]["patches"] == gmap.group.numel()
        evaluations[quality] = gmap.evaluations
    assert evaluations["fast"] < evaluations["balanced"]


def test_command_line_runs_it(fake_models, tmp_path):
    from patchscaler.command.cli import main

    src = tmp_path / "a.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (8, 10, 3), dtype=np.uint8)).save(src)
    groups = tmp_path / "g.png"
    code = main([str(src), "-o", str(tmp_path / "b.png"), "--sampler", "ddim", "--quality", "fast",
                 "--save-groups", str(groups), "-q"])
    assert code == 0
    assert Image.open(tmp_path / "b.png").size == (40, 32) and groups.is_file()


def test_eval_method_runs_it(fake_models):
    from patchscaler.eval import make_method

    run = make_method("ddim", 4)
    sr, stats = run(banded_image(12, 12)[None])
    assert sr.shape == (1, 3, 48, 48)
    assert stats["dit_evaluations"] == stats["patches"] * DDIM_STEPS["balanced"]
