"""gather_patches / blend_patches / scatter_add_patches: every backend against the
reference, determinism, opcheck, autograd, torch.compile, error messages, memory."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from helpers import DEVICES, TOLERANCES
from patchscaler.ops.patches import (
    blend_patches,
    gather_patches,
    reference_blend_patches,
    reference_gather_patches,
    reference_scatter_add_patches,
    scatter_add_patches,
)

DTYPES = [torch.float32, torch.float16, torch.bfloat16]

# (B, C, H, W, ph, pw, P): P=1, primes, 1x1 patches, patch == image, B>1, heavy overlap.
SHAPES = [
    (1, 1, 1, 1, 1, 1, 1),
    (1, 3, 8, 8, 4, 4, 1),
    (2, 3, 13, 17, 5, 7, 11),
    (3, 2, 7, 5, 7, 5, 4),
    (1, 5, 31, 29, 1, 1, 40),
    (2, 4, 23, 19, 16, 16, 9),
    (1, 2, 9, 11, 3, 2, 60),
]


def random_origins(P, B, H, W, ph, pw, device="cpu", generator=None):
    """[P, 3] int64 (b, y, x): patches anywhere inside their image, repeats allowed."""
    b = torch.randint(0, B, (P,), generator=generator)
    y = torch.randint(0, H - ph + 1, (P,), generator=generator)
    x = torch.randint(0, W - pw + 1, (P,), generator=generator)
    return torch.stack([b, y, x], dim=1).to(device)


def make_case(shape, dtype, device, seed=0):
    B, C, H, W, ph, pw, P = shape
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(B, C, H, W, generator=g).to(device=device, dtype=dtype)
    origins = random_origins(P, B, H, W, ph, pw, device, g)
    patches = torch.randn(P, C, ph, pw, generator=g).to(device=device, dtype=dtype)
    window = (torch.rand(ph, pw, generator=g) + 0.05).to(device=device, dtype=dtype)
    return x, origins, patches, window


def assert_close(actual, expected):
    atol, rtol = TOLERANCES[expected.dtype]
    assert actual.dtype == expected.dtype and actual.shape == expected.shape
    torch.testing.assert_close(actual, expected, atol=atol, rtol=rtol)


# ------------------------------------------------------------------ vs the reference


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_gather_matches_reference(device, dtype, shape):
    x, origins, _, _ = make_case(shape, dtype, device)
    ph, pw = shape[4], shape[5]
    out = gather_patches(x, origins, ph, pw)
    assert out.is_contiguous()
    assert torch.equal(out, reference_gather_patches(x, origins, ph, pw))  # a copy: exact


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_blend_matches_reference(device, dtype, shape):
    _, origins, patches, window = make_case(shape, dtype, device)
    B, _, H, W = shape[:4]
    assert_close(blend_patches(patches, origins, window, B, H, W),
                 reference_blend_patches(patches, origins, window, B, H, W))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_scatter_add_matches_reference(device, dtype, shape):
    _, origins, patches, _ = make_case(shape, dtype, device)
    B, _, H, W = shape[:4]
    assert_close(scatter_add_patches(patches, origins, B, H, W),
                 reference_scatter_add_patches(patches, origins, B, H, W))


@pytest.mark.parametrize("device", DEVICES)
def test_non_contiguous_inputs(device):
    B, C, H, W, ph, pw, P = 2, 3, 11, 13, 4, 5, 9
    g = torch.Generator().manual_seed(1)
    x = torch.randn(B, H, W, C, generator=g).to(device).permute(0, 3, 1, 2)  # channels-last view
    origins = random_origins(P, B, H, W, ph, pw, device, g).t().contiguous().t()  # column-major
    patches = torch.randn(P, C, ph, 2 * pw, generator=g).to(device)[..., ::2]  # strided
    window = (torch.rand(pw, ph, generator=g) + 0.1).to(device).t()  # transposed
    assert not (x.is_contiguous() or origins.is_contiguous() or patches.is_contiguous()
                or window.is_contiguous())
    assert torch.equal(gather_patches(x, origins, ph, pw),
                       reference_gather_patches(x, origins, ph, pw))
    assert_close(blend_patches(patches, origins, window, B, H, W),
                 reference_blend_patches(patches, origins, window, B, H, W))
    assert_close(scatter_add_patches(patches, origins, B, H, W),
                 reference_scatter_add_patches(patches, origins, B, H, W))


@pytest.mark.parametrize("device", DEVICES)
def test_uncovered_pixels_are_zero(device):
    patches = torch.ones(2, 3, 2, 2, device=device)
    origins = torch.tensor([[0, 0, 0], [1, 3, 3]], device=device)
    window = torch.ones(2, 2, device=device)
    out = blend_patches(patches, origins, window, 2, 5, 5)
    expected = torch.zeros(2, 3, 5, 5, device=device)
    expected[0, :, :2, :2] = 1
    expected[1, :, 3:, 3:] = 1
    assert torch.equal(out, expected)
    assert torch.equal(scatter_add_patches(patches, origins, 2, 5, 5), expected)


@pytest.mark.parametrize("device", DEVICES)
def test_blend_is_weighted_mean_of_stacked_patches(device):
    """50 patches at one origin: the blend is their window-weighted mean, window cancels."""
    patches = torch.randn(50, 2, 3, 4, device=device)
    origins = torch.tensor([[0, 1, 2]] * 50, device=device)
    window = torch.rand(3, 4, device=device) + 0.5
    out = blend_patches(patches, origins, window, 1, 5, 7)
    torch.testing.assert_close(out[0, :, 1:4, 2:6], patches.mean(0), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("shape", SHAPES + [(1, 1, 5, 5, 2, 2, 0)])
@pytest.mark.parametrize("device", DEVICES)
def test_blend_row_index(shape, device):
    """The coverage index the CUDA blend searches (built from ATen ops, so testable on CPU):
    row r = b*H + y lists the patches of image b covering y, ordered by (x origin, id)."""
    B, C, H, W, ph, pw, P = shape
    origins = random_origins(P, B, H, W, ph, pw, device, torch.Generator().manual_seed(1))
    row_ptr, row_patch = torch.ops.patchscaler._blend_row_index(origins, ph, B, H)
    assert row_ptr.shape == (B * H + 1,) and row_patch.shape == (P * ph,)
    o = origins.cpu().tolist()
    row_ptr, row_patch = row_ptr.cpu().tolist(), row_patch.cpu().tolist()
    for b in range(B):
        for y in range(H):
            r = b * H + y
            expected = sorted((ox, p) for p, (pb, oy, ox) in enumerate(o) if pb == b and oy <= y < oy + ph)
            assert row_patch[row_ptr[r] : row_ptr[r + 1]] == [p for _, p in expected], (b, y)


@pytest.mark.parametrize("device", DEVICES)
def test_empty_patch_list(device):
    x = torch.randn(1, 3, 4, 4, device=device)
    origins = torch.zeros(0, 3, dtype=torch.int64, device=device)
    assert gather_patches(x, origins, 2, 2).shape == (0, 3, 2, 2)
    out = blend_patches(torch.zeros(0, 3, 2, 2, device=device), origins, torch.ones(2, 2, device=device), 1, 4, 4)
    assert torch.equal(out, torch.zeros(1, 3, 4, 4, device=device))


@pytest.mark.parametrize("device", DEVICES)
def test_out_variants(device):
    shape = (2, 3, 13, 17, 5, 7, 11)
    x, origins, patches, window = make_case(shape, torch.float32, device)
    B, C, H, W, ph, pw, P = shape
    out = torch.full((P, C, ph, pw), float("nan"), device=device)
    res = torch.ops.patchscaler.gather_patches.out(x, origins, ph, pw, out=out)
    assert res.data_ptr() == out.data_ptr()
    assert torch.equal(out, gather_patches(x, origins, ph, pw))
    img = torch.full((B, C, H, W), float("nan"), device=device)
    torch.ops.patchscaler.blend_patches.out(patches, origins, window, B, H, W, out=img)
    assert torch.equal(img, blend_patches(patches, origins, window, B, H, W))
    img2 = torch.empty_like(img)
    assert blend_patches(patches, origins, window, B, H, W, out=img2) is img2
    assert torch.equal(img2, img)
    assert torch.equal(gather_patches(x, origins, ph, pw, out=torch.empty_like(out)), out)
    with pytest.raises(RuntimeError, match=r"blend_patches: out must have shape"):
        torch.ops.patchscaler.blend_patches.out(patches, origins, window, B, H, W, out=img[:1])
    with pytest.raises(RuntimeError, match=r"gather_patches: out dtype"):
        torch.ops.patchscaler.gather_patches.out(x, origins, ph, pw, out=out.double())


@settings(max_examples=25, deadline=None)
@given(
    B=st.integers(1, 3), C=st.integers(1, 4), H=st.integers(1, 24), W=st.integers(1, 24),
    fh=st.floats(0, 1), fw=st.floats(0, 1), P=st.integers(1, 30), seed=st.integers(0, 2**16),
)
def test_random_shapes_cpu(B, C, H, W, fh, fw, P, seed):
    ph, pw = 1 + int(fh * (H - 1)), 1 + int(fw * (W - 1))
    x, origins, patches, window = make_case((B, C, H, W, ph, pw, P), torch.float32, "cpu", seed)
    assert torch.equal(gather_patches(x, origins, ph, pw), reference_gather_patches(x, origins, ph, pw))
    assert_close(blend_patches(patches, origins, window, B, H, W),
                 reference_blend_patches(patches, origins, window, B, H, W))


# ----------------------------------------------------------------------- determinism


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_blend_is_deterministic(device, dtype):
    _, origins, patches, window = make_case((2, 8, 61, 67, 16, 16, 200), dtype, device)
    first = blend_patches(patches, origins, window, 2, 61, 67)
    for _ in range(3):
        assert torch.equal(blend_patches(patches, origins, window, 2, 61, 67), first)
        assert torch.equal(scatter_add_patches(patches, origins, 2, 61, 67),
                           scatter_add_patches(patches, origins, 2, 61, 67))


def test_blend_bits_do_not_depend_on_thread_count():
    _, origins, patches, window = make_case((2, 8, 61, 67, 16, 16, 400), torch.float32, "cpu")
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = blend_patches(patches, origins, window, 2, 61, 67)
        torch.set_num_threads(max(2, threads))
        many = blend_patches(patches, origins, window, 2, 61, 67)
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(one, many)


# ------------------------------------------------------ opcheck, autograd, compile


def sample_inputs(device, requires_grad):
    _, origins, patches, window = make_case((2, 3, 11, 13, 4, 5, 9), torch.float32, device)
    x = torch.randn(2, 3, 11, 13, device=device, requires_grad=requires_grad)
    patches.requires_grad_(requires_grad)
    window.requires_grad_(requires_grad)
    return {
        "gather_patches": (x, origins, 4, 5),
        "blend_patches": (patches, origins, window, 2, 11, 13),
        "scatter_add_patches": (patches, origins, 2, 11, 13),
    }


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("requires_grad", [False, True])
@pytest.mark.parametrize("op", ["gather_patches", "blend_patches", "scatter_add_patches"])
def test_opcheck(device, requires_grad, op):
    args = sample_inputs(device, requires_grad)[op]
    torch.library.opcheck(getattr(torch.ops.patchscaler, op).default, args)


@pytest.mark.parametrize("device", DEVICES)
def test_gradcheck(device):
    dd = dict(device=device, dtype=torch.float64)
    _, origins, _, _ = make_case((2, 2, 7, 8, 3, 4, 6), torch.float64, device)
    x = torch.randn(2, 2, 7, 8, **dd, requires_grad=True)
    patches = torch.randn(6, 2, 3, 4, **dd, requires_grad=True)
    window = (torch.rand(3, 4, **dd) + 0.2).requires_grad_()
    assert torch.autograd.gradcheck(lambda t: gather_patches(t, origins, 3, 4), (x,))
    assert torch.autograd.gradcheck(lambda p: scatter_add_patches(p, origins, 2, 7, 8), (patches,))
    assert torch.autograd.gradcheck(lambda p, w: blend_patches(p, origins, w, 2, 7, 8), (patches, window))


def test_torch_compile_fullgraph():
    from patchscaler.inference.patch_plan import plan_patches

    plan = plan_patches(20, 23, patch=8, overlap=2)
    origins, window = plan.batch_origins(2), plan.window()

    def roundtrip(x):
        patches = torch.ops.patchscaler.gather_patches(x, origins, 8, 8)
        return torch.ops.patchscaler.blend_patches(patches * 2.0, origins, window, 2, 20, 23) - x

    compiled = torch.compile(roundtrip, fullgraph=True)
    x = torch.randn(2, 3, 20, 23)
    torch.testing.assert_close(compiled(x), x, atol=1e-5, rtol=1e-5)


# -------------------------------------------------------------------------- errors


def _err_cases():
    x = torch.randn(1, 3, 8, 8)
    o = torch.tensor([[0, 1, 2]])
    p = torch.randn(1, 3, 4, 4)
    w = torch.ones(4, 4)
    g, b = torch.ops.patchscaler.gather_patches, torch.ops.patchscaler.blend_patches
    return [
        ("x rank", lambda: g(x[0], o, 4, 4), r"gather_patches: x must be a 4-D tensor"),
        ("x dtype", lambda: g(x.int(), o, 4, 4), r"gather_patches: x must be float32"),
        ("origins shape", lambda: g(x, o[:, :2], 4, 4), r"origins must be a 2-D tensor \[P, 3\]"),
        ("origins dtype", lambda: g(x, o.int(), 4, 4), r"origins must be int64"),
        ("ph <= 0", lambda: g(x, o, 0, 4), r"ph and pw must be > 0"),
        ("patch > image", lambda: g(x, o, 9, 4), r"larger than x"),
        ("origin y", lambda: g(x, torch.tensor([[0, 5, 0]]), 4, 4), r"origins\[0\] = \(0, 5, 0\) is out of range"),
        ("origin b", lambda: g(x, torch.tensor([[0, 0, 0], [1, 0, 0]]), 4, 4), r"origins\[1\] .* 0 <= b < 1"),
        ("negative x", lambda: g(x, torch.tensor([[0, 0, -1]]), 4, 4), r"out of range"),
        ("patches rank", lambda: b(p[0], o, w, 1, 8, 8), r"blend_patches: patches must be a 4-D tensor"),
        ("patches dtype", lambda: b(p.long(), o, w, 1, 8, 8), r"patches must be float32"),
        ("P mismatch", lambda: b(p, o.repeat(2, 1), w, 1, 8, 8), r"origins has 2 rows but patches has 1"),
        ("window shape", lambda: b(p, o, w[:3], 1, 8, 8), r"window must have shape \[ph, pw\] = \[4, 4\]"),
        ("window dtype", lambda: b(p, o, w.double(), 1, 8, 8), r"window dtype Double does not match"),
        ("B <= 0", lambda: b(p, o, w, 0, 8, 8), r"B, H and W must be > 0"),
        ("W <= 0", lambda: b(p, o, w, 1, 8, -1), r"B, H and W must be > 0"),
        ("blend range", lambda: b(p, o, w, 1, 4, 8), r"blend_patches: origins\[0\] .* out of range"),
        ("scatter range", lambda: torch.ops.patchscaler.scatter_add_patches(p, o, 1, 8, 5), r"scatter_add_patches: origins\[0\]"),
    ]


@pytest.mark.parametrize("name,call,message", _err_cases(), ids=[c[0] for c in _err_cases()])
def test_error_messages(name, call, message):
    with pytest.raises(RuntimeError, match=message):
        call()


@pytest.mark.cuda
def test_error_on_mixed_devices():
    x = torch.randn(1, 3, 8, 8, device="cuda")
    with pytest.raises(RuntimeError, match=r"origins is on cpu but x is on cuda"):
        gather_patches(x, torch.tensor([[0, 1, 2]]), 4, 4)
    p, o = torch.randn(1, 3, 4, 4, device="cuda"), torch.tensor([[0, 1, 2]], device="cuda")
    with pytest.raises(RuntimeError, match=r"window is on cpu but patches is on cuda"):
        blend_patches(p, o, torch.ones(4, 4), 1, 8, 8)


# -------------------------------------------------------------------------- memory


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self")
def test_blend_allocates_no_patch_sized_temporaries():
    """Peak resident memory of a blend stays within 2x its output and far below the patches.

    Runs in a child process with glibc's mmap threshold pinned low, so every
    temporary above 64 KiB is fresh memory and shows up in the peak RSS (VmHWM).
    """
    code = textwrap.dedent(
        """
        import gc, torch, patchscaler
        from patchscaler.inference.patch_plan import plan_patches
        def rss(key):
            for line in open("/proc/self/status"):
                if line.startswith(key):
                    return int(line.split()[1]) * 1024
        plan = plan_patches(192, 192, 16, 4)
        x = torch.randn(1, 24, 192, 192)
        patches, origins, window = plan.split(x), plan.batch_origins(1), plan.window()
        gc.collect()
        open("/proc/self/clear_refs", "w").write("5")
        before = rss("VmRSS")
        out = torch.ops.patchscaler.blend_patches(patches, origins, window, 1, 192, 192)
        print(rss("VmHWM") - before, out.nbytes, patches.nbytes)
        """
    )
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536", OMP_NUM_THREADS="1")
    res = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    peak, out_bytes, patch_bytes = map(int, res.stdout.split()[-3:])
    assert patch_bytes > 1.5 * out_bytes
    assert peak <= 2 * out_bytes, (peak, out_bytes)
