"""Image files (`patchscaler.imaging.image_files`) and the command on them: 16-bit PNGs exact
(pypng), ICC profile / EXIF / PNG text kept, EXIF orientation applied, every kind of bad
input a one-line error with nothing written, and writes that never leave a partial file."""

from __future__ import annotations

import io
import math
import struct
import zlib

import numpy as np
import pytest
from PIL import Image, ImageCms, ImageOps, PngImagePlugin

from patchscaler.command.cli import main
from patchscaler.imaging.image_files import ImageMeta, ImageTooLargeError, read_image, write_image

try:  # the fixture lives in conftest.py once the weights refactor lands
    from test_api import fake_models  # noqa: F401
except ImportError:  # pragma: no cover
    pass


def _rgb(h, w, seed=0):
    return np.random.default_rng(seed).integers(0, 256, size=(h, w, 3), dtype=np.uint8)


def _srgb() -> bytes:
    return ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()


def _exif(orientation: int, make: str = "TestCam") -> bytes:
    ex = Image.Exif()
    ex[0x0112] = orientation
    ex[0x010F] = make
    return ex.tobytes()


def _no_leftovers(folder):
    """No temporary (partial) files of an atomic write remain."""
    assert not [p.name for p in folder.iterdir() if p.name.endswith(".part")]


def _run(argv, capsys):
    code = main([str(a) for a in argv] + ["--sampler", "none", "-q"])
    return code, capsys.readouterr().err


# ---------------------------------------------------------------------------- 16-bit


@pytest.mark.parametrize("shape", [(5, 7), (5, 7, 2), (5, 7, 3), (5, 7, 4)])
def test_png16_round_trip_exact_every_colour_type(tmp_path, shape):
    a = (np.random.default_rng(0).random(shape) * 65536).astype(np.uint16)
    a.flat[:2] = (0, 65535)
    meta = ImageMeta(icc_profile=_srgb(), exif=_exif(1), text={"Comment": "ünïcode ok", "Author": "me"})
    write_image(a, tmp_path / "t.png", meta)
    b, meta2 = read_image(tmp_path / "t.png")
    assert b.dtype == np.uint16
    np.testing.assert_array_equal(b, a)
    np.testing.assert_array_equal(read_image(tmp_path / "t.png")[0], a)
    assert meta2.text == meta.text and meta2.exif is not None
    assert (meta2.icc_profile == meta.icc_profile) == (len(shape) == 3 and shape[2] >= 3)  # grey: RGB profile dropped
    with Image.open(tmp_path / "t.png") as im:  # a PNG other readers understand
        assert im.size == (7, 5)
        assert im.getexif().get(0x010F) == "TestCam"


def test_png16_through_cli_writer_and_the_command(fake_models, tmp_path, capsys):
    a = (np.random.default_rng(1).random((4, 5, 3)) * 65535).astype(np.uint16)
    write_image(a, tmp_path / "in.png")
    code, err = _run([tmp_path / "in.png", "-o", tmp_path / "out.png", "--outscale", "2"], capsys)
    assert code == 0, err
    out = read_image(tmp_path / "out.png")[0]
    assert out.dtype == np.uint16 and out.shape == (8, 10, 3)
    assert len(np.unique(out)) > 80  # more levels than 8 bits would keep in a 240-value image


# ------------------------------------------------------------------------ metadata


@pytest.mark.parametrize("out_name", ["out.png", "out.jpg"])
def test_icc_and_exif_survive_the_command_with_outscale(fake_models, tmp_path, capsys, out_name):
    src = tmp_path / "in.jpg"
    Image.fromarray(_rgb(6, 8)).save(src, quality=95, icc_profile=_srgb(), exif=_exif(6))  # stored 8 wide, 6 high
    code, err = _run([src, "-o", tmp_path / out_name, "--outscale", "2"], capsys)
    assert code == 0, err
    with Image.open(tmp_path / out_name) as out:
        assert out.size == (12, 16)  # orientation 6 applied (upright 6 wide, 8 high), then x2
        assert out.info.get("icc_profile") == _srgb()
        exif = out.getexif()
        assert exif.get(0x0112) == 1 and exif.get(0x010F) == "TestCam"


