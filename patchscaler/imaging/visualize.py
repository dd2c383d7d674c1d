"""Pictures of what the sampler did: the group (and step count) of every patch, or the
GRM's confidence map, over a dimmed copy of the upscaled image, with a legend strip.

    from patchscaler.imaging.visualize import group_map_image
    hr, gmap = patchscaler.upscale(lr, return_groups=True)
    group_map_image(hr, gmap).save("groups.png")

Meant to be read at a glance: the image stays recognisable (dimmed greyscale), each
group is one flat colour from a colour-blind-safe palette (Okabe–Ito: blue = easy,
yellow = medium, vermillion = hard), and the legend says how many steps and patches
each colour stands for and how much work that saved against uniform sampling.
"""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw, ImageFont
from torch import Tensor

from patchscaler.imaging.convert import to_integer
from patchscaler.inference.group_map import GroupMap

__all__ = ["group_map_image", "confidence_image", "groups_over_output", "GROUP_COLOURS"]

# Okabe–Ito colours (distinct under the common colour-vision deficiencies), in group
# order easy → hard: sky blue, yellow, vermillion; more groups cycle through the rest.
GROUP_COLOURS = [(86, 180, 233), (240, 228, 66), (213, 94, 0), (0, 158, 115), (204, 121, 167), (230, 159, 0)]
# Control points of a perceptually ordered ramp for the confidence map (dark purple =
# low confidence = hard, through teal, to yellow = high confidence = easy; like viridis).
_RAMP = np.array(
    [(68, 1, 84), (59, 82, 139), (33, 145, 140), (94, 201, 98), (253, 231, 37)], dtype=np.float32
)
MIN_PICTURE_SIDE = 320  # small images are enlarged (nearest) to at least this, for the legend to fit
OVERLAY_ALPHA = 0.45
STRETCH_BELOW = 0.25  # confidence maps flatter than this get their colour range stretched


def _font(size: int) -> ImageFont.ImageFont:
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1: fixed-size bitmap font
        return ImageFont.load_default()


def _dimmed(hr: Tensor) -> np.ndarray:
    """``[3,H,W]`` float [0,1] → ``[H,W,3]`` float32 greyscale at reduced contrast, for a backdrop."""
    rgb = hr.detach().float().cpu().clamp(0, 1)
    luma = 0.299 * rgb[0] + 0.587 * rgb[1] + 0.114 * rgb[2]
    grey = (0.08 + 0.8 * luma).numpy()
    return np.repeat(grey[..., None], 3, axis=2) * 255.0


def _enlarge(arr: np.ndarray, factor: int) -> np.ndarray:
    return arr if factor == 1 else arr.repeat(factor, 0).repeat(factor, 1)


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}es" if word.endswith("ch") else f"{n} {word}s"


