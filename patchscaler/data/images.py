"""Reading and writing images as float tensors ``[3, H, W]`` in [0, 1] (training, eval
and scripts; levels ↔ floats by `patchscaler.imaging.convert`)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch import Tensor

from patchscaler.imaging.convert import tensor_to_uint8, to_float
from patchscaler.imaging.image_files import apply_orientation, exif_orientation, read_png16

__all__ = ["IMAGE_EXTENSIONS", "load_image", "save_image", "list_images", "modcrop"]

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".ppm", ".pgm")


def load_image(path: str | os.PathLike) -> Tensor:
    """Read an image file as ``float32 [3, H, W]`` in [0, 1].

    Greyscale is repeated to RGB, alpha is dropped, palette images are expanded,
    16-bit files keep their full precision (divided by 65535), and the EXIF orientation
    is applied (the tensor is upright, as a viewer shows the file).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"image file not found: {path}")
    try:
        with Image.open(path) as im:
            im.load()
            orientation = exif_orientation(im)
            mode = im.mode
            if mode in ("I;16", "I;16B", "I;16L", "I"):
                arr = np.asarray(im).astype(np.float64)
                # 'I' mode comes from 16-bit PNGs (and 32-bit TIFFs); scale by the container's range.
                peak = 65535.0 if mode.startswith("I;16") or arr.max() <= 65535 else float(2**32 - 1)
                arr = (arr / peak).astype(np.float32)[..., None].repeat(3, axis=2)
            elif mode == "F":
                arr = np.asarray(im).astype(np.float32)[..., None].repeat(3, axis=2)
            else:
                # PIL truncates 48/64-bit PNGs to 8 bits; pypng reads them exactly.
                rgb16 = read_png16(path) if mode in ("RGB", "RGBA") and im.format == "PNG" else None
                if rgb16 is not None:
                    arr = to_float(rgb16[..., :3])
                else:
                    if mode != "RGB":
                        im = im.convert("RGBA").convert("RGB") if "A" in mode or mode == "P" else im.convert("RGB")
                    arr = to_float(np.asarray(im))
    except (UnidentifiedImageError, OSError, ValueError) as e:
        raise OSError(f"cannot read image {path}: {e}") from e
    return torch.from_numpy(apply_orientation(arr, orientation)).permute(2, 0, 1).contiguous()


def save_image(img: Tensor, path: str | os.PathLike) -> None:
    """Write ``[3, H, W]`` / ``[1, 3, H, W]`` float in [0, 1] as an 8-bit image (format from suffix)."""
    if img.dim() == 4:
        if img.shape[0] != 1:
            raise ValueError(f"save_image takes one image, got batch of {img.shape[0]}")
        img = img[0]
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(tensor_to_uint8(img)).save(path)


def list_images(folder: str | os.PathLike) -> list[Path]:
    """All image files under ``folder`` (recursive), sorted by path."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"image folder not found: {folder}")
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)


def modcrop(img: Tensor, scale: int) -> Tensor:
    """Crop the bottom/right of ``[..., H, W]`` so H and W are multiples of ``scale``."""
    h, w = img.shape[-2:]
    return img[..., : h - h % scale, : w - w % scale]
