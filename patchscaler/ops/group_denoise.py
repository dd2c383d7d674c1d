"""Per-patch diffusion updates of the ragged group sampler (SPEC §2 "Ragged group
scheduler", §3): `group_denoise_step` (one DDIM step for a batch of patches, each at
its own timestep, written back into the sampler's state in place) and
`shortcut_noise` (the PGS start point).

    group_denoise_step(x_all[P_all,*S], model_out[P_act,*S], idx[P_act], t[P_act],
                       t_next[P_act], alphas_cumprod[T], prediction="eps"|"v",
                       clip_x0=None, return_x0=False) -> x̂0[P_act,*S] | None
    shortcut_noise(y0[P,*S], noise[P,*S], t[P], alphas_cumprod[T]) -> [P,*S]

Backends: CPU fused C++ (csrc/cpu/group_denoise_cpu.cpp), CUDA Triton
(kernels/group_denoise.py). Both read and write each active patch where it lies in
`x_all`: no gathered copy of the active set is made. The schemas are in
csrc/group_denoise.cpp; this module adds the references, the fake kernels and the
CUDA registration.

Timestep convention (as patchscaler.diffusion.schedule): ᾱ(t) = alphas_cumprod[t]
for 0 <= t < T, and ᾱ = 1 for t_next < 0, the step that lands on x̂0.
Dtypes: states and model outputs float32, float16 or bfloat16 (they may differ);
all math in float32; idx/t/t_next int64 or int32.
"""

from __future__ import annotations

import torch
from torch import Tensor

from patchscaler.kernels import TRITON_AVAILABLE

__all__ = [
    "group_denoise_step",
    "group_denoise_step_trusted",
    "shortcut_noise",
    "reference_group_denoise_step",
    "reference_shortcut_noise",
    "group_denoise_step_triton",
    "shortcut_noise_triton",
]

STATE_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
INDEX_DTYPES = (torch.int64, torch.int32)
PREDICTIONS = ("eps", "v")


# ----------------------------------------------------------------------------------
# Typed wrappers
# ----------------------------------------------------------------------------------


def group_denoise_step(
    x_all: Tensor,
    model_out: Tensor,
    idx: Tensor,
    t: Tensor,
    t_next: Tensor,
    alphas_cumprod: Tensor,
    prediction: str = "eps",
    clip_x0: float | None = None,
    return_x0: bool = False,
) -> Tensor | None:
    """One DDIM (η=0) step for the active patches `x_all[idx]`, in place; returns x̂0 [P_act,*S] if asked.

    Patch p moves from timestep t[p] to t_next[p] (t_next[p] < 0: to x̂0). `idx` must not
    repeat a patch. `prediction` says what `model_out` is: "eps" (ε̂) or "v" (v̂).
    `clip_x0` clamps x̂0 to [-clip_x0, clip_x0] before the update (ε̂ is kept).
    """
    x0 = torch.ops.patchscaler.group_denoise_step.default(
        x_all, model_out, idx, t, t_next, alphas_cumprod, prediction, clip_x0, return_x0
    )
    return x0 if return_x0 else None


def group_denoise_step_trusted(x_all: Tensor, model_out: Tensor, idx: Tensor, t: Tensor, t_next: Tensor,
                               alphas_cumprod: Tensor, prediction: str = "eps", clip_x0: float | None = None) -> None:
    """`group_denoise_step` (in place, no x̂0) for callers whose ``idx``/``t``/``t_next``
    come from tables they built and checked once (the samplers): the range and uniqueness
    checks of the values, which read them back from the device, are skipped. Shapes,
    dtypes and devices are still checked (host metadata only).

    On CUDA the Triton kernel is launched directly; elsewhere this is the op itself (the
    CPU kernel's value checks read host memory, no transfer).
    """
    impl = _TRUSTED_KERNELS.get(x_all.device.type)
    if impl is None:
        torch.ops.patchscaler.group_denoise_step.default(
            x_all, model_out, idx, t, t_next, alphas_cumprod, prediction, clip_x0, False
        )
    else:
        impl(x_all, model_out, idx, t, t_next, alphas_cumprod, prediction, clip_x0, check_values=False)