def _display_factor(h: int, w: int) -> int:
    return max(1, -(-MIN_PICTURE_SIDE // max(h, w)))


def _with_legend(picture: np.ndarray, rows: list[tuple[object, str]], title: str) -> Image.Image:
    """Put ``picture`` ([H,W,3] uint8) above a legend strip.

    ``rows``: (swatch, text) where swatch is an RGB tuple, an ``[h,w,3]`` uint8 array
    (a colour bar) or None (text only).
    """
    font_size = 14
    font = _font(font_size)
    line = font_size + 8
    pad = 8
    h, w = picture.shape[:2]
    measure = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    text_w = max(measure.textlength(t, font=font) for _, t in rows + [(None, title)])
    swatch_w = max([s.shape[1] for s, _ in rows if isinstance(s, np.ndarray)] + [line])
    width = max(w, int(pad * 3 + swatch_w + text_w))
    height = h + pad * 2 + line * (len(rows) + 1)
    canvas = Image.new("RGB", (width, height), (24, 24, 24))
    canvas.paste(Image.fromarray(picture), (0, 0))
    draw = ImageDraw.Draw(canvas)
    y = h + pad
    draw.text((pad, y + 3), title, fill=(235, 235, 235), font=font)
    y += line
    for swatch, text in rows:
        if swatch is None:
            x_text = pad
        elif isinstance(swatch, np.ndarray):
            canvas.paste(Image.fromarray(swatch), (pad, y + 3))
            x_text = pad * 2 + swatch.shape[1]
        else:
            draw.rectangle([pad, y + 3, pad + line - 6, y + line - 3], fill=tuple(swatch), outline=(235, 235, 235))
            x_text = pad * 2 + line - 6
        draw.text((x_text, y + 3), text, fill=(235, 235, 235), font=font)
        y += line
    return canvas


def group_map_image(hr: Tensor, gmap: GroupMap) -> Image.Image:
    """Picture of the group of every patch over ``hr`` (``[3,H,W]`` float [0,1], the upscaled image).

    Falls back to :func:`confidence_image` when the sampler sampled nothing (``"none"``).
    Pixels take the colour of the patch whose window weighs most there (so overlapping
    patches split the overlap down the middle), with a thin outline where groups meet.
    """
    if not gmap.sampled:
        return confidence_image(hr, gmap)
    s = gmap.scale
    groups = gmap.group_pixels.cpu().numpy()  # [h, w] LR grid
    factor = _display_factor(*hr.shape[-2:])
    cell = _enlarge(groups, s * factor)
    back = _enlarge(_dimmed(hr), factor)
    colours = np.array([GROUP_COLOURS[i % len(GROUP_COLOURS)] for i in range(len(gmap.group_names))], np.float32)
    overlay = colours[np.clip(cell, 0, len(colours) - 1)]
    picture = back * (1 - OVERLAY_ALPHA) + overlay * OVERLAY_ALPHA
    # Outline group borders so neighbouring groups read as regions, not a blur.
    edge = np.zeros(cell.shape, bool)
    edge[1:, :] |= cell[1:, :] != cell[:-1, :]
    edge[:, 1:] |= cell[:, 1:] != cell[:, :-1]
    picture[edge] = picture[edge] * 0.35
    picture = to_integer(picture / np.float32(255), np.uint8)

    steps = gmap.steps.cpu().numpy()
    group = gmap.group.cpu().numpy()
    total = len(group)
    rows = []
    for g, name in enumerate(gmap.group_names):
        members = group == g
        n = int(members.sum())
        st = sorted(set(int(v) for v in steps[members]))
        if not st:
            text = f"{name}: no patches"
        else:
            st_text = f"{st[0]}-{st[-1]} steps" if len(st) > 1 else _plural(st[0], "step")
            text = f"{name}: {st_text}, {_plural(n, 'patch')} ({100.0 * n / max(total, 1):.0f}%)"
        rows.append((tuple(int(c) for c in colours[g]), text))
    work = int(steps.sum())
    uniform = int(steps.max(initial=0)) * total
    saving = f", {uniform / work:.1f}x fewer than all at {int(steps.max(initial=0))}" if work and uniform > work else ""
    title = f"{gmap.sampler}: {_plural(total, 'patch')}, {work} denoiser patch-steps{saving}"
    return _with_legend(picture, rows, title)


def _ramp(values: np.ndarray) -> np.ndarray:
    """Values in [0,1] → RGB float32 from the purple–teal–yellow ramp."""
    x = np.clip(values, 0, 1) * (len(_RAMP) - 1)
    lo = np.floor(x).astype(np.int64).clip(0, len(_RAMP) - 2)
    f = (x - lo)[..., None]
    return _RAMP[lo] * (1 - f) + _RAMP[lo + 1] * f


def confidence_image(hr: Tensor, gmap: GroupMap) -> Image.Image:
    """Picture of the GRM confidence map (per LR pixel, nearest-upsampled) over ``hr``.

    Low confidence (dark purple) is where the GRM expects its own error to be large:
    the patches PGS would give the most denoising steps. The colours span [0, 1]
    unless the map is nearly flat (1%–99% range under ``STRETCH_BELOW``); then they
    span that range, so the structure stays visible, and the legend says so.
    """
    s = gmap.scale
    conf = gmap.confidence[0].detach().float().cpu().numpy()
    factor = _display_factor(*hr.shape[-2:])
    back = _enlarge(_dimmed(hr), factor)
    lo, hi = (np.quantile(conf, [0.01, 0.99]) if conf.size else (0.0, 1.0))
    stretched = hi - lo < STRETCH_BELOW and hi - lo > 1e-6
    if not stretched:
        lo, hi = 0.0, 1.0
    overlay = _ramp((_enlarge(conf, s * factor) - lo) / (hi - lo))
    picture = to_integer((back * 0.45 + overlay * 0.55) / np.float32(255), np.uint8)
    bar = to_integer(_ramp(np.linspace(0, 1, 160, dtype=np.float32))[None].repeat(14, 0) / np.float32(255), np.uint8)
    q = np.quantile(conf, [0.1, 0.5, 0.9]) if conf.size else np.zeros(3)
    scale_text = f"{lo:.3g} = low (hard) ... {hi:.3g} = high (easy)"
    if stretched:
        scale_text += "  [colours stretched: flat map]"
    rows = [
        (bar, scale_text),
        (None, f"median {q[1]:.3g}; 10% of pixels below {q[0]:.3g}, 10% above {q[2]:.3g}"),
    ]
    title = f"GRM confidence per LR pixel (sampler {gmap.sampler}: no diffusion steps)"
    return _with_legend(picture, rows, title)


def groups_over_output(out: np.ndarray, gmap: GroupMap) -> Image.Image:
    """`group_map_image` over a written result ``out`` (an array of `read_image`'s family,
    uint8/uint16/float, grey or RGB, with or without alpha), at ×``gmap.scale`` even when
    the output was resized: the command's ``--save-groups`` and the web app's picture."""
    import torch

    from patchscaler.imaging.convert import to_float
    from patchscaler.inference.outsize import resize_output

    arr = to_float(out)
    if arr.ndim == 2:
        arr = arr[..., None]
    rgb = arr[..., :3] if arr.shape[2] >= 3 else np.repeat(arr[..., :1], 3, axis=2)
    hr = torch.from_numpy(np.ascontiguousarray(rgb)).permute(2, 0, 1)
    lr_h, lr_w = gmap.confidence.shape[-2:]
    return group_map_image(resize_output(hr, (lr_h * gmap.scale, lr_w * gmap.scale)), gmap)
