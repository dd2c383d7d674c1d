"""group_denoise_step and shortcut_noise: every backend against the references in
patchscaler.ops.group_denoise, on odd shapes, all state dtypes and non-contiguous layouts;
opcheck, torch.compile and the argument errors.

The Triton kernels run on CPU tensors under TRITON_INTERPRET=1. That variable must be
set before triton.jit functions are created, so `test_triton_interpreted` re-runs
the `test_interp_*` tests of this file in a child pytest with it set; those tests
skip in a normal run.
"""

from __future__ import annotations


import pytest
import torch

from helpers import (
    DEVICES,
    TOLERANCES,
    cosine_alphas_cumprod,
    needs_interpreter,
    run_interpreted_tests,
    runs_interpreter_child,
)
from patchscaler.ops.group_denoise import (
    group_denoise_step,
    group_denoise_step_triton,
    reference_group_denoise_step,
    reference_shortcut_noise,
    shortcut_noise,
    shortcut_noise_triton,
)

DTYPES = [torch.float32, torch.float16, torch.bfloat16]

# (P_all, P_act, inner shape): sizes 1, primes, a 4-D patch like the sampler's.
SHAPES = [
    (1, 1, (1, 1, 1)),
    (7, 3, (2, 3, 5)),
    (13, 13, (3, 5, 7)),
    (31, 11, (48, 4, 4)),
    (5, 0, (3, 2, 2)),
]


def denoise_inputs(P_all, P_act, inner, dtype, device, model_dtype=None, layout="contiguous", seed=0):
    """Random sampler state and a step for P_act distinct patches at their own timesteps."""
    g = torch.Generator().manual_seed(seed)
    T = 1000
    x_all = torch.randn((P_all,) + inner, generator=g).to(dtype)
    if layout == "row_strided":  # rows of a bigger buffer: x_all[::2]
        big = torch.randn((2 * P_all,) + inner, generator=g).to(dtype)
        big[::2] = x_all
        x_all = big[::2]
    elif layout == "permuted":  # inner dims not dense: the copy fallback
        x_all = x_all.transpose(-1, -2).contiguous().transpose(-1, -2)
    model_out = torch.randn((P_act,) + inner, generator=g).to(model_dtype or dtype)
    idx = torch.randperm(P_all, generator=g)[:P_act]
    # Timesteps up to 600 (SPEC: inference never starts higher) and some final steps.
    t = torch.randint(0, 600, (P_act,), generator=g)
    t_next = t - torch.randint(1, 100, (P_act,), generator=g)
    t_next[::3] = -1
    ac = cosine_alphas_cumprod(T)
    to = lambda v: v.to(device)  # noqa: E731
    return to(x_all), to(model_out), to(idx), to(t), to(t_next), to(ac)


def assert_close(actual, expected, dtype):
    atol, rtol = TOLERANCES[dtype]
    torch.testing.assert_close(actual.float(), expected.float(), atol=atol, rtol=rtol)


def check_against_reference(step_fn, shape, dtype, device, prediction, clip, return_x0,
                            model_dtype=None, layout="contiguous"):
    P_all, P_act, inner = shape
    args = denoise_inputs(P_all, P_act, inner, dtype, device, model_dtype, layout)
    x_ref = args[0].clone()
    x0_ref = reference_group_denoise_step(x_ref, *args[1:], prediction, clip, return_x0)
    x_all = args[0]
    x0 = step_fn(x_all, *args[1:], prediction, clip, return_x0)
    assert_close(x_all, x_ref, dtype)
    if return_x0:
        assert x0.shape == (P_act,) + inner and x0.dtype == dtype
        assert_close(x0, x0_ref, dtype)
    else:
        assert x0 is None or x0.numel() == 0


def op_step(*args):
    return torch.ops.patchscaler.group_denoise_step(*args)


# ----------------------------------------------------------------------------------
# The op (C++ on CPU, Triton on CUDA) against the reference
# ----------------------------------------------------------------------------------


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("prediction", ["eps", "v"])
def test_step_matches_reference(device, dtype, shape, prediction):
    check_against_reference(op_step, shape, dtype, device, prediction, None, True)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("prediction", ["eps", "v"])
@pytest.mark.parametrize("clip,return_x0", [(1.0, True), (1.0, False), (None, False), (0.0, True)])
def test_step_clip_and_x0(device, dtype, prediction, clip, return_x0):
    check_against_reference(op_step, (17, 9, (4, 3, 5)), dtype, device, prediction, clip, return_x0)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("layout", ["row_strided", "permuted"])