def shortcut_noise(y0: Tensor, noise: Tensor, t: Tensor, alphas_cumprod: Tensor) -> Tensor:
    """sqrt(ᾱ_t)·y0 + sqrt(1−ᾱ_t)·noise per patch (t: [P]), in y0's dtype."""
    return torch.ops.patchscaler.shortcut_noise.default(y0, noise, t, alphas_cumprod)


# ----------------------------------------------------------------------------------
# References (the executable spec)
# ----------------------------------------------------------------------------------


def _per_patch(v: Tensor, like: Tensor) -> Tensor:
    """[P] -> [P, 1, ..., 1] broadcastable against `like` [P, *S]."""
    return v.reshape((-1,) + (1,) * (like.dim() - 1))


def reference_group_denoise_step(
    x_all: Tensor,
    model_out: Tensor,
    idx: Tensor,
    t: Tensor,
    t_next: Tensor,
    alphas_cumprod: Tensor,
    prediction: str = "eps",
    clip_x0: float | None = None,
    return_x0: bool = False,
) -> Tensor:
    """Pure-PyTorch group_denoise_step: gathers, updates in float32, scatters back. Returns x̂0 or an empty tensor."""
    idx = idx.long()
    ac = alphas_cumprod.float()
    a = _per_patch(ac[t.long()], model_out)
    tn = t_next.long()
    a_next = _per_patch(torch.where(tn < 0, torch.ones_like(ac[0]), ac[tn.clamp(min=0)]), model_out)
    x = x_all[idx].float()
    m = model_out.float()
    if prediction == "eps":
        x0 = (x - (1 - a).sqrt() * m) / a.sqrt()
        eps = m
    elif prediction == "v":
        x0 = a.sqrt() * x - (1 - a).sqrt() * m
        eps = (1 - a).sqrt() * x + a.sqrt() * m
    else:
        raise ValueError(f"prediction must be 'eps' or 'v', got {prediction!r}")
    if clip_x0 is not None:
        x0 = x0.clamp(-clip_x0, clip_x0)
    x_all[idx] = (a_next.sqrt() * x0 + (1 - a_next).sqrt() * eps).to(x_all.dtype)
    return x0.to(x_all.dtype) if return_x0 else x_all.new_empty(0)


def reference_shortcut_noise(y0: Tensor, noise: Tensor, t: Tensor, alphas_cumprod: Tensor) -> Tensor:
    """Pure-PyTorch shortcut_noise, float32 math, result in y0's dtype."""
    a = _per_patch(alphas_cumprod.float()[t.long()], y0)
    return (a.sqrt() * y0.float() + (1 - a).sqrt() * noise.float()).to(y0.dtype)


# ----------------------------------------------------------------------------------
# Argument checks shared by the fake and Triton kernels (the C++ CPU kernel has the
# same checks with the same messages).
# ----------------------------------------------------------------------------------


def _check_state(op: str, name: str, v: Tensor) -> None:
    if v.dim() < 1:
        raise ValueError(f"{op}: {name} must have a leading patch dimension, got a 0-d tensor")
    if v.dtype not in STATE_DTYPES:
        raise ValueError(f"{op}: {name} must be float32, float16 or bfloat16, got {v.dtype}")


def _check_device(op: str, name: str, v: Tensor, ref: Tensor, ref_name: str) -> None:
    if v.device != ref.device:
        raise ValueError(
            f"{op}: {name} is on {v.device} but {ref_name} is on {ref.device}; "
            "all tensors must be on the same device"
        )


def _check_per_patch(op: str, name: str, v: Tensor, n: int, ref: Tensor, ref_name: str) -> None:
    if v.dim() != 1 or v.shape[0] != n:
        raise ValueError(
            f"{op}: {name} must be a 1-D tensor with one entry per patch ({n}), got shape {tuple(v.shape)}"
        )
    if v.dtype not in INDEX_DTYPES:
        raise ValueError(f"{op}: {name} must be int64 or int32, got {v.dtype}")
    _check_device(op, name, v, ref, ref_name)


