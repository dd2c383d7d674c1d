"""The one conversion between the pixel kinds the library meets: float tensors, PIL
images, and channels-last numpy arrays of uint8, uint16 or float.

* **Levels** (numpy, no torch): :func:`to_float` (integer levels → float in [0, 1],
  divided by the dtype's peak, 255 or 65535), :func:`to_integer` (float in [0, 1] →
  levels, clamped), :func:`requantize` (uint16 ↔ uint8).
* **Tensors**: :func:`planes_to_array` (``[C, r, W]`` rows of the pipeline → ``[r, W, C]``
  array of a dtype: what the output buffer writes), :func:`tensor_to_uint8`,
  :func:`quantize_levels` (a float image rounded to uint8 levels, still float: what
  saving a PNG does).
* **Inputs of** ``upscale()``: :func:`to_items` turns a tensor, array, PIL image or a
  list of them into :class:`Item` s — the float32 RGB the pipeline takes, the alpha
  channel apart, and how to give the result back in the input's kind (dtype, layout,
  channels, PIL mode, and for PIL its ICC profile and EXIF, `image_files.keep_pil_info`).

**The rounding rule**, everywhere a float becomes integer levels: clamp to [0, 1], then
``floor(x · peak + 0.5)`` — round half up, which for values ≥ 0 is MATLAB's
``im2uint8``/``im2uint16`` (half away from zero). The super-resolution protocol this
project follows is MATLAB's (`data.resize` is MATLAB's bicubic, `metrics.ycbcr` rounds
like ``im2uint8``), the output buffer already rounded so, and ``torch.round``'s half to
even exists only to avoid a statistical bias over many roundings, which one rounding of
an image does not have. The arithmetic happens in the input's float precision (float32
for the pipeline's rows), so the same float always gives the same level.

torch is imported inside the functions that need it: `image_files` (imported by the
command before torch) uses the level functions.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable

import numpy as np

if TYPE_CHECKING:
    from torch import Tensor

    from patchscaler.inference.output_buffer import ArrayOutput

__all__ = [
    "Item",
    "RANGE_TOLERANCE",
    "peak",
    "planes_to_array",
    "quantize_levels",
    "requantize",
    "tensor_to_uint8",
    "to_float",
    "to_integer",
    "to_items",
    "upscale_alpha",
]

_PEAKS = {np.dtype(np.uint8): 255.0, np.dtype(np.uint16): 65535.0}
# Inputs in [0, 1] that went through fp16/bf16 arithmetic can land a little outside.
RANGE_TOLERANCE = 1e-3


# ------------------------------------------------------------------------------ levels


def peak(dtype: Any) -> float | None:
    """The value of full intensity in ``dtype``: 255.0 (uint8), 65535.0 (uint16), None (float)."""
    return _PEAKS.get(np.dtype(dtype))


def to_integer(x: np.ndarray, dtype: Any) -> np.ndarray:
    """Float array in [0, 1] → ``dtype`` (uint8/uint16) levels by the module's rounding
    rule: clamped, then ``floor(x · peak + 0.5)``, in ``x``'s own float precision."""
    top = peak(dtype)
    if top is None:
        raise TypeError(f"to_integer makes uint8 or uint16 levels, not {np.dtype(dtype)}")
    x = np.asarray(x)
    return np.floor(np.clip(x, 0, 1) * x.dtype.type(top) + x.dtype.type(0.5)).astype(dtype)


def to_float(arr: np.ndarray, dtype: Any = np.float32) -> np.ndarray:
    """uint8/uint16 levels → float ``dtype`` in [0, 1] (divided by the peak); a float array
    is only cast."""
    top = peak(arr.dtype)
    out = np.asarray(arr).astype(dtype)
    return out if top is None else out / out.dtype.type(top)


def requantize(arr: np.ndarray, dtype: Any) -> np.ndarray:
    """Integer levels of one depth → another (uint16 → uint8 for an 8-bit file format)."""
    if np.dtype(arr.dtype) == np.dtype(dtype):
        return arr
    return to_integer(to_float(arr), dtype)


# ----------------------------------------------------------------------------- tensors


def planes_to_array(planes: Tensor, dtype: Any) -> np.ndarray:
    """``[C, r, W]`` float in [0, 1] → ``[r, W, C]`` numpy of ``dtype``: the rounding rule
    for uint8/uint16, a plain cast (after clamping) for float dtypes."""
    arr = planes.float().cpu().clamp(0, 1).permute(1, 2, 0).numpy()
    return to_integer(arr, dtype) if peak(dtype) is not None else arr.astype(dtype)


def tensor_to_uint8(img: Tensor) -> np.ndarray:
    """``[3, H, W]`` / ``[1, H, W]`` (→ ``[H, W, 3]`` / ``[H, W]``) or ``[H, W]`` float in
    [0, 1] → uint8 array by the rounding rule."""
    t = img.detach().float().cpu()
    if t.dim() == 3:
        arr = planes_to_array(t, np.uint8)
        return arr[..., 0] if arr.shape[2] == 1 else arr
    return to_integer(t.numpy(), np.uint8)


