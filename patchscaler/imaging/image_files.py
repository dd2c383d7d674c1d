"""Image files for the command (and ``load_image``): read keeping what the output should
keep, write so that a failure never leaves a half-written file.

* **Reading** (:func:`read_image`): ``[H,W]`` grey, ``[H,W,2]`` grey + alpha, ``[H,W,3]``
  RGB or ``[H,W,4]`` RGBA arrays, uint8, or uint16 for 16-bit PNGs (all four colour
  types, exact) and 16-bit grey files. The EXIF orientation is applied to the pixels;
  palette images become RGB, or RGBA when they have transparency; CMYK becomes RGB
  through its embedded ICC profile when it has one (else Pillow's conversion); animated
  GIF/WebP/PNG give their first frame with a warning; 0-byte, truncated and
  undecodable files are a one-line :class:`OSError`; a file whose header claims more
  pixels than ``max_pixels`` (default: Pillow's own decompression-bomb limit) is refused
  before any pixel is decoded (:class:`ImageTooLargeError`, a ValueError).
* **Metadata** (:class:`ImageMeta`): the ICC profile (when its colour space fits the
  output), the EXIF block with its orientation reset to 1 (the pixels are already
  upright), and PNG text chunks; :func:`write_image` puts them back where the output
  format can hold them (ICC/EXIF: PNG, JPEG, WebP, TIFF; text: PNG).
* **PIL images** given to ``upscale()`` come back with their ICC profile and EXIF in
  ``info`` (:func:`keep_pil_info`); their pixels are not rotated, so the EXIF is kept as is.
* **Writing** (:func:`write_image`): to a temporary name in the destination folder,
  then renamed over the destination, so an interrupted or failed write leaves no
  partial file (and an existing output is either the old or the new one).
"""

from __future__ import annotations

import io
import os
import tempfile
import threading
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from patchscaler.imaging.convert import requantize, to_integer

__all__ = [
    "ImageMeta",
    "ImageTooLargeError",
    "apply_orientation",
    "atomic_write",
    "exif_orientation",
    "keep_pil_info",
    "pillow_bomb_limit",
    "read_image",
    "read_png16",
    "write_image",
    "write_png16",
]

# 16-bit PNG pixels go through pypng: Pillow reads 48/64-bit RGB(A) and 32-bit grey+alpha
# PNGs as 8 bits and cannot write them at all. pypng was chosen over OpenCV, imageio and
# tifffile because it is a small pure-Python package (no native wheel, no
# opencv-python/-headless namespace clash, no BGR order), reads and writes every 16-bit
# colour type bit-exactly, and has a chunk API (Reader.chunks / write_chunks) through
# which the ICC profile, EXIF and text chunks are kept; imageio's PNG goes through Pillow
# (the same 8-bit limit) and tifffile does not write PNG.
import png as _pypng  # noqa: E402  (pypng)

_ORIENTATION = 0x0112
_PIL_OPEN_LOCK = threading.Lock()
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# Text chunks not carried as text: the EXIF and ICC profile are written as their own chunks.
_SKIP_TEXT = {"raw profile type exif", "raw profile type icc", "raw profile type icm", "icc", "exif"}


class ImageTooLargeError(ValueError):
    """The file's header asks for more pixels than the caller allows (a decompression bomb or
    simply too large); raised before the pixels are decoded."""


@dataclass
class ImageMeta:
    """What a file carries beside its pixels, ready to write to the output."""

    icc_profile: bytes | None = None
    exif: bytes | None = None  # EXIF block, orientation already applied and reset to 1
    text: dict[str, str] = field(default_factory=dict)  # PNG tEXt/zTXt/iTXt
    warnings: list[str] = field(default_factory=list)  # things the user should hear about
    format: str | None = None  # Pillow's name of the input format


# ------------------------------------------------------------------------------ reading


def _icc_space(icc: bytes | None) -> str | None:
    """Colour space of an ICC profile from its header: 'RGB', 'GRAY', 'CMYK', ... or None."""
    if not icc or len(icc) < 20:
        return None
    return icc[16:20].decode("ascii", "replace").strip().upper()


def _fits(icc: bytes | None, channels: int) -> bool:
    return _icc_space(icc) == ("GRAY" if channels in (1, 2) else "RGB")


def _srgb_profile() -> bytes:
    from PIL import ImageCms

    return ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()


def exif_orientation(im) -> int:
    """The EXIF orientation (1..8) of an open Pillow image; 1 when it has none or an invalid one."""
    try:
        orientation = int(im.getexif().get(_ORIENTATION, 1) or 1)
    except (TypeError, ValueError):
        return 1
    return orientation if orientation in range(1, 9) else 1