def _check_table(op: str, ac: Tensor, ref: Tensor, ref_name: str) -> None:
    if ac.dim() != 1 or ac.shape[0] < 1:
        raise ValueError(f"{op}: alphas_cumprod must be a non-empty 1-D tensor [T], got shape {tuple(ac.shape)}")
    if not ac.is_floating_point():
        raise ValueError(f"{op}: alphas_cumprod must be a floating tensor, got {ac.dtype}")
    _check_device(op, "alphas_cumprod", ac, ref, ref_name)


def _check_denoise_args(x_all, model_out, idx, t, t_next, alphas_cumprod, prediction, clip_x0) -> None:
    op = "group_denoise_step"
    _check_state(op, "x_all", x_all)
    _check_state(op, "model_out", model_out)
    _check_device(op, "model_out", model_out, x_all, "x_all")
    if model_out.dim() != x_all.dim() or model_out.shape[1:] != x_all.shape[1:]:
        raise ValueError(
            f"{op}: model_out must be [P_act, *S] where x_all is [P_all, *S]; got model_out "
            f"{tuple(model_out.shape)} and x_all {tuple(x_all.shape)}"
        )
    if prediction not in PREDICTIONS:
        raise ValueError(f'{op}: prediction must be "eps" or "v", got "{prediction}"')
    if clip_x0 is not None and not clip_x0 >= 0:
        raise ValueError(f"{op}: clip_x0 must be >= 0 (x0 is clamped to [-clip_x0, clip_x0]), got {clip_x0}")
    P = model_out.shape[0]
    for name, v in (("idx", idx), ("t", t), ("t_next", t_next)):
        _check_per_patch(op, name, v, P, x_all, "x_all")
    _check_table(op, alphas_cumprod, x_all, "x_all")


def _check_noise_args(y0, noise, t, alphas_cumprod) -> None:
    op = "shortcut_noise"
    _check_state(op, "y0", y0)
    _check_state(op, "noise", noise)
    _check_device(op, "noise", noise, y0, "y0")
    if noise.shape != y0.shape:
        raise ValueError(f"{op}: noise must have the shape of y0 {tuple(y0.shape)}, got {tuple(noise.shape)}")
    _check_per_patch(op, "t", t, y0.shape[0], y0, "y0")
    _check_table(op, alphas_cumprod, y0, "y0")


def _check_denoise_values(x_all: Tensor, idx: Tensor, t: Tensor, t_next: Tensor, T: int) -> None:
    """Range and uniqueness of idx/t/t_next, with one device→host read in the common (valid) case."""
    op = "group_denoise_step"
    if idx.numel() == 0:
        return
    P_all = x_all.shape[0]
    idx64 = idx.long()
    idx_bad = (idx64 < 0) | (idx64 >= P_all)
    t_bad = (t < 0) | (t >= T)
    tn_bad = t_next >= T
    # Duplicates: neighbours in sorted order (a sort, unlike a scatter count, is
    # deterministic, so this also works under torch.use_deterministic_algorithms).
    s = idx64.sort().values
    flags = torch.stack([idx_bad.any(), t_bad.any(), tn_bad.any(), (s[1:] == s[:-1]).any()])
    if not bool(flags.any()):
        return
    idx_h, t_h, tn_h = idx64.cpu(), t.cpu(), t_next.cpu()
    for p in range(idx_h.numel()):
        if not 0 <= idx_h[p] < P_all:
            raise ValueError(f"{op}: idx[{p}] = {int(idx_h[p])} is out of range for x_all with {P_all} patches")
    seen: dict[int, int] = {}
    for p, r in enumerate(idx_h.tolist()):
        if r in seen:
            raise ValueError(
                f"{op}: idx has duplicate entry {r} (at positions {seen[r]} and {p}); "
                "each patch can take one step per call"
            )
        seen[r] = p
    for p in range(t_h.numel()):
        if not 0 <= t_h[p] < T:
            raise ValueError(
                f"{op}: t[{p}] = {int(t_h[p])} is out of range for alphas_cumprod of length {T} (need 0 <= t < T)"
            )
    for p in range(tn_h.numel()):
        if not tn_h[p] < T:
            raise ValueError(
                f"{op}: t_next[{p}] = {int(tn_h[p])} is out of range for alphas_cumprod of length {T} "
                "(need t_next < T; a negative t_next means the last step)"
            )


