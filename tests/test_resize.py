"""MATLAB-compatible bicubic: exact match with MATLAB's benchmark LR images + invariants."""

from __future__ import annotations

import math
import os

import numpy as np
import pytest
import torch

from patchscaler.data.images import load_image, list_images
from patchscaler.data.resize import bicubic_downscale, bicubic_upscale, contributions, imresize


def _psnr_uint8(a: torch.Tensor, b: torch.Tensor) -> float:
    mse = ((a * 255).round() - (b * 255).round()).double().pow(2).mean().item()
    return float("inf") if mse == 0 else 10 * math.log10(255.0**2 / mse)


@pytest.mark.parametrize("subset", ["Set5", "Set14"])
def test_matches_matlab_lr(shared_data, subset):
    root = os.path.join(shared_data, "benchmark", "matlab_bicubic_x4", subset)
    hr_paths = list_images(os.path.join(root, "HR"))
    assert hr_paths, f"no HR images under {root}"
    for hr_path in hr_paths:
        lr_path = os.path.join(root, "LR", hr_path.name.replace("_HR", "_LR"))
        hr, lr_ref = load_image(hr_path), load_image(lr_path)
        lr = bicubic_downscale(hr, 4)
        assert lr.shape == lr_ref.shape
        # Whole image (a few border pixels of one Set14 pair differ by up to 10 levels,
        # the HR there was evidently cropped after the LR was made) and interior.
        assert _psnr_uint8(lr, lr_ref) >= 50.0, hr_path.name
        assert _psnr_uint8(lr[:, 1:-1, 1:-1], lr_ref[:, 1:-1, 1:-1]) >= 55.0, hr_path.name


def test_constant_stays_constant():
    x = torch.full((2, 3, 37, 23), 0.3)
    for kwargs in ({"scale": 0.25}, {"scale": 4}, {"size": (11, 50)}, {"scale": 1 / 3}):
        y = imresize(x, **kwargs)
        torch.testing.assert_close(y, torch.full_like(y, 0.3), atol=1e-6, rtol=0)


@pytest.mark.parametrize("hw", [(1, 1), (1, 7), (5, 3), (17, 29), (64, 48)])
def test_shapes(hw):
    h, w = hw
    x = torch.rand(2, 3, h, w)
    assert imresize(x, scale=4).shape == (2, 3, 4 * h, 4 * w)
    assert bicubic_upscale(x, 4).shape == (2, 3, 4 * h, 4 * w)
    assert imresize(x, scale=0.25).shape == (2, 3, math.ceil(h / 4), math.ceil(w / 4))
    assert imresize(x, size=(3, 5)).shape == (2, 3, 3, 5)
    assert imresize(x[0, 0], size=(3, 5)).shape == (3, 5)  # plain [H, W]


def test_scale_one_is_identity():
    x = torch.rand(3, 13, 9)
    torch.testing.assert_close(imresize(x, scale=1.0), x, atol=1e-6, rtol=0)


def test_batched_equals_per_image():
    x = torch.rand(3, 3, 20, 24)
    y = imresize(x, scale=0.25)
    for i in range(3):
        torch.testing.assert_close(y[i], imresize(x[i], scale=0.25), atol=1e-6, rtol=0)


def test_weights_rows_sum_to_one_and_indices_in_range():
    for n_in, n_out, s in [(10, 40, 4.0), (40, 10, 0.25), (7, 3, 3 / 7), (1, 4, 4.0)]:
        idx, w = contributions(n_in, n_out, s)
        np.testing.assert_allclose(w.sum(1), 1.0, atol=1e-12)
        assert idx.min() >= 0 and idx.max() < n_in


def test_downscale_x2_matches_hand_computed_interior():
    # Away from the border, x1/2 MATLAB bicubic of a ramp is the ramp sampled at the
    # centres of 2-pixel blocks (the cubic kernel reproduces linear functions).
    x = torch.arange(32, dtype=torch.float32).repeat(4, 1)
    y = imresize(x, scale=0.5)
    torch.testing.assert_close(y[:, 3:-3], (torch.arange(16.0) * 2 + 0.5)[3:-3].repeat(2, 1), atol=1e-4, rtol=0)


def test_uint8_like_input_rejected():
    with pytest.raises(TypeError):
        imresize(torch.zeros(3, 4, 4, dtype=torch.uint8), scale=2)