def apply_orientation(arr: np.ndarray, orientation: int) -> np.ndarray:
    """Apply an EXIF orientation (1..8) to ``[H, W, ...]`` (what ``ImageOps.exif_transpose`` does)."""
    if orientation == 2:
        arr = arr[:, ::-1]
    elif orientation == 3:
        arr = arr[::-1, ::-1]
    elif orientation == 4:
        arr = arr[::-1]
    elif orientation == 5:
        arr = np.swapaxes(arr, 0, 1)
    elif orientation == 6:
        arr = np.rot90(arr, -1)
    elif orientation == 7:
        arr = np.swapaxes(arr[::-1, ::-1], 0, 1)
    elif orientation == 8:
        arr = np.rot90(arr, 1)
    return np.ascontiguousarray(arr)


def read_png16(source: str | os.PathLike | bytes) -> np.ndarray | None:
    """A 16-bit PNG as ``[H,W]`` / ``[H,W,2]`` / ``[H,W,3]`` / ``[H,W,4]`` uint16 (exact);
    None if ``source`` is not a 16-bit grey/grey+alpha/RGB/RGBA PNG."""
    if isinstance(source, (bytes, bytearray)):
        head = data = bytes(source)
    else:
        with open(source, "rb") as f:
            head = f.read(33)
        data = None
    if len(head) < 33 or head[:8] != _PNG_SIGNATURE or head[12:16] != b"IHDR":
        return None
    if head[24] != 16 or head[25] not in (0, 2, 4, 6):
        return None
    if data is None:
        data = Path(source).read_bytes()
    try:
        width, height, rows, info = _pypng.Reader(bytes=data).read()
        arr = np.vstack([np.asarray(r, dtype=np.uint16) for r in rows])
    except (_pypng.Error, ValueError, zlib.error) as exc:
        raise OSError(str(exc).splitlines()[0] if str(exc) else type(exc).__name__) from None
    planes = info["planes"]
    arr = arr.reshape(height, width, planes)
    return arr[..., 0] if planes == 1 else arr


# Modes whose pixels are indices or single bits: `flatten_palette` turns them into real colours.
PALETTE_MODES = ("P", "PA", "1")


def flatten_palette(im):
    """Palette → RGB (RGBA when it has transparency), palette+alpha → RGBA, 1-bit → L; else unchanged."""
    if im.mode == "P":
        return im.convert("RGBA" if "transparency" in im.info else "RGB")
    if im.mode == "PA":
        return im.convert("RGBA")
    if im.mode == "1":
        return im.convert("L")
    return im


def _pixels(im, path: Path, meta: ImageMeta) -> np.ndarray:
    """Decoded Pillow image → the array family above (may fix ``meta.icc_profile``)."""
    from PIL import Image, ImageCms

    mode = im.mode
    if im.format == "PNG" and mode not in PALETTE_MODES:
        arr16 = read_png16(path)
        if arr16 is not None:
            return arr16
    if mode.startswith("I;16"):
        return np.asarray(im).astype(np.uint16)
    if mode == "I":
        arr = np.asarray(im)
        if arr.size and (arr.min() < 0 or arr.max() > 65535):
            raise OSError(f"32-bit integer image with values outside 0..65535 ({mode})")
        return arr.astype(np.uint16)
    if mode == "F":
        arr = np.nan_to_num(np.asarray(im).astype(np.float32), nan=0.0, posinf=1.0, neginf=0.0)
        return to_integer(arr, np.uint16)
    if mode in PALETTE_MODES:
        im = flatten_palette(im)
    elif mode == "CMYK":
        icc = meta.icc_profile
        converted = None
        if _icc_space(icc) == "CMYK":
            try:
                src = ImageCms.ImageCmsProfile(io.BytesIO(icc))
                dst = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB"))
                converted = ImageCms.profileToProfile(im, src, dst, outputMode="RGB")
            except (ImageCms.PyCMSError, OSError, ValueError):
                converted = None
        if converted is not None:
            meta.icc_profile = _srgb_profile()  # the pixels are sRGB now
            im = converted
        else:
            meta.icc_profile = None
            im = im.convert("RGB")
    elif mode not in ("L", "LA", "RGB", "RGBA"):
        im = im.convert("RGB")  # YCbCr, LAB, HSV, RGBX, ...
    return np.asarray(im).copy()


def pillow_bomb_limit() -> float | None:
    """Pixels above which Pillow itself refuses an image as a decompression bomb
    (``2 × PIL.Image.MAX_IMAGE_PIXELS``, about 179 MP by default; None if the
    application disabled Pillow's check by setting ``MAX_IMAGE_PIXELS = None``)."""
    from PIL import Image

    with _PIL_OPEN_LOCK:  # read_image swaps the value while it opens a file
        limit = Image.MAX_IMAGE_PIXELS
    return None if limit is None else 2.0 * limit


