"""README picture: real-world inputs, Real-ESRGAN x4plus beside PatchScaler.

    python scripts/realworld_picture.py                      # -> docs/realworld/realsrset_compare.png
    python scripts/realworld_picture.py --dandelions --model bicubic --model real

For each of two RealSRSet photos (no ground truth; default Lincoln and chip), two rows:
the input enlarged ×4 with nearest neighbour, Real-ESRGAN x4plus (ncnn, CPU,
`patchscaler/train/teacher.py`) and PatchScaler (`patchscaler.upscale`, seed 0) with
each ``--model`` set given (default: the default set), each shown whole (fitted to a
common panel size, the zoomed region outlined), then below the same region of each at
``--zoom`` (nearest, so the pixels are the methods' own). A set runs its PGS when it has
a DiT, else its GRM alone (``sampler="none"``); the label says which.

``--dandelions`` makes instead the picture that may live in the repository (RealSRSet's
licence keeps its images out of it): a 512×512 crop of the CC0 dandelion photo (the
README example's crop, `scripts/make_example.py`), degraded to 128×128 by the seeded
real-world pipeline (`degrade_image(hr, "dandelions", --seed)`), with the HR crop as a
fourth panel -> docs/realworld/dandelions_real_compare.png.

The panel layout follows
`patchscaler.examples.compare` (dark sheet, label strip above each panel).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))

import patchscaler  # noqa: E402
from patchscaler.data.images import load_image  # noqa: E402

REALSRSET = REPO.parent / "shared" / "data" / "realworld" / "RealSRSet"
DEFAULT_OUTPUT = REPO / "docs" / "realworld" / "realsrset_compare.png"
# Zoomed regions in pixels of the ×4 output: (left, top, width, height); one zoom row each.
REGIONS = {
    "Lincoln.png": [(220, 170, 160, 160)],  # eyes and nose
    "chip.png": [(120, 150, 160, 160)],     # printed lettering
}
DANDELION_REGIONS = [(192, 192, 128, 128),  # seed tips against the meadow: edges and noise
                     (40, 250, 128, 128)]   # inside the seed head: fine texture or wax
PANEL = 320        # side of the whole-image panels
LABEL_HEIGHT = 22  # as patchscaler.examples.compare
GAP = 4
BG = (24, 24, 24)
OUTLINES = [(240, 228, 66), (86, 180, 233)]  # one colour per region (Okabe-Ito yellow, sky blue)


def _to_pil(img: torch.Tensor) -> Image.Image:
    arr = (img.detach().float().cpu().clamp(0, 1).permute(1, 2, 0).numpy() * 255 + 0.5).astype(np.uint8)
    return Image.fromarray(arr)


def _labelled(pic: Image.Image, label: str) -> Image.Image:
    out = Image.new("RGB", (pic.width, pic.height + LABEL_HEIGHT), BG)
    out.paste(pic, (0, LABEL_HEIGHT))
    ImageDraw.Draw(out).text((6, 5), label, fill=(235, 235, 235))
    return out


def _whole(img: Image.Image, regions: list[tuple[int, int, int, int]], label: str) -> Image.Image:
    f = PANEL / max(img.size)
    pic = img.resize((round(img.width * f), round(img.height * f)), Image.LANCZOS)
    for (left, top, w, h), colour in zip(regions, OUTLINES):
        ImageDraw.Draw(pic).rectangle([left * f, top * f, (left + w) * f - 1, (top + h) * f - 1], outline=colour, width=2)
    return _labelled(pic, label)


def _zoom(img: Image.Image, region: tuple[int, int, int, int], zoom: int, label: str) -> Image.Image:
    left, top, w, h = region
    return _labelled(img.crop((left, top, left + w, top + h)).resize((w * zoom, h * zoom), Image.NEAREST), label)


def _row(panels: list[Image.Image]) -> Image.Image:
    height = max(p.height for p in panels)
    row = Image.new("RGB", (sum(p.width for p in panels) + GAP * (len(panels) - 1), height), BG)
    x = 0
    for p in panels:
        row.paste(p, (x, 0))
        x += p.width + GAP
    return row


def dandelions_input(seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(LR, HR): the README example's CC0 crop and its seeded real-world degradation (seed 0:
    the bundled `dandelions_real_lr.png`)."""
    from make_example import degraded, example_hr

    hr = example_hr()
    return degraded(hr, "real", seed), hr


