"""Image I/O, MATLAB-compatible bicubic resizing and training datasets."""

from patchscaler.data.dataset import PairPool, RandomCropPairs
from patchscaler.data.images import list_images, load_image, modcrop, save_image
from patchscaler.data.resize import bicubic_downscale, bicubic_upscale, imresize, quantize

__all__ = [
    "PairPool",
    "RandomCropPairs",
    "bicubic_downscale",
    "bicubic_upscale",
    "imresize",
    "list_images",
    "load_image",
    "modcrop",
    "quantize",
    "save_image",
]