@pytest.mark.parametrize("dtype", DTYPES)
def test_step_non_contiguous_state(device, layout, dtype):
    # The op must write into the caller's tensor, whatever its layout.
    check_against_reference(op_step, (11, 5, (3, 4, 5)), dtype, device, "eps", None, True, layout=layout)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype,model_dtype", [(torch.float32, torch.bfloat16), (torch.float32, torch.float16),
                                               (torch.bfloat16, torch.float32)])
def test_step_mixed_state_and_model_dtypes(device, dtype, model_dtype):
    check_against_reference(op_step, (9, 4, (3, 3, 3)), dtype, device, "v", None, True, model_dtype=model_dtype)


@pytest.mark.parametrize("device", DEVICES)
def test_step_non_contiguous_model_out_and_int32_indices(device):
    x_all, model_out, idx, t, t_next, ac = denoise_inputs(10, 6, (3, 4, 4), torch.float32, device)
    model_nc = model_out.transpose(2, 3).contiguous().transpose(2, 3)
    x_ref = x_all.clone()
    reference_group_denoise_step(x_ref, model_out, idx, t, t_next, ac, "eps")
    group_denoise_step(x_all, model_nc, idx.int(), t.int(), t_next.int(), ac.double())
    assert_close(x_all, x_ref, torch.float32)


@pytest.mark.parametrize("device", DEVICES)
def test_step_leaves_idle_patches_untouched(device):
    x_all, model_out, idx, t, t_next, ac = denoise_inputs(20, 7, (2, 3, 3), torch.float32, device)
    before = x_all.clone()
    group_denoise_step(x_all, model_out, idx, t, t_next, ac)
    idle = torch.ones(20, dtype=torch.bool, device=device)
    idle[idx] = False
    assert torch.equal(x_all[idle], before[idle])


def test_last_step_writes_x0():
    x_all, model_out, idx, t, _, ac = denoise_inputs(6, 6, (2, 2, 2), torch.float32, "cpu")
    x0 = group_denoise_step(x_all, model_out, idx, t, torch.full_like(t, -1), ac, return_x0=True)
    assert torch.equal(x_all[idx], x0)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("P,inner", [(1, (1,)), (13, (3, 5, 7)), (4, (48, 16, 16)), (0, (2, 2))])
def test_shortcut_noise_matches_reference(device, dtype, P, inner):
    g = torch.Generator().manual_seed(1)
    y0 = torch.randn((P,) + inner, generator=g).to(dtype).to(device)
    noise = torch.randn((P,) + inner, generator=g).to(device)  # float32 noise, any state dtype
    t = torch.randint(0, 1000, (P,), generator=g).to(device)
    ac = cosine_alphas_cumprod().to(device)
    out = shortcut_noise(y0, noise, t, ac)
    assert out.dtype == dtype and out.shape == y0.shape
    assert_close(out, reference_shortcut_noise(y0, noise, t, ac), dtype)


@pytest.mark.parametrize("device", DEVICES)
def test_shortcut_noise_strided_inputs(device):
    y0 = torch.randn(10, 3, 4, 5, device=device)[::2]
    noise = torch.randn(5, 3, 5, 4, device=device).transpose(2, 3)
    t = torch.tensor([0, 999, 5, 300, 600], device=device)
    ac = cosine_alphas_cumprod().to(device)
    assert_close(shortcut_noise(y0, noise, t, ac), reference_shortcut_noise(y0, noise, t, ac), torch.float32)


# ----------------------------------------------------------------------------------
# torch.library integration
# ----------------------------------------------------------------------------------


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("return_x0", [False, True])
def test_opcheck_group_denoise_step(device, return_x0):
    x_all, model_out, idx, t, t_next, ac = denoise_inputs(9, 4, (3, 2, 5), torch.float32, device)
    torch.library.opcheck(
        torch.ops.patchscaler.group_denoise_step.default,
        (x_all, model_out, idx, t, t_next, ac, "v", 1.5, return_x0),
    )


@pytest.mark.parametrize("device", DEVICES)
def test_opcheck_shortcut_noise(device):
    y0 = torch.randn(5, 3, 4, 4, device=device)
    t = torch.randint(0, 1000, (5,), device=device)
    torch.library.opcheck(
        torch.ops.patchscaler.shortcut_noise.default, (y0, torch.randn_like(y0), t, cosine_alphas_cumprod().to(device))
    )


