"""What the user's image carries, on the paths `tests/test_image_files.py` does not cover:
`patchscaler.data.load_image` (eval, training) applies the EXIF orientation; PIL images
given to `upscale()` come back with their ICC profile and EXIF."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image, ImageCms, ImageOps

from helpers import write_model_set

from patchscaler.data.images import load_image
from patchscaler.imaging.image_files import read_image, write_image

ORIENTATION, MAKE = 0x0112, 0x010F


def _exif(orientation: int) -> bytes:
    ex = Image.Exif()
    ex[ORIENTATION] = orientation
    ex[MAKE] = "TestCam"
    return ex.tobytes()


def _srgb() -> bytes:
    return ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()


def _upright(h: int = 24, w: int = 40) -> np.ndarray:
    """A smooth picture (JPEG keeps it) that no rotation or flip maps onto itself."""
    y, x = np.mgrid[0:h, 0:w]
    r = 255 * x / (w - 1)
    g = 255 * y / (h - 1)
    b = np.where((y < h // 3) & (x < w // 4), 230, 30)
    return np.stack([r, g, b], -1).round().astype(np.uint8)


def _stored(upright: np.ndarray, orientation: int) -> np.ndarray:
    """The pixels a camera stores so that a viewer applying ``orientation`` shows ``upright``."""
    # 6: the viewer turns the stored picture 90° clockwise, so it is stored turned 90° counter-clockwise.
    return {1: upright, 6: np.rot90(upright, 1), 8: np.rot90(upright, -1)}[orientation].copy()


@pytest.mark.parametrize("orientation", [6, 8])
def test_load_image_applies_the_exif_orientation_of_a_jpeg(tmp_path, orientation):
    up = _upright()
    path = tmp_path / f"o{orientation}.jpg"
    Image.fromarray(_stored(up, orientation)).save(path, quality=95, exif=_exif(orientation))
    with Image.open(path) as im:
        assert im.size == (24, 40)  # stored sideways
        viewer = np.asarray(ImageOps.exif_transpose(im).convert("RGB"))
    t = load_image(path)
    assert tuple(t.shape) == (3, 24, 40)
    got = (t.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
    assert np.array_equal(got, viewer)  # what Pillow's viewer transform shows, exactly
    err = np.abs(got.astype(float) - up).mean()
    assert err < 3  # the upright picture, up to JPEG loss ...
    # ... and not what the other orientation (8 for 6, 6 for 8) would give: the picture turned 180°.
    assert np.abs(np.rot90(got, 2).astype(float) - up).mean() > 20 * err
    # The file path of the command gives the same pixels and writes orientation 1.
    arr, meta = read_image(path)
    assert np.array_equal(arr, got)
    write_image(arr, tmp_path / "out.jpg", meta)
    with Image.open(tmp_path / "out.jpg") as out:
        ex = out.getexif()
        assert out.size == (40, 24) and ex.get(ORIENTATION) == 1 and ex.get(MAKE) == "TestCam"


def test_load_image_without_orientation_is_unchanged(tmp_path):
    up = _upright()
    Image.fromarray(up).save(tmp_path / "a.png")
    assert np.array_equal((load_image(tmp_path / "a.png").permute(1, 2, 0).numpy() * 255).round(), up)


@pytest.fixture
def tiny_weights(tmp_path, monkeypatch):
    from patchscaler.checkpoints import clear

    write_model_set(tmp_path / "w", dit=False)
    monkeypatch.setenv("PATCHSCALER_WEIGHTS", str(tmp_path / "w"))
    clear()
    yield
    clear()


def _reopened(im: Image.Image, fmt: str, **save) -> Image.Image:
    buf = io.BytesIO()
    im.save(buf, format=fmt, **save)
    out = Image.open(io.BytesIO(buf.getvalue()))
    out.load()
    return out


@pytest.mark.parametrize("mode", ["RGB", "RGBA", "L"])
def test_pil_input_keeps_icc_profile_and_exif(tiny_weights, mode):
    import patchscaler

    icc = _srgb() if mode != "L" else ImageCms.ImageCmsProfile(ImageCms.createProfile("LAB")).tobytes()
    src = _reopened(Image.fromarray(_upright(6, 10)).convert(mode), "PNG", icc_profile=icc, exif=_exif(6))
    assert src.info.get("icc_profile") == icc and src.getexif().get(ORIENTATION) == 6
    out = patchscaler.upscale(src, sampler="none")
    assert out.mode == mode and out.size == (40, 24)  # pixels as stored: not rotated
    if mode == "L":
        assert "icc_profile" not in out.info  # a LAB profile would mislabel grey pixels
    else:
        assert out.info["icc_profile"] == icc
    ex = out.getexif()
    assert ex.get(ORIENTATION) == 6 and ex.get(MAKE) == "TestCam"  # still describes the stored pixels
    # And they reach a file the user saves.
    again = _reopened(out, "JPEG" if mode == "RGB" else "PNG", exif=out.info["exif"],
                      icc_profile=out.info.get("icc_profile"))
    assert again.getexif().get(MAKE) == "TestCam"


def test_pil_input_without_metadata_gets_none(tiny_weights):
    import patchscaler

    out = patchscaler.upscale(Image.fromarray(_upright(6, 10)), sampler="none")
    assert "icc_profile" not in out.info and "exif" not in out.info


def test_cmyk_pil_input_does_not_carry_its_profile_onto_rgb(tiny_weights):
    import patchscaler

    cmyk = Image.fromarray(_upright(6, 10)).convert("CMYK")
    cmyk.info["icc_profile"] = b"\0" * 16 + b"CMYK" + b"\0" * 108  # a header saying CMYK
    out = patchscaler.upscale(cmyk, sampler="none")
    assert out.mode == "RGB" and "icc_profile" not in out.info