def _patchscaler(lr: torch.Tensor, model: str) -> tuple[torch.Tensor, str]:
    """(SR, label) of model set ``model``: its PGS when it has a DiT, else its GRM alone."""
    from patchscaler.sampling.registry import sampler_available

    if sampler_available("pgs", model):
        sr, groups = patchscaler.upscale(lr, model=model, sampler="pgs", seed=0, device="cpu", return_groups=True)
        return sr, f"PatchScaler '{model}' PGS ({groups.evaluations} patch-steps)"
    return patchscaler.upscale(lr, model=model, sampler="none", device="cpu"), f"PatchScaler '{model}' (GRM only: no DiT yet)"


def picture(names: list[str], output: Path, models: list[str], threads: int, zoom: int,
            dandelions_seed: int | None = None) -> Path:
    from patchscaler.train.teacher import RealESRGAN

    torch.set_num_threads(threads)
    net = RealESRGAN(threads=threads, tile=512)
    rows = []
    jobs = [(name, load_image(REALSRSET / name), None) for name in names]
    if dandelions_seed is not None:
        lr, hr = dandelions_input(dandelions_seed)
        jobs = [(f"dandelions (CC0), real degr. seed {dandelions_seed}", lr, hr)]
    for name, lr, hr in jobs:
        regions = DANDELION_REGIONS if hr is not None else REGIONS.get(name)
        if regions is None:  # default: the centre quarter of the output
            h, w = 4 * lr.shape[-2], 4 * lr.shape[-1]
            regions = [(w * 3 // 8, h * 3 // 8, w // 4, h // 4)]
        nearest = lr.repeat_interleave(4, dim=-2).repeat_interleave(4, dim=-1)
        with torch.inference_mode():
            esr = net(lr)
            ours = [_patchscaler(lr, m) for m in models]
        imgs = [
            (_to_pil(nearest), f"input {lr.shape[-1]}x{lr.shape[-2]}, nearest x4"),
            (_to_pil(esr), "Real-ESRGAN x4plus"),
        ] + [(_to_pil(sr), label) for sr, label in ours] + ([(_to_pil(hr), "HR (ground truth)")] if hr is not None else [])
        rows.append(_row([_whole(im, regions, label) for im, label in imgs]))
        for k, region in enumerate(regions):
            colour = ("yellow", "blue")[k]
            rows.append(_row([_zoom(im, region, zoom, f"{colour} box, zoom x{zoom}" if i else name)
                              for i, (im, _) in enumerate(imgs)]))
        print(f"{name}: done", flush=True)
    sheet = Image.new("RGB", (max(r.width for r in rows), sum(r.height for r in rows) + GAP * (len(rows) - 1)), BG)
    y = 0
    for r in rows:
        sheet.paste(r, (0, y))
        y += r.height + GAP
    output.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(output)
    return output


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--images", nargs="+", default=list(REGIONS), help="RealSRSet file names")
    p.add_argument("-o", "--output", type=Path, default=DEFAULT_OUTPUT)
    p.add_argument("--model", action="append", default=None,
                   help="patchscaler model set, one column each (repeatable; default: the default set)")
    p.add_argument("--threads", type=int, default=1, help="torch and ncnn threads (1: 2 oversubscribe a shared 2-core machine)")
    p.add_argument("--zoom", type=int, default=2)
    p.add_argument("--dandelions", action="store_true", help="the CC0 dandelion crop, degraded (see above), instead of RealSRSet")
    p.add_argument("--seed", type=int, default=0, help="degradation seed of --dandelions")
    a = p.parse_args(argv)
    output = a.output
    if a.dandelions and output == DEFAULT_OUTPUT:
        output = DEFAULT_OUTPUT.with_name("dandelions_real_compare.png")
    from patchscaler.checkpoints import DEFAULT_MODEL

    models = a.model or [DEFAULT_MODEL]
    print(f"wrote {picture(a.images, output, models, a.threads, a.zoom, a.seed if a.dandelions else None)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