@pytest.mark.parametrize("orientation", range(1, 9))
def test_orientation_applied_like_exif_transpose(tmp_path, orientation):
    arr = _rgb(3, 5, orientation)
    Image.fromarray(arr).save(tmp_path / "o.png", exif=_exif(orientation))
    got, meta = read_image(tmp_path / "o.png")
    with Image.open(tmp_path / "o.png") as im:
        want = np.asarray(ImageOps.exif_transpose(im).convert("RGB"))
    np.testing.assert_array_equal(got, want)
    ex = Image.Exif()
    ex.load(meta.exif)
    assert ex.get(0x0112) == 1 and ex.get(0x010F) == "TestCam"


def test_png_text_chunks_kept_in_png_outputs(fake_models, tmp_path, capsys):
    info = PngImagePlugin.PngInfo()
    info.add_text("Title", "meadow")
    info.add_text("Software", "camera app")
    Image.fromarray(_rgb(4, 4)).save(tmp_path / "t.png", pnginfo=info)
    code, err = _run([tmp_path / "t.png", "-o", tmp_path / "o.png"], capsys)
    assert code == 0, err
    with Image.open(tmp_path / "o.png") as out:
        assert out.text == {"Title": "meadow", "Software": "camera app"}


# ----------------------------------------------------------------------- bad input


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def _bomb_png(width: int, height: int) -> bytes:
    """A tiny file whose header claims width x height RGB pixels (its data is a few bytes)."""
    return (b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
            + _png_chunk(b"IDAT", zlib.compress(b"\0" * 64)) + _png_chunk(b"IEND", b""))


def _jpeg_bytes() -> bytes:
    buf = io.BytesIO()
    Image.fromarray(_rgb(32, 32)).save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def _png_bytes() -> bytes:
    buf = io.BytesIO()
    Image.fromarray(_rgb(32, 32)).save(buf, format="PNG")
    return buf.getvalue()


@pytest.mark.parametrize(
    "name,data,match",
    [
        ("empty.png", b"", "empty"),
        ("empty.jpg", b"", "empty"),
        ("cut.png", _png_bytes()[:300], "cannot read image"),
        ("cut.jpg", _jpeg_bytes()[:200], "cannot read image"),
        ("garbage.webp", b"RIFF\x10\x00\x00\x00WEBPVP8 nonsense", "cannot read image"),
        ("bomb.png", _bomb_png(100_000, 100_000), "--max-megapixels"),  # 30 GB of pixels if decoded
    ],
)
def test_bad_files_one_line_error_nothing_written(fake_models, tmp_path, capsys, name, data, match):
    (tmp_path / name).write_bytes(data)
    code, err = _run([tmp_path / name, "-o", tmp_path / "out.png"], capsys)
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and match in lines[0] and name in lines[0], err
    assert "Traceback" not in err and not (tmp_path / "out.png").exists()
    _no_leftovers(tmp_path)


def test_bomb_fails_from_the_header_and_the_limit_can_be_raised(tmp_path):
    (tmp_path / "bomb.png").write_bytes(_bomb_png(100_000, 100_000))
    with pytest.raises(ImageTooLargeError, match="100000x100000"):
        read_image(tmp_path / "bomb.png", max_pixels=1e6)
    # Without a limit, Pillow's own bomb limit (~179 MP) is checked on the header, before decoding.
    with pytest.raises(ImageTooLargeError, match="decompression-bomb limit"):
        read_image(tmp_path / "bomb.png")
    # An explicit infinite limit lets the header through (the short data then fails to decode).
    with pytest.raises(OSError, match="cannot read image"):
        read_image(tmp_path / "bomb.png", max_pixels=math.inf)
    # A raised limit lets a large-but-honest header through to decoding (here: the data is short).
    (tmp_path / "big.png").write_bytes(_bomb_png(2000, 1000))
    with pytest.raises(ImageTooLargeError):
        read_image(tmp_path / "big.png", max_pixels=1e6)
    with pytest.raises(OSError, match="cannot read image"):
        read_image(tmp_path / "big.png", max_pixels=3e6)


