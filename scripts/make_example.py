"""Rebuild ``dandelions_lr.png``, the bundled example input, from the CC0 source photo.

    python scripts/make_example.py [PHOTO]

PHOTO defaults to ``../shared/data/train/photos/lomiri16_seeding_by_Clements_Engelhardt.jpg``
(relative to the repository root). A 512×512 HR crop at (left 2000, top 1150) holds the
right edge of the big dandelion (seed hairs: hard) against the out-of-focus meadow
(easy); it is downscaled ×1/4 with the project's MATLAB-compatible bicubic (the
benchmark degradation), so the example is a realistic 128×128 LR input whose ×4
result can be compared with the crop itself.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from patchscaler.data.images import save_image
from patchscaler.data.resize import bicubic_downscale

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_PHOTO = REPO_ROOT.parent / "shared/data/train/photos/lomiri16_seeding_by_Clements_Engelhardt.jpg"
OUTPUT = REPO_ROOT / "patchscaler" / "examples" / "dandelions_lr.png"
CROP_LEFT, CROP_TOP, CROP_SIZE = 2000, 1150, 512  # HR pixels of the source photo
SCALE = 4


def make_example(photo: Path = DEFAULT_PHOTO, output: Path = OUTPUT) -> torch.Tensor:
    """Crop, downscale and save; returns the LR image ``float32 [3, 128, 128]`` in [0, 1]."""
    with Image.open(photo) as im:
        crop = im.convert("RGB").crop((CROP_LEFT, CROP_TOP, CROP_LEFT + CROP_SIZE, CROP_TOP + CROP_SIZE))
        hr = torch.from_numpy(np.asarray(crop).astype(np.float32) / 255.0).permute(2, 0, 1)
    lr = bicubic_downscale(hr, SCALE, quantize_output=True)
    save_image(lr, output)
    return lr


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("photo", nargs="?", type=Path, default=DEFAULT_PHOTO, help="the CC0 source photo")
    parser.add_argument("-o", "--output", type=Path, default=OUTPUT, help="where to write the LR png")
    args = parser.parse_args()
    lr = make_example(args.photo, args.output)
    print(f"wrote {args.output} ({lr.shape[2]}x{lr.shape[1]})")


if __name__ == "__main__":
    main()