def read_image(
    path: str | os.PathLike,
    *,
    max_pixels: float | None = None,
    limit_hint: str = "",
) -> tuple[np.ndarray, ImageMeta]:
    """Read an image file; returns ``(array, meta)`` (see the module docstring).

    ``max_pixels``: refuse (``ImageTooLargeError``) files whose header gives more pixels,
    before decoding. Default None: Pillow's own decompression-bomb limit
    (`pillow_bomb_limit`, ~179 MP), so a tiny file claiming a gigapixel is never decoded
    unless the caller raised the limit on purpose (``math.inf``: no limit). ``limit_hint``
    is appended to that message (how to raise the limit). Other failures are an
    ``OSError`` with a one-line message naming the file.
    """
    from PIL import Image, UnidentifiedImageError

    path = Path(path)
    if not path.is_file():
        raise OSError(f"cannot read image {path}: file not found")
    if path.stat().st_size == 0:
        raise OSError(f"cannot read image {path}: the file is empty (0 bytes)")
    meta = ImageMeta()
    bomb_default = max_pixels is None
    if bomb_default:
        max_pixels = pillow_bomb_limit()
    try:
        # Pillow's own bomb check (which warns at 89 MP and refuses at 179 MP) is replaced by
        # ours, the same limit by default, which the caller can raise; open() only reads the header.
        with _PIL_OPEN_LOCK:
            saved = Image.MAX_IMAGE_PIXELS
            Image.MAX_IMAGE_PIXELS = None
            try:
                im = Image.open(path)
            finally:
                Image.MAX_IMAGE_PIXELS = saved
        with im:
            w, h = im.size
            if max_pixels is not None and w * h > max_pixels:
                raise ImageTooLargeError(
                    f"{path}: {w}x{h} = {w * h / 1e6:.4g} MP is above the input limit of "
                    f"{max_pixels / 1e6:.4g} MP"
                    + (" (Pillow's decompression-bomb limit)" if bomb_default else "") + limit_hint
                )
            meta.format = im.format
            frames = getattr(im, "n_frames", 1)
            if getattr(im, "is_animated", False) and frames > 1:
                meta.warnings.append(f"{path} is animated ({frames} frames): only the first frame is upscaled")
            im.load()
            meta.icc_profile = im.info.get("icc_profile") or None
            exif = im.getexif()
            orientation = exif_orientation(im)
            if len(exif):
                if _ORIENTATION in exif:
                    exif[_ORIENTATION] = 1
                meta.exif = exif.tobytes()
            if im.format == "PNG":
                text = getattr(im, "text", {}) or {}
                meta.text = {
                    str(k): str(v) for k, v in text.items()
                    if isinstance(v, str) and str(k).lower() not in _SKIP_TEXT
                }
            arr = _pixels(im, path, meta)
    except ImageTooLargeError:
        raise
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError, EOFError) as exc:
        msg = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise OSError(f"cannot read image {path}: {msg}") from None
    except Image.DecompressionBombError as exc:  # pragma: no cover - the limit is lifted above
        raise ImageTooLargeError(f"{path}: {exc}") from None
    channels = 1 if arr.ndim == 2 else arr.shape[2]
    if meta.icc_profile is not None and not _fits(meta.icc_profile, channels):
        meta.icc_profile = None  # a profile for another colour space would mislabel the output
    return apply_orientation(arr, orientation), meta


def keep_pil_info(src, out):
    """Copy what ``upscale()``'s PIL output keeps from its PIL input ``src`` into
    ``out.info``: the ICC profile (when its colour space fits ``out``'s mode) and the EXIF
    block, unchanged (the pixels keep the input's stored orientation, so its orientation
    tag still describes them). Returns ``out``."""
    icc = src.info.get("icc_profile") or None
    if icc and _fits(icc, len(out.getbands())):
        out.info["icc_profile"] = icc
    exif = src.getexif()
    if len(exif):
        out.info["exif"] = exif.tobytes()
    return out


# ------------------------------------------------------------------------------ writing


