"""Output sizes other than x4: ``outscale=`` / ``--outscale`` and exact ``width=/height=``
(``--width/--height``), and their errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

import patchscaler
from patchscaler.command.cli import main

try:  # the fixture lives in conftest.py once the weights refactor lands
    from test_api import fake_models  # noqa: F401
except ImportError:  # pragma: no cover
    pass


def _img(h, w, seed=0):
    return torch.rand(3, h, w, generator=torch.Generator().manual_seed(seed))


def test_outscale_2_is_exactly_twice_and_the_antialiased_x4(fake_models):
    x = _img(6, 10)
    y4 = patchscaler.upscale(x, sampler="none")
    y2 = patchscaler.upscale(x, sampler="none", outscale=2)
    assert y2.shape == (3, 12, 20) and y2.dtype == x.dtype
    want = F.interpolate(y4[None], size=(12, 20), mode="bicubic", antialias=True).clamp(0, 1)[0]
    torch.testing.assert_close(y2, want, atol=1e-6, rtol=0)
    assert torch.equal(patchscaler.upscale(x, sampler="none", outscale=4), y4)
    assert patchscaler.upscale(x, sampler="none", outscale=2.5).shape == (3, 15, 25)
    assert patchscaler.upscale(x[None].repeat(2, 1, 1, 1), sampler="none", outscale=3).shape == (2, 3, 18, 30)


def test_outscale_for_arrays_pil_and_alpha(fake_models):
    rgba = np.random.default_rng(0).integers(0, 256, (5, 7, 4), dtype=np.uint8)
    rgba[..., 3] = 77
    out = patchscaler.upscale(rgba, sampler="none", outscale=2)
    assert out.shape == (10, 14, 4) and out.dtype == np.uint8 and np.abs(out[..., 3].astype(int) - 77).max() <= 1
    pil = patchscaler.upscale(Image.fromarray(rgba[..., :3]), sampler="none", outscale=1.5)
    assert pil.size == (10, 8) and pil.mode == "RGB"  # round(7*1.5)=10, round(5*1.5)=8


def test_exact_width_and_height(fake_models):
    x = _img(6, 10)
    assert patchscaler.upscale(x, sampler="none", width=33, height=17).shape == (3, 17, 33)
    assert patchscaler.upscale(x, sampler="none", width=25).shape == (3, 15, 25)  # aspect kept
    assert patchscaler.upscale(x, sampler="none", height=9).shape == (3, 9, 15)
    assert patchscaler.upscale(x, sampler="none", width=40, height=24).shape == (3, 24, 40)  # = x4
    out = patchscaler.upscale([_img(4, 4), _img(2, 8)], sampler="none", width=16)
    assert [o.shape for o in out] == [(3, 16, 16), (3, 4, 16)]


@pytest.mark.parametrize(
    "kwargs,exc,match",
    [
        (dict(outscale=1), ValueError, "outscale must be in \\(1, 4\\]"),
        (dict(outscale=0.5), ValueError, "outscale must be in"),
        (dict(outscale=4.01), ValueError, "outscale must be in"),
        (dict(outscale=float("nan")), ValueError, "outscale must be in"),
        (dict(outscale="2"), TypeError, "outscale must be a number"),
        (dict(outscale=True), TypeError, "outscale must be a number"),
        (dict(outscale=2, width=10), ValueError, "either outscale or width/height"),
        (dict(width=0), ValueError, "width must be a positive int"),
        (dict(height=-3), ValueError, "height must be a positive int"),
        (dict(width=12.5), TypeError, "width must be a positive int"),
        (dict(width=41), ValueError, "larger than ×4"),
        (dict(width=20, height=25), ValueError, "larger than ×4"),
    ],
)
def test_bad_output_sizes(fake_models, kwargs, exc, match):
    with pytest.raises(exc, match=match):
        patchscaler.upscale(_img(6, 10), sampler="none", **kwargs)


def test_cli_outscale_width_height(fake_models, tmp_path, capsys):
    Image.fromarray(np.zeros((6, 10, 3), np.uint8)).save(tmp_path / "a.png")

    def run(*opts):
        return main([str(tmp_path / "a.png"), "-o", str(tmp_path / "o.png"), "--sampler", "none", "-q", *opts])

    assert run("--outscale", "2") == 0 and Image.open(tmp_path / "o.png").size == (20, 12)
    assert run("--width", "30") == 0 and Image.open(tmp_path / "o.png").size == (30, 18)
    assert run("--width", "31", "--height", "13") == 0 and Image.open(tmp_path / "o.png").size == (31, 13)
    groups = tmp_path / "g.png"
    assert run("--outscale", "3", "--save-groups", str(groups)) == 0 and groups.is_file()
    capsys.readouterr()
    (tmp_path / "o.png").unlink()
    for opts, match in [
        (("--outscale", "5"), "--outscale must be in (1, 4]"),
        (("--outscale", "1"), "--outscale must be in (1, 4]"),
        (("--width", "0"), "--width must be a positive int"),
        (("--outscale", "2", "--height", "8"), "either --outscale or --width/--height"),
        (("--width", "41"), "larger than ×4"),
    ]:
        assert run(*opts) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and match in err[0] and not (tmp_path / "o.png").exists(), err
