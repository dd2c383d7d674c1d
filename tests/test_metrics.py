"""Metrics (patchscaler/metrics): known values, invariants and independent references."""

from __future__ import annotations

import math
import os

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import patchscaler.metrics.niqe as niqe_module
from patchscaler.data.images import load_image
from patchscaler.data.resize import imresize
from patchscaler.metrics.confidence import confidence_error_spearman, patch_confidence_and_mse, spearman
from patchscaler.metrics.hf_ratio import hf_ratio
from patchscaler.metrics.niqe import niqe
from patchscaler.metrics.psnr import psnr_y
from patchscaler.metrics.ssim import gaussian_taps, ssim_map, ssim_y
from patchscaler.metrics.ycbcr import quantize_uint8, y_channel


@pytest.fixture(autouse=True)
def _one_thread():
    # The machine has 2 cores shared with training jobs; float64 ops oversubscribe badly.
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _smooth_image(h: int, w: int, seed: int = 0) -> torch.Tensor:
    """A [3,h,w] image in [0,1] with structure at all scales (upsampled noise octaves)."""
    g = torch.Generator().manual_seed(seed)
    img = torch.zeros(1, 3, h, w)
    for k in (2, 4, 8, 16):
        n = torch.rand(1, 3, max(1, h // k), max(1, w // k), generator=g)
        img += F.interpolate(n, size=(h, w), mode="bilinear", align_corners=False) / 4
    return img[0].clamp(0, 1)


@pytest.fixture(scope="module")
def natural_crop(shared_data) -> torch.Tensor:
    """288×288 crop of Set5 baby (9 NIQE blocks), float [3,H,W]."""
    img = load_image(os.path.join(shared_data, "benchmark", "Set5", "HR", "baby.png"))
    return img[:, 100:388, 100:388].contiguous()


# --- Y channel and PSNR ---------------------------------------------------------------


def test_y_channel_bt601_values():
    img = torch.zeros(3, 1, 5)
    img[:, 0, 1] = 1.0  # white
    img[0, 0, 2] = 1.0  # red
    img[1, 0, 3] = 1.0  # green
    img[2, 0, 4] = 1.0  # blue
    y = y_channel(img)[0]
    expected = torch.tensor([16.0, 235.0, 16 + 65.481, 16 + 128.553, 16 + 24.966], dtype=torch.float64)
    torch.testing.assert_close(y, expected)


def test_quantize_rounds_half_away_and_clamps():
    x = torch.tensor([-0.2, 0.5 / 255, 1.5 / 255, 254.49 / 255, 1.3]).view(1, 1, 5).expand(3, 1, 5)
    assert quantize_uint8(x)[0, 0].tolist() == [0, 1, 2, 254, 255]
    u8 = torch.randint(0, 256, (1, 3, 4, 4), dtype=torch.uint8)
    assert torch.equal(quantize_uint8(u8), u8[0])


def test_psnr_identical_is_inf():
    x = _smooth_image(32, 40)
    assert psnr_y(x, x, 4) == math.inf
    # Differences that vanish when quantising to uint8 do not count.
    q = torch.floor(x * 255 + 0.5) / 255
    assert psnr_y(q + 0.2 / 255, q, 0) == math.inf


def test_psnr_known_mse():
    hr = torch.full((3, 20, 20), 100 / 255)
    sr = torch.full((3, 20, 20), 110 / 255)
    # +10 grey levels on R, G and B move Y by 10·219/255 (studio swing) ...
    expected = 10 * math.log10(255**2 / (10 * 219 / 255) ** 2)
    assert psnr_y(sr, hr) == pytest.approx(expected, abs=1e-9)
    # ... and by exactly 10 on full-range grey: 20·log10(25.5) = 28.13 dB.
    assert psnr_y(sr, hr, grey=True) == pytest.approx(20 * math.log10(25.5), abs=1e-9)


def test_psnr_known_mse_partial_and_border_crop():
    hr = _smooth_image(24, 24)
    sr = hr.clone()
    sr[:, :2, :] = 1.0 - sr[:, :2, :]  # damage only the top 2 rows
    assert psnr_y(sr, hr, crop_border=2) == math.inf
    assert psnr_y(sr, hr, crop_border=0) < 40
    # Half of the pixels off by +20 levels in all channels: MSE = (20·219/255)²/2.
    hr = torch.full((3, 10, 10), 50 / 255)
    sr = hr.clone()
    sr[:, :5, :] = 70 / 255
    assert psnr_y(sr, hr) == pytest.approx(10 * math.log10(255**2 / ((20 * 219 / 255) ** 2 / 2)), abs=1e-9)


def test_psnr_accepts_batch_of_one_and_rejects_mismatch():
    x = _smooth_image(16, 16)
    assert psnr_y(x[None], x, 0) == math.inf
    with pytest.raises(ValueError):
        psnr_y(x, x[:, :8], 0)
    with pytest.raises(ValueError):
        psnr_y(torch.stack([x, x]), torch.stack([x, x]), 0)


# --- SSIM -------------------------------------------------------------------------------


def test_ssim_identical_is_one():
    x = _smooth_image(40, 48)
    assert ssim_y(x, x, 4) == pytest.approx(1.0, abs=1e-12)


def test_ssim_decreases_with_noise():
    x = _smooth_image(48, 48)
    g = torch.Generator().manual_seed(1)
    noise = torch.randn(x.shape, generator=g)
    scores = [ssim_y((x + s * noise).clamp(0, 1), x, 4) for s in (0.01, 0.03, 0.1)]
    assert 1.0 > scores[0] > scores[1] > scores[2] > 0


def test_ssim_map_matches_direct_2d_convolution():
    g = torch.Generator().manual_seed(2)
    a = torch.rand(30, 37, generator=g, dtype=torch.float64) * 255
    b = (a + 20 * torch.randn(30, 37, generator=g, dtype=torch.float64)).clamp(0, 255)
    taps = gaussian_taps()
    win = torch.outer(taps, taps).view(1, 1, 11, 11)

    def filt(x):
        return F.conv2d(x.view(1, 1, *x.shape), win)[0, 0]

    mu_a, mu_b = filt(a), filt(b)
    va, vb, cov = filt(a * a) - mu_a**2, filt(b * b) - mu_b**2, filt(a * b) - mu_a * mu_b
    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    ref = (2 * mu_a * mu_b + c1) * (2 * cov + c2) / ((mu_a**2 + mu_b**2 + c1) * (va + vb + c2))
    torch.testing.assert_close(ssim_map(a, b), ref, atol=1e-12, rtol=0)
    assert gaussian_taps().sum().item() == pytest.approx(1.0)


# --- high-frequency energy ratio -------------------------------------------------------------


def test_hf_ratio_identity_blur_noise():
    x = _smooth_image(64, 64)
    g = torch.Generator().manual_seed(3)
    x = (x + 0.05 * torch.randn(x.shape, generator=g)).clamp(0, 1)  # give it real high frequencies
    assert hf_ratio(x, x) == pytest.approx(1.0)
    blurred = imresize(imresize(x, scale=0.5), scale=2).clamp(0, 1)
    assert hf_ratio(blurred, x) < 0.5
    noisy = (x + 0.1 * torch.randn(x.shape, generator=g)).clamp(0, 1)
    assert hf_ratio(noisy, x) > 1.0


def test_hf_ratio_frequency_cutoff():
    # A horizontal cosine below half Nyquist has no HF energy; one above has only HF energy.
    w = 64
    xs = torch.arange(w, dtype=torch.float32)
    low = (0.5 + 0.3 * torch.cos(2 * math.pi * 0.125 * xs)).expand(3, 64, w)
    high = (0.5 + 0.3 * torch.cos(2 * math.pi * 0.375 * xs)).expand(3, 64, w)
    from patchscaler.metrics.hf_ratio import hf_energy

    e_low, e_high = hf_energy(y_channel(low)), hf_energy(y_channel(high))
    assert e_low < 1e-3 * e_high
    flat = torch.full((3, 16, 16), 0.5)
    assert hf_ratio(flat, flat) == 1.0


# --- NIQE ---------------------------------------------------------------------------------


def _reference_niqe_features(img: np.ndarray) -> np.ndarray:
    """Straight per-block port of the MATLAB `computefeature` (brute-force AGGD argmin)."""
    from scipy.ndimage import convolve
    from scipy.special import gamma

    def aggd(v):
        v = v.flatten()
        gam = np.arange(0.2, 10.001, 0.001)
        r_gam = gamma(2 / gam) ** 2 / (gamma(1 / gam) * gamma(3 / gam))
        ls, rs = np.sqrt(np.mean(v[v < 0] ** 2)), np.sqrt(np.mean(v[v > 0] ** 2))
        gh = ls / rs
        rhat = np.mean(np.abs(v)) ** 2 / np.mean(v**2)
        rn = rhat * (gh**3 + 1) * (gh + 1) / (gh**2 + 1) ** 2
        a = gam[np.argmin((r_gam - rn) ** 2)]
        s = np.sqrt(gamma(1 / a) / gamma(3 / a))
        return a, ls * s, rs * s

    def feats(block):
        a, bl, br = aggd(block)
        out = [a, (bl + br) / 2]
        for sh in ((0, 1), (1, 0), (1, 1), (1, -1)):
            a, bl, br = aggd(block * np.roll(block, sh, axis=(0, 1)))
            out += [a, (br - bl) * gamma(2 / a) / gamma(1 / a), bl, br]
        return out

    r = np.arange(7) - 3.0
    g = np.exp(-(r**2) / (2 * (7 / 6) ** 2))
    win = np.outer(g, g) / np.outer(g, g).sum()
    nh, nw = img.shape[0] // 96, img.shape[1] // 96
    img = img[: nh * 96, : nw * 96]
    per_scale = []
    for scale in (1, 2):
        mu = convolve(img, win, mode="nearest")
        sigma = np.sqrt(np.abs(convolve(img * img, win, mode="nearest") - mu * mu))
        m = (img - mu) / (sigma + 1)
        b = 96 // scale
        per_scale.append(np.array([feats(m[i * b : (i + 1) * b, j * b : (j + 1) * b]) for i in range(nh) for j in range(nw)]))
        img = imresize(torch.from_numpy(img).float(), scale=0.5).double().numpy()
    return np.concatenate(per_scale, axis=1)


def test_niqe_features_match_reference_port():
    pytest.importorskip("scipy")
    x = _smooth_image(100, 200, seed=4)
    g = torch.Generator().manual_seed(5)
    x = (x + 0.03 * torch.randn(x.shape, generator=g)).clamp(0, 1)
    y = y_channel(x).round()
    ours, sharpness = niqe_module.niqe_features(y)
    assert ours.shape == (2, 36) and sharpness.shape == (2,)
    ref = _reference_niqe_features(y.numpy())
    np.testing.assert_allclose(ours.numpy(), ref, rtol=1e-9, atol=1e-9)


def test_pristine_model_is_shipped():
    from safetensors.torch import load_file

    t = load_file(str(niqe_module.PRISTINE_PATH))
    assert t["mu"].shape == (36,) and t["cov"].shape == (36, 36)
    assert torch.isfinite(t["mu"]).all() and torch.isfinite(t["cov"]).all()
    torch.testing.assert_close(t["cov"], t["cov"].T)
    info = niqe_module.pristine_model_info()
    assert info["command"].startswith("python -m patchscaler.metrics.niqe --fit")
    assert int(info["blocks"]) > 100


def test_niqe_ranks_degradations_and_is_deterministic(natural_crop):
    clean = natural_crop
    blurred = imresize(imresize(clean, scale=0.25), scale=4).clamp(0, 1)
    g = torch.Generator().manual_seed(0)
    noisy = (clean + 0.1 * torch.randn(clean.shape, generator=g)).clamp(0, 1)
    s_clean = niqe(clean)
    assert math.isfinite(s_clean)
    assert niqe(blurred) > s_clean + 1.0
    assert niqe(noisy) > s_clean + 1.0
    assert niqe(clean) == s_clean


def test_niqe_rejects_tiny_images():
    with pytest.raises(ValueError, match="96x96"):
        niqe(torch.rand(3, 95, 200))


def test_niqe_single_block_is_finite():
    x = _smooth_image(96, 96)
    assert math.isfinite(niqe(x))


# --- confidence vs error -----------------------------------------------------------------


def test_spearman_matches_scipy_with_ties():
    stats = pytest.importorskip("scipy.stats")
    g = torch.Generator().manual_seed(6)
    a = torch.randint(0, 20, (300,), generator=g).double()
    b = a + torch.randn(300, generator=g, dtype=torch.float64) * 5
    assert spearman(a, b) == pytest.approx(stats.spearmanr(a.numpy(), b.numpy())[0], abs=1e-12)
    assert spearman(a, -a) == pytest.approx(-1.0)
    assert math.isnan(spearman(torch.ones(5), torch.arange(5.0)))


def test_patch_tiles_include_partial_edges():
    conf = torch.zeros(1, 1, 20, 35)
    conf[..., 16:, :] = 1.0  # the bottom partial row of tiles
    y0 = torch.zeros(1, 48, 20, 35)
    x0 = torch.ones(1, 48, 20, 35)
    c, e = patch_confidence_and_mse(conf, y0, x0, patch=16)
    assert c.shape == (2 * 3,)  # ceil(20/16) x ceil(35/16) tiles
    assert c.tolist() == [0.0, 0.0, 0.0, 1.0, 1.0, 1.0]  # edge tiles are means over real pixels
    assert torch.all(e == 1.0)


def test_confidence_error_spearman_perfect_ranking():
    g = torch.Generator().manual_seed(7)
    x0 = torch.randn(2, 48, 32, 48, generator=g)
    # Error grows tile by tile; confidence falls with it -> rho = -1.
    scale = torch.rand(2, 1, 2, 3, generator=g).repeat_interleave(16, 2).repeat_interleave(16, 3)
    y0 = x0 + scale * torch.randn(x0.shape, generator=g)
    rho, n = confidence_error_spearman([1 - scale, 1 - scale[:1]], [y0, y0[:1]], [x0, x0[:1]])
    assert n == 12 + 6
    assert rho < -0.9


def test_standard_niqe_matches_matlab_on_baboon(shared_data):
    """Standard NIQE (the authors' pristine parameters): MATLAB R2021a's niqe(baboon) is 5.7296."""
    img = load_image(os.path.join(shared_data, "benchmark", "Set14", "HR", "baboon.png"))
    assert niqe(img) == pytest.approx(5.7296, abs=0.01)
    scores = niqe_module.niqe_scores(img)
    assert scores["matlab"] == niqe(img)
    # The project's own pristine fit is a different model: it must not pass for the standard one.
    assert abs(scores["project"] - 5.7296) > 0.1
    assert scores["project"] == niqe(img, pristine="project")


def test_standard_pristine_model_is_shipped_with_its_licence():
    from safetensors.torch import load_file

    path = niqe_module.PRISTINE_MODELS["matlab"]
    t = load_file(str(path))
    assert t["mu"].shape == (36,) and t["cov"].shape == (36, 36) and t["mu"].dtype == torch.float64
    torch.testing.assert_close(t["cov"], t["cov"].T)
    assert "Apache" in niqe_module.pristine_model_info(path)["licence"]
    assert "Apache License" in path.with_name("LICENSE-niqe-matlab-params.txt").read_text()
