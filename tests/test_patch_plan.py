"""Patch planner: coverage of any image size, padding, the window, and the
round trip blend(gather(x)) == x."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from helpers import DEVICES
from patchscaler.ops.patches import blend_patches, gather_patches
from patchscaler.inference.patch_plan import (
    axis_origins,
    batch_origins,
    blend_window,
    pad_to_patch,
    padded_size,
    patch_origins,
    plan_patches,
)


@settings(max_examples=200, deadline=None)
@given(size=st.integers(1, 300), patch=st.integers(1, 40), data=st.data())
def test_axis_origins_cover_every_pixel(size, patch, data):
    overlap = data.draw(st.integers(0, patch - 1))
    ys = axis_origins(size, patch, overlap)
    length = max(size, patch)  # padded when the image is smaller than a patch
    assert ys[0] == 0 and ys == sorted(set(ys))
    assert all(0 <= y <= length - patch for y in ys)
    assert ys[-1] + patch == length  # the last patch is shifted inside, not dropped
    covered = torch.zeros(length, dtype=torch.bool)
    for y in ys:
        covered[y : y + patch] = True
    assert covered.all()
    # Neighbours overlap by at least `overlap`, and no more patches than needed.
    assert all(b - a <= patch - overlap for a, b in zip(ys, ys[1:]))
    if len(ys) > 1:
        assert ys[-2] + patch < length


def test_axis_origins_default_grid():
    ys = axis_origins(512, 16, 4)
    assert len(ys) == 43 and ys[:3] == [0, 12, 24] and ys[-2:] == [492, 496]
    assert axis_origins(16, 16, 4) == [0]
    assert axis_origins(5, 16, 4) == [0]


@pytest.mark.parametrize(
    "args, match",
    [((0, 16, 4), "size"), ((10, 0, 0), "patch"), ((10, 4, 4), "overlap"), ((10, 4, -1), "overlap")],
)
def test_axis_origins_rejects_bad_arguments(args, match):
    with pytest.raises(ValueError, match=match):
        axis_origins(*args)


def test_origins_and_batch_origins():
    o = patch_origins(20, 30, patch=(8, 16), overlap=(2, 4))
    assert o.dtype == torch.int64 and o.shape[1] == 2
    assert torch.equal(o[0], torch.tensor([0, 0])) and torch.equal(o[-1], torch.tensor([12, 14]))
    ob = batch_origins(o, 3)
    P = o.shape[0]
    assert ob.shape == (3 * P, 3) and ob.dtype == torch.int64
    assert torch.equal(ob[:, 0], torch.arange(3).repeat_interleave(P))
    assert torch.equal(ob[P:2 * P, 1:], o)
    with pytest.raises(ValueError, match="batch"):
        batch_origins(o, 0)


def test_pad_to_patch_replicates_edges():
    x = torch.arange(6.0).reshape(1, 1, 2, 3)
    y = pad_to_patch(x, (4, 5))
    assert y.shape == (1, 1, 4, 5) and padded_size(2, 3, (4, 5)) == (4, 5)
    assert torch.equal(y[..., :2, :3], x)
    assert torch.equal(y[..., 3, :3], x[..., 1, :])  # bottom rows repeat the last row
    assert torch.equal(y[..., :2, 4], x[..., :, 2])  # right columns repeat the last column
    assert pad_to_patch(x, 2) is x


@pytest.mark.parametrize("patch, overlap", [(16, 4), (8, 3), ((6, 10), (2, 0)), (5, 4), (1, 0)])
def test_window_is_positive_and_smooth(patch, overlap):
    w = blend_window(patch, overlap)
    ph, pw = (patch, patch) if isinstance(patch, int) else patch
    assert w.shape == (ph, pw) and w.dtype == torch.float32
    assert (w > 0).all() and (w <= 1).all()
    assert torch.allclose(w, w.flip(0)) and torch.allclose(w, w.flip(1))
    assert blend_window(patch, overlap, dtype=torch.bfloat16).dtype == torch.bfloat16


def test_window_ramps_sum_to_constant():
    """Neighbours overlapping by exactly `overlap` cross-fade with constant total weight."""
    w = blend_window((1, 16), 4, floor=1e-3)[0].double()
    total = w[12:] + w[:4]
    assert torch.allclose(total, total[0].expand(4))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize(
    "B, C, H, W, patch, overlap",
    [
        (1, 3, 1, 1, 16, 4),  # 1x1 image: padded to one patch
        (2, 4, 5, 37, 16, 4),  # shorter than a patch in one axis
        (1, 2, 16, 16, 16, 4),  # exactly one patch
        (3, 1, 17, 31, 8, 3),  # primes: shifted edge patches
        (1, 5, 64, 48, (16, 8), (4, 2)),
        (2, 3, 23, 29, 7, 6),  # heavy overlap
    ],
)
def test_roundtrip_is_identity(device, B, C, H, W, patch, overlap):
    plan = plan_patches(H, W, patch, overlap)
    x = torch.randn(B, C, H, W, device=device)
    patches = plan.split(x)
    assert patches.shape == (B * plan.num_patches, C, *plan.patch)
    torch.testing.assert_close(plan.merge(patches), x, atol=1e-6, rtol=1e-6)


@settings(max_examples=30, deadline=None)
@given(
    B=st.integers(1, 2), H=st.integers(1, 70), W=st.integers(1, 70),
    patch=st.integers(1, 20), overlap_frac=st.floats(0, 0.9), seed=st.integers(0, 1000),
)
def test_roundtrip_any_size(B, H, W, patch, overlap_frac, seed):
    overlap = int(overlap_frac * patch)
    plan = plan_patches(H, W, patch, overlap)
    x = torch.randn(B, 2, H, W, generator=torch.Generator().manual_seed(seed))
    # Spelled out with the ops, as the pipeline uses them.
    xp = pad_to_patch(x, patch)
    Hp, Wp = padded_size(H, W, patch)
    origins = batch_origins(patch_origins(H, W, patch, overlap), B)
    out = blend_patches(gather_patches(xp, origins, patch, patch), origins, blend_window(patch, overlap), B, Hp, Wp)
    torch.testing.assert_close(out[..., :H, :W], x, atol=1e-6, rtol=1e-6)


def test_plan_rejects_wrong_image_and_patch_count():
    plan = plan_patches(20, 20, 8, 2)
    with pytest.raises(ValueError, match="20x20"):
        plan.split(torch.randn(1, 1, 21, 20))
    with pytest.raises(ValueError, match="multiple"):
        plan.merge(torch.randn(plan.num_patches + 1, 1, 8, 8))
