"""Side-by-side detail of the bundled example: bicubic, the `bicubic` set's GRM alone and
PatchScaler (PGS), and the original photo, one region zoomed. The example is a clean
bicubic downscale, so this picture names the set made for such inputs rather than
following the default set.

    python scripts/compare.py [OUTPUT] [--photo PHOTO]

OUTPUT defaults to ``docs/example/dandelions_compare.png``. The original is the HR
crop the example was made from (`make_example`), read from the CC0 source photo in
``../shared/data/train/photos`` (the one image of the training data that may be shown
in the repository). That photo is one of the training photos, so this picture shows
what the methods do, not how they generalise: the benchmark numbers are in
``benchmarks/results/eval-pgs-x4.md``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from PIL import Image, ImageDraw

from patchscaler.data.images import load_image
from patchscaler.data.resize import bicubic_upscale
from patchscaler.imaging.convert import tensor_to_uint8
from patchscaler.examples import EXAMPLE_LR
from make_example import DEFAULT_PHOTO, REPO_ROOT, example_hr  # scripts/make_example.py

DEFAULT_OUTPUT = REPO_ROOT / "docs" / "example" / "dandelions_compare.png"
# The zoomed region, in HR pixels of the 512×512 output: seed hairs against the meadow.
REGION = (232, 150, 160, 160)  # left, top, width, height
ZOOM = 2
LABEL_HEIGHT = 22


def _panel(img: torch.Tensor, label: str) -> Image.Image:
    left, top, w, h = REGION
    crop = img[:, top : top + h, left : left + w].clamp(0, 1)
    arr = tensor_to_uint8(crop)
    pic = Image.fromarray(arr).resize((w * ZOOM, h * ZOOM), Image.NEAREST)
    out = Image.new("RGB", (pic.width, pic.height + LABEL_HEIGHT), (24, 24, 24))
    out.paste(pic, (0, LABEL_HEIGHT))
    ImageDraw.Draw(out).text((6, 5), label, fill=(235, 235, 235))
    return out


def compare(output: Path = DEFAULT_OUTPUT, photo: Path = DEFAULT_PHOTO) -> Path:
    """Write the comparison picture; returns its path."""
    import patchscaler

    lr = load_image(EXAMPLE_LR)
    hr = example_hr(photo)
    pgs, groups = patchscaler.upscale(lr, model="bicubic", sampler="pgs", return_groups=True)
    panels = [
        _panel(bicubic_upscale(lr[None], 4)[0], "bicubic"),
        _panel(patchscaler.upscale(lr, model="bicubic", sampler="none"), "GRM alone"),
        _panel(pgs, f"PatchScaler PGS ({groups.evaluations} patch-steps)"),
        _panel(hr, "original photo"),
    ]
    gap = 4
    sheet = Image.new("RGB", (sum(p.width for p in panels) + gap * (len(panels) - 1), panels[0].height), (24, 24, 24))
    x = 0
    for p in panels:
        sheet.paste(p, (x, 0))
        x += p.width + gap
    output.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(output)
    return output


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python scripts/compare.py", description=__doc__.split("\n")[0])
    p.add_argument("output", nargs="?", type=Path, default=DEFAULT_OUTPUT)
    p.add_argument("--photo", type=Path, default=DEFAULT_PHOTO, help="the CC0 source photo of the example")
    a = p.parse_args(argv)
    print(f"wrote {compare(a.output, a.photo)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