def test_torch_compile_fullgraph():
    def two_steps(y0, noise, model_out, idx, t, t_mid, ac):
        x_all = shortcut_noise(y0, noise, t, ac)
        group_denoise_step(x_all, model_out, idx, t, t_mid, ac, "eps")
        x0 = group_denoise_step(x_all, model_out * 0.5, idx, t_mid, torch.full_like(t, -1), ac, "eps",
                                return_x0=True)
        return x_all, x0

    y0, noise, model_out = (torch.randn(6, 3, 4, 4) for _ in range(3))
    idx = torch.arange(6)
    t = torch.tensor([500, 400, 300, 200, 100, 50])
    args = (y0, noise, model_out, idx, t, t // 2, cosine_alphas_cumprod())
    expected = two_steps(*args)
    actual = torch.compile(two_steps, fullgraph=True, backend="inductor")(*args)
    for a, e in zip(actual, expected):
        torch.testing.assert_close(a, e)


# ----------------------------------------------------------------------------------
# Errors: every backend names the argument (ValueError)
# ----------------------------------------------------------------------------------


def _bad_step_args(case):
    x_all, model_out, idx, t, t_next, ac = denoise_inputs(8, 4, (2, 3, 3), torch.float32, "cpu")
    kw = dict(x_all=x_all, model_out=model_out, idx=idx, t=t, t_next=t_next, alphas_cumprod=ac,
              prediction="eps", clip_x0=None)
    if case == "model_out shape":
        kw["model_out"] = torch.randn(4, 2, 3, 4)
    elif case == "x_all dtype":
        kw["x_all"] = x_all.double()
    elif case == "idx length":
        kw["idx"] = idx[:3]
    elif case == "idx dtype":
        kw["idx"] = idx.float()
    elif case == "idx range":
        kw["idx"] = torch.tensor([0, 1, 8, 2])
    elif case == "idx negative":
        kw["idx"] = torch.tensor([0, -1, 3, 2])
    elif case == "idx duplicate":
        kw["idx"] = torch.tensor([0, 5, 3, 5])
    elif case == "t range":
        kw["t"] = torch.tensor([0, 1, 1000, 2])
    elif case == "t negative":
        kw["t"] = torch.tensor([0, -1, 10, 2])
    elif case == "t_next range":
        kw["t_next"] = torch.tensor([0, 1, 1000, 2])
    elif case == "prediction":
        kw["prediction"] = "x0"
    elif case == "clip_x0":
        kw["clip_x0"] = -1.0
    elif case == "alphas_cumprod":
        kw["alphas_cumprod"] = ac.view(10, 100)
    return kw


STEP_ERRORS = {
    "model_out shape": "model_out",
    "x_all dtype": "x_all",
    "idx length": "idx",
    "idx dtype": "idx",
    "idx range": r"idx\[2\] = 8 is out of range",
    "idx negative": r"idx\[1\] = -1",
    "idx duplicate": "duplicate entry 5",
    "t range": r"t\[2\] = 1000",
    "t negative": r"t\[1\] = -1",
    "t_next range": r"t_next\[2\] = 1000",
    "prediction": "prediction",
    "clip_x0": "clip_x0",
    "alphas_cumprod": "alphas_cumprod",
}


@pytest.mark.parametrize("case", sorted(STEP_ERRORS))
def test_step_errors(case):
    kw = _bad_step_args(case)
    with pytest.raises(ValueError, match=STEP_ERRORS[case]):
        torch.ops.patchscaler.group_denoise_step(*kw.values())


def test_step_device_mismatch_is_reported():
    # Mixed cpu/meta reaches the fake kernel's checks (the same ones the Triton path runs).
    x_all, model_out, idx, t, t_next, ac = denoise_inputs(8, 4, (2, 3, 3), torch.float32, "cpu")
    with pytest.raises(ValueError, match="model_out is on meta"):
        torch.ops.patchscaler.group_denoise_step(x_all, model_out.to("meta"), idx, t, t_next, ac)


@pytest.mark.parametrize("case,match", [("shape", "noise must have the shape"), ("t", r"t\[1\] = 1000"),
                                        ("dtype", "y0 must be float32")])
def test_shortcut_noise_errors(case, match):
    y0, noise = torch.randn(3, 2, 2), torch.randn(3, 2, 2)
    t = torch.tensor([1, 2, 3])
    if case == "shape":
        noise = torch.randn(3, 2, 3)
    elif case == "t":
        t = torch.tensor([1, 1000, 3])
    elif case == "dtype":
        y0 = y0.double()
    with pytest.raises(ValueError, match=match):
        shortcut_noise(y0, noise, t, cosine_alphas_cumprod())


# ----------------------------------------------------------------------------------
# Triton kernels under the interpreter (CPU tensors)
# ----------------------------------------------------------------------------------

@runs_interpreter_child
def test_triton_interpreted():
    run_interpreted_tests(__file__)


@needs_interpreter
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES[:4])
@pytest.mark.parametrize("prediction,clip,return_x0", [("eps", None, True), ("v", 1.0, True), ("eps", 2.0, False)])
def test_interp_step(dtype, shape, prediction, clip, return_x0):
    check_against_reference(group_denoise_step_triton, shape, dtype, "cpu", prediction, clip, return_x0)