@pytest.mark.parametrize("ext", [".gif", ".webp"])
def test_animated_first_frame_with_a_warning(fake_models, tmp_path, capsys, ext):
    frames = [Image.new("RGB", (5, 4), (200, 40 * i, 0)) for i in range(3)]
    frames[0].save(tmp_path / f"anim{ext}", save_all=True, append_images=frames[1:], duration=50, loop=0)
    code, err = _run([tmp_path / f"anim{ext}", "-o", tmp_path / "o.png"], capsys)
    assert code == 0 and "warning" in err and "3 frames" in err and "first frame" in err
    with Image.open(tmp_path / "o.png") as out:
        assert out.size == (20, 16)
    arr, meta = read_image(tmp_path / f"anim{ext}")
    assert arr.shape == (4, 5, 3) and abs(int(arr[..., 1].mean())) < 20  # frame 0 (green 0), not a later one


def test_cmyk_jpeg_becomes_rgb(fake_models, tmp_path, capsys):
    Image.new("CMYK", (6, 5), (0, 255, 255, 0)).save(tmp_path / "c.jpg", quality=95)  # red, Adobe-inverted
    arr, meta = read_image(tmp_path / "c.jpg")
    assert arr.shape == (5, 6, 3) and arr.dtype == np.uint8
    assert (arr[..., 0] > 230).all() and (arr[..., 1:] < 25).all()
    assert meta.icc_profile is None  # no CMYK profile carried onto RGB pixels
    code, err = _run([tmp_path / "c.jpg", "-o", tmp_path / "c.png"], capsys)
    assert code == 0, err
    with Image.open(tmp_path / "c.png") as out:
        assert out.mode == "RGB" and "icc_profile" not in out.info


def test_palette_pngs_with_and_without_transparency(fake_models, tmp_path, capsys):
    pal = Image.fromarray(_rgb(6, 6)).quantize(8)
    pal.save(tmp_path / "p.png")
    pal.save(tmp_path / "pt.png", transparency=0)
    assert read_image(tmp_path / "p.png")[0].shape == (6, 6, 3)
    rgba = read_image(tmp_path / "pt.png")[0]
    assert rgba.shape == (6, 6, 4) and set(np.unique(rgba[..., 3])) <= {0, 255} and (rgba[..., 3] == 0).any()
    for name, mode in [("p.png", "RGB"), ("pt.png", "RGBA")]:
        code, err = _run([tmp_path / name, "-o", tmp_path / f"o_{name}"], capsys)
        assert code == 0, err
        with Image.open(tmp_path / f"o_{name}") as out:
            assert out.mode == mode and out.size == (24, 24)


# --------------------------------------------------------------------------- writes


def test_failed_write_leaves_nothing_and_keeps_the_old_file(tmp_path, monkeypatch):
    dst = tmp_path / "o.png"
    dst.write_bytes(b"old")

    def broken_save(self, fp, format=None, **kw):
        with open(fp, "wb") as f:
            f.write(b"\x89PNG half of it")
        raise KeyboardInterrupt  # an interrupted run

    monkeypatch.setattr(Image.Image, "save", broken_save)
    with pytest.raises(KeyboardInterrupt):
        write_image(_rgb(3, 3), dst)
    assert dst.read_bytes() == b"old"
    _no_leftovers(tmp_path)
    with pytest.raises(KeyboardInterrupt):
        write_image(_rgb(3, 3), tmp_path / "new.jpg")
    assert not (tmp_path / "new.jpg").exists()
    _no_leftovers(tmp_path)


def test_failed_upscale_writes_nothing(fake_models, tmp_path, capsys, monkeypatch):
    import patchscaler.command.cli as cli

    Image.fromarray(_rgb(4, 4)).save(tmp_path / "a.png")

    def boom(*a, **k):
        raise RuntimeError("out of memory")

    monkeypatch.setattr("patchscaler.api.upscale", boom)
    assert cli.main([str(tmp_path / "a.png"), "-o", str(tmp_path / "o.png"), "--sampler", "none", "-q"]) == 2
    assert not (tmp_path / "o.png").exists()
    _no_leftovers(tmp_path)
