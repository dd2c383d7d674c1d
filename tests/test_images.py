"""Image I/O: modes, bit depths, errors, listing and modcrop."""

from __future__ import annotations

import struct
import zlib

import numpy as np
import pytest
import torch
from PIL import Image

from patchscaler.data.images import list_images, load_image, modcrop, save_image


def test_rgb_round_trip(tmp_path):
    x = torch.rand(3, 7, 5)
    save_image(x, tmp_path / "a.png")
    y = load_image(tmp_path / "a.png")
    assert y.shape == (3, 7, 5) and y.dtype == torch.float32
    torch.testing.assert_close(y, (x * 255).round() / 255, atol=1e-6, rtol=0)


def test_grey_becomes_rgb(tmp_path):
    arr = np.arange(12, dtype=np.uint8).reshape(3, 4) * 20
    Image.fromarray(arr, mode="L").save(tmp_path / "g.png")
    y = load_image(tmp_path / "g.png")
    assert y.shape == (3, 3, 4)
    assert torch.equal(y[0], y[1]) and torch.equal(y[1], y[2])
    torch.testing.assert_close(y[0], torch.from_numpy(arr).float() / 255)


def test_rgba_drops_alpha(tmp_path):
    arr = np.zeros((2, 3, 4), dtype=np.uint8)
    arr[..., 0] = 200
    arr[..., 3] = 0  # fully transparent: colour must survive, not be blended away
    Image.fromarray(arr, mode="RGBA").save(tmp_path / "a.png")
    y = load_image(tmp_path / "a.png")
    assert y.shape == (3, 2, 3)
    torch.testing.assert_close(y[0], torch.full((2, 3), 200 / 255))


def test_grey16_full_precision(tmp_path):
    arr = np.array([[0, 1, 65535], [1000, 30000, 65534]], dtype=np.uint16)
    Image.fromarray(arr).save(tmp_path / "g16.png")
    y = load_image(tmp_path / "g16.png")
    torch.testing.assert_close(y[1].double(), torch.from_numpy(arr.astype(np.float64)) / 65535, atol=1e-7, rtol=0)


def _write_rgb16_png(path, arr: np.ndarray, filt: int) -> None:
    h, w, _ = arr.shape
    raw = arr.astype(">u2").tobytes()
    stride = w * 6
    rows = []
    for y in range(h):
        line = np.frombuffer(raw[y * stride : (y + 1) * stride], dtype=np.uint8).astype(np.int32)
        if filt == 1:  # Sub
            enc = (line - np.concatenate([np.zeros(6, np.int32), line[:-6]])) & 0xFF
        else:
            enc = line
        rows.append(bytes([filt]) + enc.astype(np.uint8).tobytes())

    def chunk(t, b):
        return struct.pack(">I", len(b)) + t + b + struct.pack(">I", zlib.crc32(t + b) & 0xFFFFFFFF)

    data = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 16, 2, 0, 0, 0))
    data += chunk(b"IDAT", zlib.compress(b"".join(rows))) + chunk(b"IEND", b"")
    path.write_bytes(data)


@pytest.mark.parametrize("filt", [0, 1])
def test_rgb16_full_precision(tmp_path, filt):
    rng = np.random.default_rng(0)
    arr = rng.integers(0, 65536, size=(4, 5, 3), dtype=np.uint16)
    _write_rgb16_png(tmp_path / "c16.png", arr, filt)
    y = load_image(tmp_path / "c16.png")
    expect = torch.from_numpy(arr.astype(np.float32) / 65535).permute(2, 0, 1)
    torch.testing.assert_close(y, expect, atol=1e-7, rtol=0)


def test_missing_and_corrupt_files_name_the_path(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.png"):
        load_image(tmp_path / "nope.png")
    (tmp_path / "bad.jpg").write_bytes(b"not an image")
    with pytest.raises(OSError, match="bad.jpg"):
        load_image(tmp_path / "bad.jpg")


def test_list_images_recursive_sorted(tmp_path):
    (tmp_path / "sub").mkdir()
    for name in ["b.png", "a.JPG", "sub/c.jpeg", "notes.txt"]:
        p = tmp_path / name
        if p.suffix == ".txt":
            p.write_text("x")
        else:
            Image.new("RGB", (2, 2)).save(p, format="PNG" if p.suffix == ".png" else "JPEG")
    names = [p.relative_to(tmp_path).as_posix() for p in list_images(tmp_path)]
    assert names == ["a.JPG", "b.png", "sub/c.jpeg"]


def test_modcrop():
    x = torch.rand(3, 10, 7)
    assert modcrop(x, 4).shape == (3, 8, 4)
    assert modcrop(x[None], 2).shape == (1, 3, 10, 6)