@needs_interpreter
@pytest.mark.parametrize("layout", ["row_strided", "permuted"])
def test_interp_step_layouts_and_mixed_dtypes(layout):
    check_against_reference(group_denoise_step_triton, (9, 5, (3, 4, 5)), torch.float32, "cpu", "v", None, True,
                            model_dtype=torch.bfloat16, layout=layout)


@needs_interpreter
@pytest.mark.parametrize("case", ["idx range", "idx duplicate", "t range", "t_next range", "prediction"])
def test_interp_step_errors(case):
    kw = _bad_step_args(case)
    with pytest.raises(ValueError, match=STEP_ERRORS[case]):
        group_denoise_step_triton(*kw.values())


@needs_interpreter
@pytest.mark.parametrize("dtype", DTYPES)
def test_interp_shortcut_noise(dtype):
    y0 = torch.randn(10, 3, 5, 7).to(dtype)[::2]
    noise = torch.randn(5, 3, 5, 7)
    t = torch.tensor([0, 999, 5, 300, 600])
    ac = cosine_alphas_cumprod()
    assert_close(shortcut_noise_triton(y0, noise, t, ac), reference_shortcut_noise(y0, noise, t, ac), dtype)


@needs_interpreter
def test_interp_sampler_path_reads_nothing_back(monkeypatch):
    """The sampler's steps go through `group_denoise_step_trusted`: on the Triton path (here
    the interpreter standing in for CUDA) no per-step value check, so no device→host read;
    the public Triton op keeps its checks. Same result as the CPU kernel."""
    from patchscaler.ops import group_denoise as gd
    from patchscaler.sampling.pgs import PGSConfig, PGSSampler

    class Denoiser:  # any smooth model: the test is about the step, not the model
        prediction, schedule = "eps", "cosine"
        alphas_cumprod = cosine_alphas_cumprod().double()

        def condition(self, y0):
            return {"y0": y0}

        def __call__(self, y_t, t, cond):
            return 0.5 * torch.tanh(y_t) - 0.1 * cond["y0"]

    g = torch.Generator().manual_seed(0)
    y0, qmap = torch.randn(11, 3, 4, 4, generator=g) * 0.3, torch.rand(11, generator=g)
    sampler = PGSSampler(Denoiser(), PGSConfig(gammas=(0.7, 0.3), groups=((150, 1), (350, 2), (600, 4))))
    cpu_kernel = sampler(y0, qmap, seeds=torch.arange(11), max_batch_patches=4)

    checks = []
    real_check = gd._check_denoise_values
    monkeypatch.setattr(gd, "_check_denoise_values", lambda *a: checks.append(1) or real_check(*a))
    launches = []

    def triton_kernel(*args, **kwargs):
        launches.append(kwargs["check_values"])
        return gd.group_denoise_step_triton(*args, **kwargs)

    monkeypatch.setitem(gd._TRUSTED_KERNELS, "cpu", triton_kernel)
    triton = sampler(y0, qmap, seeds=torch.arange(11), max_batch_patches=4)
    assert triton.dit_calls > 4 and launches == [False] * triton.dit_calls  # every step on the Triton path
    assert checks == []  # and none read its values back
    torch.testing.assert_close(triton.x0, cpu_kernel.x0, atol=1e-5, rtol=1e-5)
    x, out = torch.randn(4, 3, 4, 4), torch.randn(2, 3, 4, 4)
    gd.group_denoise_step_triton(x, out, torch.tensor([0, 2]), torch.tensor([5, 9]), torch.tensor([1, -1]),
                                 cosine_alphas_cumprod())
    assert checks == [1]  # the public op still checks