class atomic_write:
    """``with atomic_write(path) as tmp: write(tmp)``: the file appears at ``path`` only
    when the block succeeds (a temporary name in the same folder, then ``os.replace``);
    on any error or interruption the temporary file is removed."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)

    def __enter__(self) -> Path:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(prefix=f".{self.path.name}.", suffix=".part", dir=self.path.parent)
        os.close(fd)
        self.tmp = Path(name)
        return self.tmp

    def __exit__(self, exc_type, exc, tb) -> bool:
        if exc_type is None:
            try:
                os.chmod(self.tmp, 0o666 & ~_umask())
                os.replace(self.tmp, self.path)
                return False
            except BaseException:
                self.tmp.unlink(missing_ok=True)
                raise
        self.tmp.unlink(missing_ok=True)
        return False


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _text_chunk(key: str, value: str) -> tuple[bytes, bytes]:
    k = key.encode("latin-1", "replace")[:79]
    try:
        return b"tEXt", k + b"\0" + value.encode("latin-1")
    except UnicodeEncodeError:
        return b"iTXt", k + b"\0\0\0\0\0" + value.encode("utf-8")


def write_png16(arr: np.ndarray, fp, meta: ImageMeta | None = None) -> None:
    """``[H,W]`` / ``[H,W,C]`` uint16 (C = 1..4) → a 16-bit PNG on the binary file ``fp``,
    with ``meta``'s ICC profile, EXIF and text as iCCP / eXIf / tEXt chunks."""
    if arr.ndim == 2:
        arr = arr[..., None]
    h, w, c = arr.shape
    writer = _pypng.Writer(w, h, greyscale=c <= 2, alpha=c in (2, 4), bitdepth=16, compression=6)
    buf = io.BytesIO()
    writer.write(buf, np.ascontiguousarray(arr, dtype=np.uint16).reshape(h, w * c))
    chunks = list(_pypng.Reader(bytes=buf.getvalue()).chunks())
    extra: list[tuple[bytes, bytes]] = []
    if meta is not None:
        if meta.icc_profile and _fits(meta.icc_profile, c):
            extra.append((b"iCCP", b"icc\0\0" + zlib.compress(meta.icc_profile)))
        if meta.exif:
            exif = meta.exif[6:] if meta.exif.startswith(b"Exif\0\0") else meta.exif
            extra.append((b"eXIf", exif))
        extra += [_text_chunk(k, v) for k, v in meta.text.items()]
    _pypng.write_chunks(fp, chunks[:1] + extra + chunks[1:])  # after IHDR, before IDAT


_FORMATS = {
    ".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG", ".webp": "WEBP", ".tif": "TIFF", ".tiff": "TIFF",
    ".bmp": "BMP", ".ppm": "PPM", ".pgm": "PPM", ".gif": "GIF",
}
_NO_ALPHA = ("JPEG", "BMP", "PPM")
_KEEPS_META = ("PNG", "JPEG", "WEBP", "TIFF")


def write_image(arr: np.ndarray, path: str | os.PathLike, meta: ImageMeta | None = None) -> None:
    """Write an array of :func:`read_image`'s family; the suffix picks the format.

    16-bit data is written as a 16-bit PNG (pypng); other formats get 8 bits. Formats
    without alpha (JPEG, BMP, PPM) drop it. ``meta``'s ICC profile and EXIF go into PNG,
    JPEG, WebP and TIFF, its text into PNG. The file appears only once complete.
    """
    from PIL import Image, PngImagePlugin

    path = Path(path)
    fmt = _FORMATS.get(path.suffix.lower())
    if fmt is None:
        ext = Image.registered_extensions()
        fmt = ext.get(path.suffix.lower())
        if fmt is None:
            raise OSError(f"cannot write {path}: unknown image extension {path.suffix!r}")
    meta = meta or ImageMeta()
    if arr.dtype == np.uint16 and fmt == "PNG":
        with atomic_write(path) as tmp, open(tmp, "wb") as fp:
            write_png16(arr, fp, meta)
        return
    if arr.dtype == np.uint16:
        arr = requantize(arr, np.uint8)
    elif arr.dtype != np.uint8:
        raise TypeError(f"write_image takes uint8 or uint16 arrays, got {arr.dtype}")
    channels = 1 if arr.ndim == 2 else arr.shape[2]
    mode = {1: "L", 2: "LA", 3: "RGB", 4: "RGBA"}[channels]
    im = Image.fromarray(arr[..., 0] if arr.ndim == 3 and channels == 1 else arr, mode)
    if fmt in _NO_ALPHA and mode in ("LA", "RGBA"):
        im = im.convert("L" if mode == "LA" else "RGB")
    kwargs: dict = {}
    if fmt in _KEEPS_META:
        if meta.icc_profile and _fits(meta.icc_profile, len(im.getbands())):
            kwargs["icc_profile"] = meta.icc_profile
        if meta.exif:
            kwargs["exif"] = meta.exif
    if fmt == "PNG" and meta.text:
        info = PngImagePlugin.PngInfo()
        for k, v in meta.text.items():
            info.add_text(k, v)
        kwargs["pnginfo"] = info
    if fmt in ("JPEG", "WEBP"):
        kwargs["quality"] = 95  # Pillow's default 75 throws away much of what was upscaled
    with atomic_write(path) as tmp:
        im.save(tmp, format=fmt, **kwargs)