def _check_noise_values(t: Tensor, T: int) -> None:
    bad = (t < 0) | (t >= T)
    if t.numel() and bool(bad.any()):
        p = int(bad.nonzero()[0, 0])
        raise ValueError(
            f"shortcut_noise: t[{p}] = {int(t[p])} is out of range for alphas_cumprod of length {T} "
            "(need 0 <= t < T)"
        )


# ----------------------------------------------------------------------------------
# Fake kernels (shapes only, for torch.compile / meta tensors)
# ----------------------------------------------------------------------------------


@torch.library.register_fake("patchscaler::group_denoise_step")
def _group_denoise_step_fake(x_all, model_out, idx, t, t_next, alphas_cumprod, prediction="eps",
                             clip_x0=None, return_x0=False):
    _check_denoise_args(x_all, model_out, idx, t, t_next, alphas_cumprod, prediction, clip_x0)
    if return_x0:
        return x_all.new_empty(model_out.shape)
    return x_all.new_empty(0)


@torch.library.register_fake("patchscaler::shortcut_noise")
def _shortcut_noise_fake(y0, noise, t, alphas_cumprod):
    _check_noise_args(y0, noise, t, alphas_cumprod)
    return torch.empty_like(y0, memory_format=torch.contiguous_format)


# ----------------------------------------------------------------------------------
# Triton (CUDA) implementations. They also run on CPU tensors under TRITON_INTERPRET=1,
# which is how the tests exercise them without a GPU; call them directly for that.
# ----------------------------------------------------------------------------------


def group_denoise_step_triton(x_all, model_out, idx, t, t_next, alphas_cumprod, prediction="eps",
                              clip_x0=None, return_x0=False, *, check_values=True) -> Tensor:
    """group_denoise_step through the Triton kernel (the op's CUDA implementation).

    ``check_values=False`` (`group_denoise_step_trusted` only) skips the checks that read
    idx/t/t_next back from the device."""
    from patchscaler.kernels.group_denoise import launch_group_denoise_step

    _check_denoise_args(x_all, model_out, idx, t, t_next, alphas_cumprod, prediction, clip_x0)
    if check_values:
        _check_denoise_values(x_all, idx, t, t_next, alphas_cumprod.shape[0])
    x0 = x_all.new_empty(model_out.shape) if return_x0 else x_all.new_empty(0)
    launch_group_denoise_step(x_all, model_out, idx, t, t_next, alphas_cumprod,
                              prediction == "v", clip_x0, x0 if return_x0 else None)
    return x0


def shortcut_noise_triton(y0, noise, t, alphas_cumprod) -> Tensor:
    """shortcut_noise through the Triton kernel (the op's CUDA implementation)."""
    from patchscaler.kernels.group_denoise import launch_shortcut_noise

    _check_noise_args(y0, noise, t, alphas_cumprod)
    _check_noise_values(t, alphas_cumprod.shape[0])
    out = torch.empty_like(y0, memory_format=torch.contiguous_format)
    launch_shortcut_noise(y0, noise, t, alphas_cumprod, out)
    return out


# Device type → the kernel `group_denoise_step_trusted` calls without value checks.
_TRUSTED_KERNELS: dict = {}

if TRITON_AVAILABLE:
    _TRUSTED_KERNELS["cuda"] = group_denoise_step_triton
    torch.library.register_kernel("patchscaler::group_denoise_step", "cuda", group_denoise_step_triton)
    torch.library.register_kernel("patchscaler::shortcut_noise", "cuda", shortcut_noise_triton)