def quantize_levels(x: Tensor) -> Tensor:
    """Float image in [0, 1] rounded to uint8 levels and kept float (``k / 255``) by the
    rounding rule: what saving it as an 8-bit file and reading it back gives."""
    import torch

    return torch.floor(x.clamp(0, 1) * 255.0 + 0.5) / 255.0


def upscale_alpha(alpha: Tensor, scale: int) -> Tensor:
    """Alpha is not an image the model knows: MATLAB bicubic ×scale, clamped. ``[1,h,w]`` → ``[1,sh,sw]``."""
    from patchscaler.data.resize import bicubic_upscale

    return bicubic_upscale(alpha.float(), scale).clamp(0, 1)


# -------------------------------------------------------------------- upscale() inputs


@dataclass
class Item:
    """One image converted for the pipeline and how to turn its result back.

    ``rgb``: float32 ``[3, h, w]`` in [0, 1] (CPU or the input's device);
    ``alpha``: float32 ``[1, h, w]`` or None; ``restore(hr, alpha_hr)`` gives the output
    in the input's kind from ``hr``: a float ``[3, 4h, 4w]`` tensor, or the buffer
    ``output(4h, 4w)`` made (an `ArrayOutput` the pipeline fills band by band, so array
    and PIL outputs never exist as a full-size float image).
    """

    rgb: Tensor
    alpha: Tensor | None
    restore: Callable[[Any, Tensor | None], Any]
    output: Callable[[int, int], ArrayOutput] | None = None


def check_float_values(t: Tensor, name: str) -> None:
    """``t`` finite and in [0, 1] (within `RANGE_TOLERANCE`), else ValueError naming ``name``."""
    import torch

    if t.numel() == 0:
        return
    if not bool(torch.isfinite(t).all()):
        raise ValueError(f"{name} contains NaN or infinite values")
    lo, hi = float(t.min()), float(t.max())
    if lo < -RANGE_TOLERANCE or hi > 1 + RANGE_TOLERANCE:
        raise ValueError(
            f"{name} must hold values in [0, 1], got min {lo:.4g}, max {hi:.4g} "
            "(divide 8-bit data by 255)"
        )


def _check_size(h: int, w: int, name: str) -> None:
    if h == 0 or w == 0:
        raise ValueError(f"{name} is empty (height {h}, width {w})")


def from_tensor(x: Tensor, name: str) -> tuple[list[Item], bool]:
    """Tensor ``[3,H,W]`` / ``[B,3,H,W]`` float in [0,1] → items; returns (items, batched)."""
    import torch

    if not torch.is_floating_point(x):
        raise TypeError(
            f"{name} must be a float tensor with values in [0, 1], got dtype {x.dtype} "
            "(for 8-bit data use x.float() / 255)"
        )
    if x.dim() not in (3, 4):
        raise ValueError(f"{name} must have shape [3, H, W] or [B, 3, H, W], got {tuple(x.shape)}")
    if x.shape[-3] != 3:
        raise ValueError(
            f"{name} must have 3 (RGB) channels in dim {x.dim() - 3}, got shape {tuple(x.shape)} "
            "(repeat a greyscale channel with x.expand(..., 3, H, W))"
        )
    if x.dim() == 4 and x.shape[0] == 0:
        raise ValueError(f"{name} is an empty batch (shape {tuple(x.shape)})")
    _check_size(x.shape[-2], x.shape[-1], name)
    check_float_values(x.detach(), name)
    batched = x.dim() == 4
    xb = x.detach() if batched else x.detach().unsqueeze(0)
    out_dtype, out_device = x.dtype, x.device

    def restore(hr: Tensor, alpha: Tensor | None) -> Tensor:
        return hr.to(device=out_device, dtype=out_dtype)

    return [Item(img.float().clamp(0, 1), None, restore) for img in xb], batched


