"""Rebuild the bundled example inputs from the CC0 source photo.

    python scripts/make_example.py [PHOTO] [--degradation bicubic|real|both]

PHOTO defaults to ``../shared/data/train/photos/lomiri16_seeding_by_Clements_Engelhardt.jpg``
(relative to the repository root). A 512×512 HR crop at (left 2000, top 1150) holds the
right edge of the big dandelion (seed hairs: hard) against the out-of-focus meadow
(easy). It is brought to 128×128 two ways, one example per model set:

- ``dandelions_lr.png`` (``bicubic``): the project's MATLAB-compatible bicubic ÷4, the
  benchmark degradation — a clean, resized image, the `bicubic` set's input;
- ``dandelions_real_lr.png`` (``real``): the seeded real-world pipeline
  (`patchscaler.data.degradations.degrade_image(hr, "dandelions", 0)`: blur, noise,
  JPEG, twice) — a photo as people have them, the `real` set's (the default's) input.

So the ×4 result of either example can be compared with the crop itself.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from patchscaler.data.images import save_image
from patchscaler.data.resize import bicubic_downscale
from patchscaler.examples import EXAMPLES

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_PHOTO = REPO_ROOT.parent / "shared/data/train/photos/lomiri16_seeding_by_Clements_Engelhardt.jpg"
EXAMPLES_DIR = REPO_ROOT / "patchscaler" / "examples"
# Written into this checkout (not wherever the package is installed), under the names the package reads.
OUTPUTS = {degradation: EXAMPLES_DIR / path.name for degradation, path in EXAMPLES.items()}
CROP_LEFT, CROP_TOP, CROP_SIZE = 2000, 1150, 512  # HR pixels of the source photo
SCALE = 4
REAL_NAME, REAL_SEED = "dandelions", 0  # what seeds the real example's degradation


def example_hr(photo: Path = DEFAULT_PHOTO) -> torch.Tensor:
    """The 512×512 HR crop both examples are made from, ``float32 [3, 512, 512]`` in [0, 1]."""
    with Image.open(photo) as im:
        crop = im.convert("RGB").crop((CROP_LEFT, CROP_TOP, CROP_LEFT + CROP_SIZE, CROP_TOP + CROP_SIZE))
    return torch.from_numpy(np.asarray(crop).astype(np.float32) / 255.0).permute(2, 0, 1).contiguous()


def degraded(hr: torch.Tensor, degradation: str, seed: int = REAL_SEED) -> torch.Tensor:
    """The LR of ``hr`` under ``degradation`` ("bicubic" or "real", seeded by ``seed``), 8-bit levels."""
    if degradation == "bicubic":
        return bicubic_downscale(hr, SCALE, quantize_output=True)
    from patchscaler.data.degradations import degrade_image

    return degrade_image(hr, REAL_NAME, seed)


def make_example(degradation: str = "bicubic", photo: Path = DEFAULT_PHOTO, output: Path | None = None) -> torch.Tensor:
    """Crop, degrade and save; returns the LR image ``float32 [3, 128, 128]`` in [0, 1]."""
    lr = degraded(example_hr(photo), degradation)
    save_image(lr, output or OUTPUTS[degradation])
    return lr


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("photo", nargs="?", type=Path, default=DEFAULT_PHOTO, help="the CC0 source photo")
    parser.add_argument("--degradation", choices=("bicubic", "real", "both"), default="both",
                        help="which example to make (default both)")
    parser.add_argument("-o", "--output", type=Path, default=None,
                        help="where to write the LR png (one --degradation only; default the bundled file)")
    args = parser.parse_args()
    kinds = list(OUTPUTS) if args.degradation == "both" else [args.degradation]
    if args.output and len(kinds) > 1:
        parser.error("-o needs one --degradation")
    for kind in kinds:
        lr = make_example(kind, args.photo, args.output)
        print(f"wrote {args.output or OUTPUTS[kind]} ({lr.shape[2]}x{lr.shape[1]}, {kind})")


if __name__ == "__main__":
    main()
