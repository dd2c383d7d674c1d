"""``patchscaler.upscale``: every input kind in and the same kind out, determinism, the
default-sampler rule, and a clear error for every bad argument.

The shipped weights are replaced by tiny weight files in a temporary weights root
(`fake_models`), so these tests run (not skip) without the real weights;
`test_shipped_grm` covers the real files."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from PIL import Image

import patchscaler
import patchscaler.api as api
import patchscaler.inference.pipeline as pipeline
from patchscaler import checkpoints
from patchscaler.data.resize import bicubic_upscale
from patchscaler.inference.pipeline import GroupMap, WeightsNotAvailableError

from helpers import OTHER_SET, banded_image, write_model_set
from patchscaler.checkpoints import DEFAULT_MODEL


def _u8(h, w, c, seed=0):
    rng = np.random.default_rng(seed)
    shape = (h, w) if c is None else (h, w, c)
    return rng.integers(0, 256, size=shape, dtype=np.uint8)


# --------------------------------------------------------------------- input kinds


def test_tensor_single_and_batch_keep_dtype_and_device(fake_models):
    x = banded_image(6, 9)
    y = patchscaler.upscale(x, sampler="none")
    assert y.shape == (3, 24, 36) and y.dtype == torch.float32 and y.device == x.device
    yb = patchscaler.upscale(torch.stack([x, x]).double(), sampler="none")
    assert yb.shape == (2, 3, 24, 36) and yb.dtype == torch.float64
    torch.testing.assert_close(yb[1].float(), y, atol=1e-6, rtol=0)
    yh = patchscaler.upscale(x.half(), sampler="none")
    assert yh.dtype == torch.float16
    assert 0 <= float(y.min()) and float(y.max()) <= 1


def test_slightly_out_of_range_input_is_accepted(fake_models):
    x = banded_image(4, 4)
    x[0, 0, 0] = -5e-4
    x[1, 0, 0] = 1 + 5e-4
    assert patchscaler.upscale(x, sampler="none").shape == (3, 16, 16)


@pytest.mark.parametrize("channels", [None, 1, 2, 3, 4])
def test_uint8_arrays(fake_models, channels):
    a = _u8(5, 7, channels)
    out = patchscaler.upscale(a, sampler="none")
    expected_shape = (20, 28) if channels is None else (20, 28, channels)
    assert out.shape == expected_shape and out.dtype == np.uint8
    if channels in (2, 4):
        # Alpha is upscaled on its own with bicubic, not by the model.
        alpha = torch.from_numpy(a[..., -1].astype(np.float32) / 255)[None]
        expected = np.floor(bicubic_upscale(alpha, 4).clamp(0, 1)[0].numpy() * 255 + 0.5)
        np.testing.assert_array_equal(out[..., -1], expected.astype(np.uint8))


def test_grey_input_gives_grey_output_close_to_rgb_path(fake_models):
    grey = _u8(6, 6, None)
    out = patchscaler.upscale(grey, sampler="none")
    rgb = patchscaler.upscale(np.repeat(grey[..., None], 3, axis=2), sampler="none")
    assert np.abs(out.astype(int) - rgb.astype(float).mean(2).round().astype(int)).max() <= 1


def test_uint16_and_float_arrays(fake_models):
    a16 = (np.random.default_rng(1).random((4, 5, 3)) * 65535).astype(np.uint16)
    out16 = patchscaler.upscale(a16, sampler="none")
    assert out16.dtype == np.uint16 and out16.shape == (16, 20, 3)
    af = a16.astype(np.float32) / 65535
    outf = patchscaler.upscale(af, sampler="none")
    assert outf.dtype == np.float32 and np.abs(outf * 65535 - out16).max() <= 1.0


@pytest.mark.parametrize(
    "mode,out_mode",
    [("RGB", "RGB"), ("L", "L"), ("RGBA", "RGBA"), ("LA", "LA"), ("P", "RGB"), ("1", "L"),
     ("I;16", "I;16"), ("I", "I"), ("F", "F"), ("CMYK", "RGB")],
)
def test_pil_images(fake_models, mode, out_mode):
    im = Image.fromarray(_u8(6, 5, 3)).convert(mode)
    out = patchscaler.upscale(im, sampler="none")
    assert isinstance(out, Image.Image)
    assert out.mode == out_mode and out.size == (20, 24)


def test_pil_palette_with_transparency_keeps_alpha(fake_models):
    im = Image.fromarray(_u8(4, 4, 3)).convert("P")
    im.info["transparency"] = 0
    assert patchscaler.upscale(im, sampler="none").mode == "RGBA"


def test_list_of_mixed_kinds_and_sizes(fake_models):
    items = [banded_image(4, 6), _u8(3, 3, 3), Image.fromarray(_u8(2, 5, None))]
    out, groups = patchscaler.upscale(items, sampler="none", return_groups=True)
    assert isinstance(out, list) and len(out) == len(groups) == 3
    assert out[0].shape == (3, 16, 24)
    assert out[1].shape == (12, 12, 3)
    assert out[2].size == (20, 8) and out[2].mode == "L"
    assert all(isinstance(g, GroupMap) for g in groups)


# ------------------------------------------------------------------- sampling, seeds


def test_pgs_deterministic_regardless_of_batch_and_chunks(fake_models):
    a, b = banded_image(18, 20, 1), banded_image(18, 20, 2)
    alone = patchscaler.upscale(a, sampler="pgs", seed=5)
    in_batch = patchscaler.upscale(torch.stack([b, a]), sampler="pgs", seed=5, max_batch_patches=1)
    in_list = patchscaler.upscale([banded_image(7, 7), a], sampler="pgs", seed=5, max_batch_patches=2)
    torch.testing.assert_close(in_batch[1], alone, atol=1e-5, rtol=0)
    torch.testing.assert_close(in_list[1], alone, atol=1e-5, rtol=0)
    assert (patchscaler.upscale(a, sampler="pgs", seed=6) - alone).abs().max() > 1e-4


def test_return_groups(fake_models):
    x = banded_image(20, 36)
    out, gmap = patchscaler.upscale(x, sampler="pgs", return_groups=True)
    assert isinstance(gmap, GroupMap) and gmap.sampler == "pgs"
    assert set(gmap.group.tolist()) == {0, 1, 2}
    out_u, gmap_u = patchscaler.upscale(x, sampler="uniform", return_groups=True)
    assert gmap_u.sampler == "uniform" and gmap_u.evaluations > gmap.evaluations
    outs, gmaps = patchscaler.upscale(torch.stack([x, x]), sampler="none", return_groups=True)
    assert outs.shape == (2, 3, 80, 144) and len(gmaps) == 2 and not gmaps[0].sampled


def test_default_sampler_falls_back_to_none_with_one_warning(fake_models):
    x = banded_image(5, 5)
    with pytest.warns(UserWarning, match="sampler='none'"):
        y = patchscaler.upscale(x)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        y2 = patchscaler.upscale(x)  # warned once per process, not every call
    torch.testing.assert_close(y, patchscaler.upscale(x, sampler="none"))
    torch.testing.assert_close(y2, y)
    fake_models["pgs_available"] = True
    _, gmap = patchscaler.upscale(x, return_groups=True)
    assert gmap.sampler == "pgs"


def test_models_load_once_per_setting(fake_models):
    x = banded_image(4, 4)
    for _ in range(3):
        patchscaler.upscale(x, sampler="none")
    patchscaler.upscale(x, sampler="pgs")
    assert fake_models["grm_loads"] == 2  # one pipeline per sampler, GRM cached by load_grm in real use
    assert api.get_pipeline("none") is api.get_pipeline("none")


@pytest.mark.parametrize("dtype", [torch.bfloat16, "bf16", torch.float16, "fp16"])
def test_low_precision_dtype(fake_models, dtype):
    x = banded_image(8, 8)
    ref = patchscaler.upscale(x, sampler="none")
    y = patchscaler.upscale(x, sampler="none", dtype=dtype)
    assert y.dtype == torch.float32
    assert (y - ref).abs().max() < 0.05


def test_explicit_cpu_device(fake_models):
    y = patchscaler.upscale(_u8(3, 3, 3), sampler="none", device="cpu")
    assert y.shape == (12, 12, 3)


# ------------------------------------------------------------------------- errors


@pytest.mark.parametrize(
    "x,exc,match",
    [
        (torch.rand(4, 5, 5), ValueError, "3 \\(RGB\\) channels"),
        (torch.rand(1, 1, 3, 5, 5), ValueError, "shape \\[3, H, W\\]"),
        (torch.rand(5, 5), ValueError, "shape \\[3, H, W\\]"),
        (torch.rand(3, 0, 5), ValueError, "empty"),
        (torch.rand(0, 3, 5, 5), ValueError, "empty batch"),
        (torch.rand(3, 5, 5) * 2, ValueError, "values in \\[0, 1\\]"),
        (torch.rand(3, 5, 5) - 0.5, ValueError, "values in \\[0, 1\\]"),
        (torch.full((3, 2, 2), float("nan")), ValueError, "NaN"),
        (torch.full((3, 2, 2), float("inf")), ValueError, "NaN or infinite"),
        (torch.zeros(3, 2, 2, dtype=torch.uint8), TypeError, "float tensor"),
        (np.zeros((4, 5, 5), np.uint8), ValueError, "channels last"),
        (np.zeros((0, 5, 3), np.uint8), ValueError, "empty"),
        (np.zeros((4, 5, 3), np.int32), TypeError, "uint8, uint16 or float"),
        (np.full((4, 5, 3), 2.0, np.float32), ValueError, "values in \\[0, 1\\]"),
        ("image.png", TypeError, "torch.Tensor, PIL.Image.Image"),
        ([], ValueError, "empty list"),
        ([torch.rand(2, 3, 4, 4)], ValueError, "batch"),
    ],
)
def test_bad_inputs_name_the_argument(fake_models, x, exc, match):
    with pytest.raises(exc, match=match) as info:
        patchscaler.upscale(x, sampler="none")
    assert str(info.value).startswith("x")


@pytest.mark.parametrize(
    "kwargs,exc,match",
    [
        (dict(scale=2), ValueError, "only scale=4 .*future work"),
        (dict(scale=4.5), ValueError, "scale must be an integer"),
        (dict(sampler="ddpm"), ValueError, "sampler must be one of"),
        (dict(seed="0"), TypeError, "seed must be an int"),
        (dict(device="tpu9"), ValueError, "device"),
        (dict(dtype=torch.int8), ValueError, "dtype"),
        (dict(dtype="fp8"), ValueError, "dtype"),
        (dict(max_batch_patches=0), ValueError, "max_batch_patches"),
        (dict(max_output_megapixels=0.01), ValueError, "max_output_megapixels=0.01"),
        (dict(max_output_megapixels=0), ValueError, "max_output_megapixels must be a positive number"),
        (dict(max_output_megapixels=-3.0), ValueError, "max_output_megapixels must be a positive number"),
    ],
)
def test_bad_options(fake_models, kwargs, exc, match):
    with pytest.raises(exc, match=match):
        patchscaler.upscale(banded_image(30, 30), **{"sampler": "none", **kwargs})


def test_size_limit_can_be_raised(fake_models):
    x = banded_image(30, 30)  # 120x120 out = 0.0144 MP
    with pytest.raises(ValueError, match="MP"):
        patchscaler.upscale(x, sampler="none", max_output_megapixels=0.01)
    assert patchscaler.upscale(x, sampler="none", max_output_megapixels=None).shape == (3, 120, 120)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-CUDA message")
def test_cuda_without_cuda(fake_models):
    with pytest.raises(ValueError, match="CUDA is not available"):
        patchscaler.upscale(banded_image(3, 3), sampler="none", device="cuda")


# ------------------------------------------------------------------ shipped weights


def test_shipped_grm():
    """With the shipped GRM: a sane ×4 of the bundled example. Without it: a clear error."""
    from patchscaler.examples import example_path

    lr = Image.open(example_path()).convert("RGB").crop((0, 0, 24, 24))
    if not checkpoints.weights_file("grm").is_file():
        with pytest.raises(WeightsNotAvailableError, match="GRM weights"):
            patchscaler.upscale(lr, sampler="none")
        return
    out = patchscaler.upscale(lr, sampler="none")
    assert out.size == (96, 96)
    # Close to bicubic on average (the GRM adds detail, it does not repaint the image).
    bic = np.asarray(lr.resize((96, 96), Image.BICUBIC)).astype(float)
    assert np.abs(np.asarray(out).astype(float) - bic).mean() < 12


def test_progress_bars(fake_models, capsys):
    x = banded_image(20, 20)
    y = patchscaler.upscale(x, sampler="pgs", progress=True)
    assert y.shape == (3, 80, 80)
    assert "pgs denoising" in capsys.readouterr().err


def test_quality_preset_reaches_the_sampler_and_is_checked(fake_models):
    x = torch.rand(3, 8, 8)
    patchscaler.upscale(x, sampler="pgs", quality="fast")
    assert fake_models["qualities"][-1] == "fast"
    patchscaler.upscale(x, sampler="pgs")
    assert fake_models["qualities"][-1] == "balanced"
    with pytest.raises(ValueError, match="quality must be one of"):
        patchscaler.upscale(x, sampler="pgs", quality="max")


@pytest.mark.parametrize("sampler", ["none", "uniform"])
def test_quality_named_for_a_sampler_without_presets_is_refused(fake_models, sampler):
    """A preset asked of a sampler that has none would give the same image under any
    name: refused, by upscale() and check_options() alike; left out (None), it runs."""
    from patchscaler.api import check_options

    x = torch.rand(3, 8, 8)
    for call in (lambda **kw: patchscaler.upscale(x, **kw), check_options):
        with pytest.raises(ValueError, match=rf"sampler is '{sampler}'.*which has none"):
            call(sampler=sampler, quality="detail")
    assert patchscaler.upscale(x, sampler=sampler).shape == (3, 32, 32)
    assert patchscaler.upscale(x, sampler=sampler, quality=None).shape == (3, 32, 32)


def test_quality_presets_with_the_shipped_models():
    """fast < balanced < detail in DiT evaluations on the bundled example (real weights)."""
    from patchscaler.examples import example_path
    from PIL import Image

    img = Image.open(example_path("bicubic"))
    evals = {}
    for q in ("fast", "balanced", "detail"):
        out, groups = patchscaler.upscale(img, model="bicubic", sampler="pgs", quality=q, return_groups=True)
        assert out.size == (512, 512)
        evals[q] = groups.evaluations
    assert evals["fast"] < evals["balanced"] < evals["detail"]


def test_info_reports_build_and_shipped_weights(capsys):
    from patchscaler.command import info

    d = info.build_info()
    assert set(d["op_kernels"]) >= {"gather_patches", "blend_patches", "group_denoise_step", "topk_retrieve"}
    assert all(d["op_kernels"][op]["cpu"] for op in d["op_kernels"])
    assert set(d["weights"]["bicubic"]) == {"grm", "dit", "rtm", "pgs"}
    assert all(v.endswith("kB") for v in d["weights"]["bicubic"].values())  # everything ships
    # Every registered sampler runs with the shipped set (the list is the registry's, so a new
    # sampler file does not edit this test).
    from patchscaler.sampling.registry import SAMPLERS

    assert d["samplers"]["bicubic"] == list(SAMPLERS) and d["default_model"] == DEFAULT_MODEL
    assert d["samplers"]["bicubic"][:3] == ["pgs", "uniform", "none"]
    info.main([])
    out = capsys.readouterr().out
    assert "weights (shipped):" in out and f"  bicubic   {', '.join(SAMPLERS)}" in out
    # The torch-free part comes first: the weights before the torch version.
    assert out.index("weights (shipped):") < out.index("\ntorch ")


# ------------------------------------------------------------------------ model sets


def test_model_sets_are_chosen_by_name_and_checked(fake_models):
    x = banded_image(6, 6)
    other = OTHER_SET
    write_model_set(fake_models.root, other, dit=False)  # a partial set: only its GRM
    assert patchscaler.upscale(x, model=other, sampler="none").shape == (3, 24, 24)
    with pytest.raises(WeightsNotAvailableError, match=rf"sampler 'pgs' needs .*dit_x4\.safetensors.*'{other}'"):
        patchscaler.upscale(x, model=other, sampler="pgs")
    with pytest.raises(ValueError, match="model must be one of 'real', 'bicubic'"):
        patchscaler.upscale(x, model="realistic")
    with pytest.raises(ValueError, match="model must be one of"):
        patchscaler.upscale(x, model=None)


def test_a_missing_model_set_fails_with_what_there_is(fake_models):
    with pytest.raises(WeightsNotAvailableError, match=rf"model set '{OTHER_SET}' .*not in this install.*'{DEFAULT_MODEL}'"):
        patchscaler.upscale(banded_image(4, 4), model=OTHER_SET, sampler="none")


def test_a_set_names_its_own_default_sampler(weights_dir):
    """A set whose set.json says default_sampler "none" upscales with its GRM alone, without the
    fallback warning, even when it has the PGS weights; an absent manifest keeps the old rule."""
    import json

    from patchscaler.checkpoints import set_manifest

    folder = write_model_set(weights_dir, "real", dit=True)
    assert set_manifest("real") == {} and api.default_sampler("real") == "pgs"
    (folder / "set.json").write_text(json.dumps({"description": "test", "degradation": "real", "default_sampler": "none"}))
    assert set_manifest("real")["degradation"] == "real"
    x = banded_image(5, 5)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        _, gmap = patchscaler.upscale(x, model="real", return_groups=True)
    assert not gmap.sampled
    (folder / "set.json").write_text("[1, 2]")
    with pytest.raises(ValueError, match="JSON object"):
        set_manifest("real")


def test_shipped_sets_describe_themselves():
    from patchscaler.checkpoints import MODEL_SETS, PACKAGE_WEIGHTS, set_manifest

    for name in MODEL_SETS:
        m = set_manifest(name, PACKAGE_WEIGHTS)
        assert m["degradation"] == name and m["description"] and m["default_sampler"] in ("none", "pgs")
