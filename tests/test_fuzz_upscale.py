"""Fuzzing ``patchscaler.upscale`` (hypothesis) over what callers pass: tensors and arrays
of any rank, channel count, size (0 included), dtype and value range (NaN/inf included),
PIL images, lists mixing them, and the output-size options. Every call must either
return the right shape (finite, in [0, 1], the input's kind and dtype) or raise a
ValueError/TypeError that starts with the argument's name, exactly when an independent
rule says the input is bad. The GRM-only path (``sampler="none"``) on tiny random
models keeps each example to milliseconds."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

import patchscaler

try:  # the fixture lives in conftest.py once the weights refactor lands
    from test_api import fake_models  # noqa: F401
except ImportError:  # pragma: no cover
    pass

TOL = 1e-3  # patchscaler.imaging.convert.RANGE_TOLERANCE
TORCH_DTYPES = [torch.float32, torch.float16, torch.bfloat16, torch.float64, torch.uint8, torch.int64, torch.bool]
NP_DTYPES = [np.uint8, np.uint16, np.float16, np.float32, np.float64, np.int32, np.int8, np.bool_]
RANGES = [(0.0, 1.0), (0.0, 1.0), (0.0, 1.0), (-0.5, 1.0), (0.0, 2.0), (0.0, 255.0)]
SPECIALS = [None, None, None, float("nan"), float("inf"), float("-inf")]


@st.composite
def values(draw, shape):
    """float64 values of ``shape``: a range, and maybe one NaN/inf at a random place."""
    lo, hi = draw(st.sampled_from(RANGES))
    seed = draw(st.integers(0, 2**31 - 1))
    v = np.random.default_rng(seed).uniform(lo, hi, size=shape)
    special = draw(st.sampled_from(SPECIALS))
    if special is not None and v.size:
        v.flat[draw(st.integers(0, v.size - 1))] = special
    return v


def _range_ok(t: np.ndarray) -> bool:
    return t.size == 0 or (bool(np.isfinite(t).all()) and t.min() >= -TOL and t.max() <= 1 + TOL)


@st.composite
def tensors(draw, batched=None):
    rank = draw(st.sampled_from([2, 3, 3, 3, 4, 4, 5]) if batched is None else st.just(4 if batched else 3))
    lead = [draw(st.integers(0, 3))] if rank >= 4 else []
    lead = [1] * (rank - 4) + lead if rank > 4 else lead
    c = [draw(st.sampled_from([1, 3, 3, 3, 4]))] if rank >= 3 else []
    h, w = draw(st.integers(0, 7)), draw(st.integers(0, 7))
    shape = tuple(lead + c + [h, w])
    dtype = draw(st.sampled_from(TORCH_DTYPES))
    v = draw(values(shape))
    if dtype.is_floating_point:
        x = torch.from_numpy(v).to(dtype)
    else:
        x = torch.from_numpy(np.nan_to_num(v, nan=0, posinf=1, neginf=0).clip(0, 1)).to(dtype)
    cast = x.double().numpy() if x.is_floating_point() else None
    if not dtype.is_floating_point:
        bad = TypeError
    elif rank not in (3, 4) or shape[-3] != 3 or h == 0 or w == 0 or (rank == 4 and shape[0] == 0):
        bad = ValueError
    elif not _range_ok(cast):
        bad = ValueError
    else:
        bad = None
    return x, bad


@st.composite
def arrays(draw):
    rank = draw(st.sampled_from([1, 2, 3, 3, 3, 4]))
    h, w = draw(st.integers(0, 7)), draw(st.integers(0, 7))
    shape = (h, w, draw(st.sampled_from([1, 2, 3, 4, 5]))) if rank == 3 else (h, w, 3, 1)[:rank]
    dtype = np.dtype(draw(st.sampled_from(NP_DTYPES)))
    v = draw(values(shape))
    if dtype.kind == "f":
        a = v.astype(dtype)
    elif dtype.kind == "b":
        a = np.zeros(shape, bool)
    else:
        peak = np.iinfo(dtype).max
        a = (np.nan_to_num(v, nan=0, posinf=1, neginf=0).clip(0, 1) * peak).astype(dtype)
    if dtype not in (np.uint8, np.uint16) and dtype.kind != "f":
        bad = TypeError
    elif rank not in (2, 3) or (rank == 3 and shape[2] > 4) or h == 0 or w == 0:
        bad = ValueError
    elif dtype.kind == "f" and not _range_ok(a.astype(np.float64)):
        bad = ValueError
    else:
        bad = None
    return a, bad


@st.composite
def pil_images(draw):
    mode = draw(st.sampled_from(["RGB", "L", "RGBA", "LA", "P", "I;16", "CMYK", "1"]))
    w, h = draw(st.integers(1, 6)), draw(st.integers(1, 6))
    seed = draw(st.integers(0, 2**31 - 1))
    rgb = Image.fromarray(np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8))
    if mode == "P":
        im = rgb.quantize(4)
    elif mode == "I;16":
        im = Image.fromarray(np.asarray(rgb)[..., 0].astype(np.uint16) * 257)
    else:
        im = rgb.convert(mode)
    return im, None


def single():
    return st.one_of(tensors(), arrays(), pil_images())


@st.composite
def inputs(draw):
    kind = draw(st.sampled_from(["single", "single", "list"]))
    if kind == "single":
        return draw(single())
    items = draw(st.lists(single(), min_size=0, max_size=3))
    xs = [x for x, _ in items]
    bad = ValueError if not items else None
    for x, b in items:
        if bad is None and b is not None:
            bad = b
        elif bad is None and isinstance(x, torch.Tensor) and x.dim() == 4:
            bad = ValueError  # a batch inside a list
    return xs, bad


def _size(x):
    if isinstance(x, torch.Tensor):
        return tuple(x.shape[-2:])
    if isinstance(x, np.ndarray):
        return x.shape[:2]
    return (x.height, x.width)


def _check_one(x, y, outscale):
    h, w = _size(x)
    want = (h * 4, w * 4) if outscale is None else (max(1, round(h * outscale)), max(1, round(w * outscale)))
    if isinstance(x, torch.Tensor):
        assert isinstance(y, torch.Tensor) and y.dtype == x.dtype
        assert y.shape == x.shape[:-2] + want
        yf = y.double()
        assert bool(torch.isfinite(yf).all()) and float(yf.min()) >= 0 and float(yf.max()) <= 1
    elif isinstance(x, np.ndarray):
        assert isinstance(y, np.ndarray) and y.dtype == x.dtype
        assert y.shape == want + x.shape[2:]
        if y.dtype.kind == "f":
            assert np.isfinite(y).all() and y.min() >= 0 and y.max() <= 1
    else:
        assert isinstance(y, Image.Image) and (y.height, y.width) == want


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(case=inputs(), outscale=st.sampled_from([None, None, 2, 3.5]))
def test_upscale_fuzz(fake_models, case, outscale):
    x, bad = case
    try:
        y = patchscaler.upscale(x, sampler="none", outscale=outscale)
    except (ValueError, TypeError) as exc:
        assert bad is not None, f"valid input refused: {exc}"
        assert isinstance(exc, bad), f"{type(exc).__name__} instead of {bad.__name__}: {exc}"
        assert str(exc).startswith("x"), exc  # names the argument
        assert "\n" not in str(exc).strip()
        return
    assert bad is None, f"bad input ({bad.__name__}) accepted"
    if isinstance(x, list):
        assert isinstance(y, list) and len(y) == len(x)
        for xi, yi in zip(x, y):
            _check_one(xi, yi, outscale)
    else:
        _check_one(x, y, outscale)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
def test_low_and_high_precision_tensors_at_the_range_edges(fake_models, dtype):
    x = torch.tensor([0.0, 1.0]).repeat(3, 2, 1).to(dtype)  # [3, 2, 2]
    y = patchscaler.upscale(x, sampler="none")
    assert y.dtype == dtype and y.shape == (3, 8, 8) and bool(torch.isfinite(y).all())
