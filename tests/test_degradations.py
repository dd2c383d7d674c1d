"""The real-world degradation pipeline: each stage against what it must do, and the whole seeded."""

import io
import math

import numpy as np
import pytest
import torch
from PIL import Image

from patchscaler.data import degradations as D


def _gen(seed=0):
    return torch.Generator().manual_seed(seed)


def _smooth_image(b=2, h=64, w=48, seed=0):
    g = _gen(seed)
    x = torch.rand(b, 3, h // 8, w // 8, generator=g)
    return torch.nn.functional.interpolate(x, size=(h, w), mode="bilinear", align_corners=False)


@pytest.mark.parametrize("size", [7, 13, 21])
def test_gaussian_kernel_matches_closed_form(size):
    k = D.gaussian_kernel(size, 1.7)
    r = torch.arange(size, dtype=torch.float64) - size // 2
    g1 = torch.exp(-(r**2) / (2 * 1.7**2))
    ref = torch.outer(g1, g1)
    ref = (ref / ref.sum()).float()
    torch.testing.assert_close(k, ref, atol=1e-7, rtol=0)


def test_anisotropic_kernel_is_rotated_and_point_symmetric():
    k0 = D.gaussian_kernel(21, 3.0, 0.5, 0.0)  # long along x
    k90 = D.gaussian_kernel(21, 3.0, 0.5, math.pi / 2)  # long along y
    torch.testing.assert_close(k90, k0.T, atol=1e-7, rtol=0)
    assert k0[10, 15] > k0[15, 10]
    torch.testing.assert_close(k0, k0.flip(0, 1))


@pytest.mark.parametrize(
    "fn", [lambda: D.generalized_gaussian_kernel(15, 2.0, 1.0, 0.3, 0.6), lambda: D.plateau_kernel(15, 2.0, 1.0, 0.3, 1.5)]
)
def test_family_kernels_sum_to_one_peak_at_centre(fn):
    k = fn()
    assert abs(float(k.sum()) - 1) < 1e-5
    assert int(k.argmax()) == 7 * 15 + 7
    assert (k >= 0).all()


def test_generalized_beta_shapes_tails():
    heavy = D.generalized_gaussian_kernel(21, 2.0, 2.0, 0.0, 0.5)
    flat = D.generalized_gaussian_kernel(21, 2.0, 2.0, 0.0, 4.0)
    assert heavy[10, 20] > flat[10, 20]  # beta < 1: more mass far out


def test_sinc_kernel_is_lowpass_with_ringing():
    k = D.sinc_kernel(21, math.pi / 3)
    assert abs(float(k.sum()) - 1) < 1e-5
    assert (k < 0).any()  # the ringing lobes
    # Frequency response: passes DC, attenuates high frequencies.
    spec = torch.fft.fft2(k.double()).abs()
    assert spec[0, 0] == pytest.approx(1.0, abs=1e-6)
    assert spec[10, 10] < 0.1
    padded = D.sinc_kernel(9, math.pi / 2, pad_to=21)
    assert padded.shape == (21, 21) and padded[:6].abs().sum() == 0


def test_random_blur_kernel_draws_every_kind_and_is_seeded():
    cfg = D.BlurConfig()
    ks = [D.random_blur_kernel(cfg, _gen(i)) for i in range(60)]
    assert all(k.shape == (21, 21) for k in ks)
    assert all(abs(float(k.sum()) - 1) < 1e-4 for k in ks)
    assert len({tuple(k.flatten()[::37].tolist()) for k in ks}) == 60
    torch.testing.assert_close(D.random_blur_kernel(cfg, _gen(3)), ks[3])


def test_blur_applies_each_samples_own_kernel():
    x = torch.rand(3, 3, 17, 23, generator=_gen(1))
    kernels = torch.stack([D.random_blur_kernel(D.BlurConfig(), _gen(i)) for i in range(3)])
    out = D.blur(x, kernels)
    for i in range(3):
        xp = torch.nn.functional.pad(x[i : i + 1], (10, 10, 10, 10), mode="reflect")
        ref = torch.nn.functional.conv2d(xp, kernels[i].expand(3, 1, 21, 21), groups=3)
        torch.testing.assert_close(out[i : i + 1], ref, atol=1e-5, rtol=1e-5)
    pulse = torch.zeros(1, 21, 21)
    pulse[0, 10, 10] = 1
    torch.testing.assert_close(D.blur(x[:1], pulse), x[:1])
    # An image smaller than the kernel still works (replicate borders).
    assert D.blur(torch.rand(1, 3, 5, 4), kernels[:1]).shape == (1, 3, 5, 4)


def test_resize_modes_and_errors():
    x = torch.rand(2, 3, 20, 30)
    for mode in D.RESIZE_MODES:
        assert D.resize(x, (7, 11), mode).shape == (2, 3, 7, 11)
    with pytest.raises(ValueError, match="resize mode"):
        D.resize(x, (7, 11), "nearest")


def test_gaussian_noise_sigma_and_grey():
    x = torch.full((2, 3, 128, 128), 0.5)
    out = D.gaussian_noise(x, torch.tensor([10 / 255, 20 / 255]), torch.tensor([False, True]), _gen())
    n = out - x
    assert n[0].std().item() == pytest.approx(10 / 255, rel=0.05)
    assert n[1].std().item() == pytest.approx(20 / 255, rel=0.05)
    torch.testing.assert_close(n[1, 0], n[1, 2])  # grey: same noise in every channel
    assert not torch.allclose(n[0, 0], n[0, 2])


def test_poisson_noise_grows_with_brightness_and_scale():
    x = torch.cat([torch.full((1, 3, 96, 96), 0.1), torch.full((1, 3, 96, 96), 0.8)], -1)
    out = D.poisson_noise(x, torch.tensor([1.0]), torch.tensor([False]), _gen())
    n = out - x
    assert n[..., :96].std() < n[..., 96:].std()  # shot noise ~ sqrt(signal)
    out2 = D.poisson_noise(x, torch.tensor([2.0]), torch.tensor([False]), _gen())
    assert (out2 - x).std() == pytest.approx(2 * n.std().item(), rel=1e-5)


def test_jpeg_matches_pillow_and_quality_orders_error():
    x = _smooth_image(2, 64, 64) + 0.05 * torch.rand(2, 3, 64, 64, generator=_gen(2))
    x = x.clamp(0, 1)
    out = D.jpeg(x, torch.tensor([20, 95]))
    arr = (x[0] * 255).round().byte().permute(1, 2, 0).numpy()
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="JPEG", quality=20)
    ref = torch.from_numpy(np.asarray(Image.open(io.BytesIO(buf.getvalue())).convert("RGB")).copy())
    torch.testing.assert_close(out[0], ref.permute(2, 0, 1).float() / 255)
    err = (out - x).abs().flatten(1).mean(1)
    assert err[0] > err[1]


