"""The one image conversion (`patchscaler.imaging.convert`): its rounding rule (half up,
MATLAB's im2uint8), exact round trips of integer levels, and that every path that
makes levels (the output buffer, data.images, image files, the API) uses it."""

import numpy as np
import pytest
import torch
from PIL import Image

from patchscaler.data.images import load_image, save_image
from patchscaler.data.resize import quantize
from patchscaler.imaging.convert import (
    peak,
    planes_to_array,
    quantize_levels,
    requantize,
    tensor_to_uint8,
    to_float,
    to_integer,
    to_items,
)
from patchscaler.inference.output_buffer import ArrayOutput


def _float32_ties() -> tuple[np.ndarray, np.ndarray]:
    """float32 x whose x·255 (in float32) is exactly n + 0.5, and those n."""
    n = np.arange(255)
    x = ((n + 0.5) / 255).astype(np.float32)
    tie = x * np.float32(255) == (n + 0.5)
    return x[tie], n[tie]


def test_ties_round_half_up_not_to_even():
    x, n = _float32_ties()
    assert (n % 2 == 0).any(), "no tie where half up and half to even differ: the test would prove nothing"
    assert np.array_equal(to_integer(x, np.uint8), (n + 1).astype(np.uint8))
    # torch.round (half to even) would give n for even n: the rule the module replaced in data.images.
    t = torch.from_numpy(x)
    assert np.array_equal(tensor_to_uint8(t[None, None, :])[0], (n + 1).astype(np.uint8))
    assert torch.equal(quantize_levels(t) * 255, torch.from_numpy((n + 1).astype(np.float32)))
    assert not torch.equal((t * 255).round(), torch.from_numpy((n + 1).astype(np.float32)))


def test_clamps_and_peaks():
    x = np.array([-0.5, 0.0, 1.0, 1.5], np.float32)
    assert to_integer(x, np.uint8).tolist() == [0, 0, 255, 255]
    assert to_integer(x, np.uint16).tolist() == [0, 0, 65535, 65535]
    assert peak(np.uint8) == 255.0 and peak(np.uint16) == 65535.0 and peak(np.float32) is None
    with pytest.raises(TypeError, match="uint8 or uint16"):
        to_integer(x, np.float32)


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16])
def test_levels_round_trip_exactly(dtype):
    levels = np.arange(int(peak(dtype)) + 1).astype(dtype)
    assert np.array_equal(to_integer(to_float(levels), dtype), levels)
    assert to_float(levels).dtype == np.float32 and to_float(levels).max() == 1.0


def test_requantize_uint16_to_uint8_is_the_nearest_level():
    a = np.arange(65536).astype(np.uint16)
    got = requantize(a, np.uint8).astype(np.int64)
    # the nearest 8-bit level of a/65535, computed exactly in integers (no float error)
    want = (a.astype(np.int64) * 255 * 2 + 65535) // (2 * 65535)
    assert np.array_equal(got, want)
    u8 = np.arange(256).astype(np.uint8)
    assert requantize(u8, np.uint8) is u8


def test_planes_to_array_layout_and_float_cast():
    planes = torch.rand(3, 5, 7)
    out = planes_to_array(planes, np.uint8)
    assert out.shape == (5, 7, 3) and out.dtype == np.uint8
    assert np.array_equal(out, to_integer(planes.permute(1, 2, 0).numpy(), np.uint8))
    f = planes_to_array(planes * 2 - 0.5, np.float16)
    assert f.dtype == np.float16 and f.min() >= 0 and f.max() <= 1


def test_every_level_maker_agrees(tmp_path):
    """Output buffer, data.images.save_image, data.resize.quantize and the API's array path
    give the same levels for the same floats (ties included)."""
    x, _ = _float32_ties()
    rows = torch.from_numpy(np.stack([x, x[::-1], x]))[:, None, :]  # [3, 1, W]
    buf = ArrayOutput(1, rows.shape[-1], np.uint8)
    buf.write(0, rows)
    want = to_integer(rows.permute(1, 2, 0).numpy(), np.uint8)
    assert np.array_equal(buf.array, want)
    save_image(rows, tmp_path / "a.png")
    assert np.array_equal(np.asarray(Image.open(tmp_path / "a.png")), want)
    assert torch.equal((quantize(rows) * 255).to(torch.uint8).permute(1, 2, 0), torch.from_numpy(want))
    assert torch.allclose(load_image(tmp_path / "a.png"), torch.from_numpy(want).permute(2, 0, 1).float() / 255)


def test_to_items_keeps_alpha_and_kind():
    rgba = np.random.default_rng(0).integers(0, 65536, (4, 6, 4)).astype(np.uint16)
    (item,), packing = to_items(rgba, "x")
    assert packing == "single"
    assert item.rgb.shape == (3, 4, 6) and item.alpha.shape == (1, 4, 6)
    assert torch.equal(item.alpha[0], torch.from_numpy(to_float(rgba[..., 3])))
    out = item.restore(item.output(4, 6), item.alpha)  # colour left unwritten: only alpha is checked
    assert out.dtype == np.uint16 and np.array_equal(out[..., 3], rgba[..., 3])  # alpha levels survive exactly
    items, packing = to_items([torch.rand(3, 2, 2), Image.new("L", (3, 2))], "x")
    assert packing == "list" and [tuple(i.rgb.shape) for i in items] == [(3, 2, 2), (3, 2, 3)]