def from_array(a: np.ndarray, name: str) -> Item:
    """Channels-last array → item: ``[H,W]`` or ``[H,W,1]`` grey, ``[H,W,2]`` grey + alpha,
    ``[H,W,3]`` RGB, ``[H,W,4]`` RGBA; uint8, uint16, or float in [0, 1].

    The output has the same dtype, layout and channels.
    """
    import torch

    from patchscaler.inference.output_buffer import ArrayOutput

    if peak(a.dtype) is None and a.dtype not in (np.float16, np.float32, np.float64):
        raise TypeError(f"{name} must be a uint8, uint16 or float array, got dtype {a.dtype}")
    if a.ndim not in (2, 3) or (a.ndim == 3 and a.shape[2] not in (1, 2, 3, 4)):
        raise ValueError(
            f"{name} must be an array of shape [H, W], [H, W, 3] or [H, W, 4] (channels last), got {a.shape}"
        )
    _check_size(a.shape[0], a.shape[1], name)
    t = torch.from_numpy(to_float(np.ascontiguousarray(a)))
    if peak(a.dtype) is None:
        check_float_values(t, name)
        t = t.clamp(0, 1)
    chw = (t if t.dim() == 3 else t[..., None]).permute(2, 0, 1)
    colour = 3 if chw.shape[0] >= 3 else 1
    rgb = chw[:colour].expand(3, -1, -1).contiguous()
    alpha = chw[colour:colour + 1].contiguous() if chw.shape[0] in (2, 4) else None
    in_dtype, squeeze = a.dtype, a.ndim == 2

    def output(height: int, width: int) -> ArrayOutput:
        # Greyscale in → the mean of the three output channels (the model works in RGB).
        return ArrayOutput(height, width, in_dtype, grey=colour == 1, alpha=alpha is not None)

    def restore(hr: Tensor | ArrayOutput, alpha_hr: Tensor | None) -> np.ndarray:
        if isinstance(hr, torch.Tensor):  # resized (outscale): quantized here, all at once
            buf = output(*hr.shape[-2:])
            buf.write(0, hr)
            hr = buf
        if alpha_hr is not None:
            hr.write_alpha(alpha_hr)
        return np.ascontiguousarray(hr.array[..., 0]) if squeeze else hr.array  # no copy: the last axis is 1

    return Item(rgb, alpha, restore, output)


def from_pil(im: Any, name: str) -> Item:
    """PIL image → item; the output has the same mode (palette and 1-bit images come
    back as RGB(A)/L, CMYK and other colour spaces as RGB, 32-bit "I"/"F" as such) and
    the input's ICC profile and EXIF in ``info`` (`image_files.keep_pil_info`)."""
    from patchscaler.imaging.image_files import keep_pil_info

    item = _from_pil_pixels(im, name)
    return Item(item.rgb, item.alpha, lambda hr, a: keep_pil_info(im, item.restore(hr, a)), item.output)


def _from_pil_pixels(im: Any, name: str) -> Item:
    from PIL import Image

    from patchscaler.imaging.image_files import PALETTE_MODES, flatten_palette

    mode = im.mode
    _check_size(im.height, im.width, name)
    if mode.startswith("I;16"):
        item = from_array(np.asarray(im).astype(np.uint16), name)
        return Item(item.rgb, None, lambda hr, a: Image.fromarray(item.restore(hr, None)), item.output)  # uint16 → I;16
    if mode in ("I", "F"):
        # "I" from PIL is how 16-bit greyscale PNGs often open: values 0..65535.
        top = 65535.0 if mode == "I" else 1.0
        arr = (np.asarray(im).astype(np.float64) / top).clip(0, 1).astype(np.float32)
        item = from_array(arr, name)

        def restore_if(hr: Tensor, a: Tensor | None) -> Any:
            out = item.restore(hr, None).astype(np.float64)
            return Image.fromarray(to_integer(out, np.uint16).astype(np.int32) if mode == "I" else out.astype(np.float32))

        return Item(item.rgb, None, restore_if, item.output)
    if mode in PALETTE_MODES:
        im = flatten_palette(im)
    elif mode not in ("L", "LA", "RGB", "RGBA"):
        im = im.convert("RGB")  # CMYK, YCbCr, LAB, HSV, RGBX: out as RGB
    out_mode = im.mode
    item = from_array(np.asarray(im), name)
    return Item(item.rgb, item.alpha, lambda hr, a: Image.fromarray(item.restore(hr, a), out_mode), item.output)


def _is_pil(x: Any) -> bool:
    try:
        from PIL import Image
    except ImportError:  # pragma: no cover - pillow is a dependency
        return False
    return isinstance(x, Image.Image)


def to_items(x: Any, name: str) -> tuple[list[Item], str]:
    """``upscale()``'s input → items, and how to pack the results: "single", "batch" or "list"."""
    import torch

    if isinstance(x, torch.Tensor):
        items, batched = from_tensor(x, name)
        return items, ("batch" if batched else "single")
    if isinstance(x, np.ndarray):
        return [from_array(x, name)], "single"
    if _is_pil(x):
        return [from_pil(x, name)], "single"
    if isinstance(x, (list, tuple)):
        if len(x) == 0:
            raise ValueError(f"{name} is an empty list")
        items = []
        for i, xi in enumerate(x):
            if isinstance(xi, (list, tuple)):
                raise TypeError(f"{name}[{i}] is a {type(xi).__name__}; nested lists are not supported")
            sub, kind = to_items(xi, f"{name}[{i}]")
            if kind == "batch":
                raise ValueError(f"{name}[{i}] is a batch; a list must hold single images ([3, H, W])")
            items.extend(sub)
        return items, "list"
    raise TypeError(
        f"{name} must be a torch.Tensor, PIL.Image.Image, numpy array, or a list of them; "
        f"got {type(x).__name__}"
    )