def test_degrade_shape_range_levels_and_seed():
    hr = _smooth_image(3, 64, 48)
    a = D.degrade(hr, generator=_gen(7))
    b = D.degrade(hr, generator=_gen(7))
    c = D.degrade(hr, generator=_gen(8))
    assert a.shape == (3, 3, 16, 12) and a.dtype == torch.float32
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert a.min() >= 0 and a.max() <= 1
    torch.testing.assert_close(a * 255, (a * 255).round(), atol=1e-4, rtol=0)  # 8-bit levels


def test_degrade_is_worse_than_bicubic_downscaling():
    from patchscaler.data.resize import bicubic_downscale

    hr = _smooth_image(4, 96, 96, seed=3) + 0.1 * torch.rand(4, 3, 96, 96, generator=_gen(4))
    hr = hr.clamp(0, 1)
    clean = bicubic_downscale(hr, 4)
    mses = [float(((D.degrade(hr, generator=_gen(s)) - clean) ** 2).mean()) for s in range(4)]
    assert max(mses) > 1e-4


def test_degrade_rejects_bad_input():
    with pytest.raises(ValueError, match="multiple of the scale"):
        D.degrade(torch.rand(1, 3, 30, 32))
    with pytest.raises(ValueError, match=r"\[B,3,H,W\]"):
        D.degrade(torch.rand(3, 32, 32))


def test_degrade_image_is_fixed_per_name():
    hr = _smooth_image(1, 32, 32)[0]
    a = D.degrade_image(hr, "x.png")
    assert torch.equal(a, D.degrade_image(hr, "x.png"))
    assert not torch.equal(a, D.degrade_image(hr, "y.png"))
    assert not torch.equal(a, D.degrade_image(hr, "x.png", seed=1))
    assert D.image_seed("x.png") == D.image_seed("x.png")


def test_config_defaults_are_real_esrgan_x4plus():
    cfg = D.DegradationConfig()
    assert cfg.first.resize_range == (0.15, 1.5) and cfg.second.resize_range == (0.3, 1.2)
    assert cfg.first.noise_sigma == (1.0, 30.0) and cfg.second.noise_sigma == (1.0, 25.0)
    assert cfg.second.blur_prob == 0.8 and cfg.final_sinc_prob == 0.8
    assert cfg.first.blur.sizes == (7, 9, 11, 13, 15, 17, 19, 21)
