"""The one execution engine every sampler runs on, and the `Sampler` base class.

A sampler is a *policy*: it says which patch gets which timesteps, as a `SamplingPlan`
(a group per patch, and per group a start timestep ``T_g`` and a DDIM step count
``N_g``). Everything else is the engine's and the same for every sampler:

1. noise per patch from its own seed (`derive_seeds`, `patch_noise`), drawn on the CPU,
   so a patch's result never depends on which other patches share its batch;
2. the shortcut start ``y_T = sqrt(ᾱ_T)·y0 + sqrt(1−ᾱ_T)·ε`` (`shortcut_noise` op);
3. the ragged loop: at global iteration ``j`` the active set is every patch with
   ``N_g > j`` (from any group, any image), cut into chunks of at most
   ``max_batch_patches``; the denoiser runs once per chunk and `group_denoise_step`
   applies each patch's own DDIM (η = 0) update (its own ``t`` and ``t_next``) in place;
4. out-of-memory: the failing chunk is halved and retried, and the smaller size kept;
5. half precision: with a fp16/bf16 denoiser that offers ``full_precision`` (see
   `patchscaler.sampling.denoiser`), a chunk whose output has a NaN/Inf is run again in
   float32 before its step is applied;
6. counters (`SamplerOutput`): patch-evaluations, denoiser calls, iterations, reruns.

Total work is ``Σ_g |G_g|·N_g`` patch-evaluations, known before the loop starts
(`SamplingPlan.evaluations`), which is what progress reports count towards.

A sampler holds no state of a call, so one sampler may be called from several threads.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Callable, Iterator, Sequence

import torch
from torch import Tensor

import patchscaler.ops  # noqa: F401  (registers torch.ops.patchscaler.*)
from patchscaler.diffusion.schedule import ddim_timesteps
from patchscaler.ops.group_denoise import group_denoise_step_trusted
from patchscaler.sampling.denoiser import PatchDenoiser

__all__ = ["Sampler", "SamplerOutput", "SamplingPlan", "derive_seeds", "patch_noise", "patch_qmap", "run_plan"]


@dataclass(frozen=True)
class SamplingPlan:
    """What a sampler's policy decides for one call: which patch gets which timesteps.

    group: ``[P]`` int64, each patch's index into ``schedules``.
    schedules: ``((T_g, N_g), ...)``: start timestep and DDIM step count of each group.
    names: one name per group, easy → hard (GroupMap's legend).
    """

    group: Tensor
    schedules: tuple[tuple[int, int], ...]
    names: tuple[str, ...]

    def __post_init__(self):
        if len(self.schedules) != len(self.names) or not self.schedules:
            raise ValueError(f"need one name per group, got {len(self.names)} for {len(self.schedules)} groups")

    @property
    def steps(self) -> Tensor:
        """``[P]`` int64 DDIM steps per patch, on the group's device."""
        n = torch.tensor([n for _, n in self.schedules], dtype=torch.long, device=self.group.device)
        return n[self.group]

    @property
    def evaluations(self) -> int:
        """Patch-evaluations of the denoiser the plan costs (Σ steps)."""
        return int(self.steps.sum())

    def tables(self, device: torch.device) -> tuple[Tensor, Tensor]:
        """(t_start [G], table [G, maxN+1]): row g is the group's DDIM timesteps then −1 (x̂0)."""
        width = max(n for _, n in self.schedules) + 1
        table = torch.full((len(self.schedules), width), -1, dtype=torch.long)
        for g, (t0, n) in enumerate(self.schedules):
            table[g, :n] = torch.tensor(ddim_timesteps(t0, n))
        t_start = torch.tensor([t for t, _ in self.schedules], dtype=torch.long)
        return t_start.to(device), table.to(device)


@dataclass
class SamplerOutput:
    """What a sampler returns. Unpacks as ``x0, group, steps = sampler(...)``.

    x0: ``[P,C,h,w]`` float32 denoised latent patches; group: ``[P]`` int64 index into
    ``group_names``; steps: ``[P]`` int64 DDIM steps taken per patch;
    evaluations: patch-evaluations of the denoiser actually run (= steps.sum());
    dit_calls: denoiser forward calls (chunks); iterations: global loop iterations.
    fp32_reruns: chunks whose half-precision output had a NaN/Inf and were run again in
        float32 (0 for a float32 denoiser); fp32_steps: ``[P]`` int64 (CPU), how many of
        each patch's steps came from such a rerun (None: zeros).
    batch_halved_to: when the device ran out of memory, the chunk was halved and that
        step retried; the chunk size the call ended with (None: it never ran out).
    group_names: the plan's group names, easy → hard.
    """

    x0: Tensor
    group: Tensor
    steps: Tensor
    evaluations: int
    dit_calls: int
    iterations: int
    fp32_reruns: int = 0
    fp32_steps: Tensor | None = None
    batch_halved_to: int | None = None
    group_names: tuple[str, ...] = ()

    def __iter__(self) -> Iterator[Tensor]:
        return iter((self.x0, self.group, self.steps))

    @property
    def fp32_evaluations(self) -> int:
        """Patch-evaluations recomputed in float32 (Σ ``fp32_steps``)."""
        return int(self.fp32_steps.sum()) if self.fp32_steps is not None else 0

    def part(self, start: int, stop: int) -> "SamplerOutput":
        """Patches ``start:stop`` (e.g. one image's); ``evaluations`` and ``fp32_steps``
        are theirs, ``dit_calls``, ``iterations`` and ``fp32_reruns`` stay the whole call's."""
        sl = slice(start, stop)
        steps = self.steps[sl]
        fp32 = self.fp32_steps[sl] if self.fp32_steps is not None else None
        return replace(self, x0=self.x0[sl], group=self.group[sl], steps=steps, evaluations=int(steps.sum()),
                       fp32_steps=fp32)


def patch_qmap(confidence_patches: Tensor) -> Tensor:
    """The Qmap: GRM confidence cut into patches ``[P,1,ph,pw]`` (e.g. `PatchPlan.split`)
    → mean confidence per patch ``[P]`` float32."""
    return confidence_patches.float().mean(dim=(1, 2, 3))


_MASK64 = (1 << 64) - 1


def _splitmix64(x: int) -> int:
    x = (x + 0x9E3779B97F4A7C15) & _MASK64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK64
    return x ^ (x >> 31)


def derive_seeds(base_seed: int, keys: Tensor | Sequence[Sequence[int]]) -> Tensor:
    """One 63-bit seed per patch ``[P]`` int64 from a base seed and integer keys ``[P, k]``.

    Use keys that identify a patch independently of batching, e.g. (image index, y, x)
    of its origin: the same patch then gets the same noise in any batch, order or chunking.
    """
    rows = keys.tolist() if isinstance(keys, Tensor) else [list(r) for r in keys]
    out = []
    for row in rows:
        h = _splitmix64(int(base_seed) & _MASK64)
        for v in (row if isinstance(row, (list, tuple)) else [row]):
            h = _splitmix64(h ^ (int(v) & _MASK64))
        out.append(h >> 1)
    return torch.tensor(out, dtype=torch.long)


def patch_noise(
    shape: Sequence[int],
    seeds: Tensor | Sequence[int] | None = None,
    generators: Sequence[torch.Generator] | None = None,
) -> Tensor:
    """Standard normal noise ``[P, *shape]`` float32 on the CPU, row ``p`` from its own seed or generator.

    Drawn on the CPU whatever the compute device, so results also match across devices.
    """
    if generators is not None:
        gens = list(generators)
    else:
        gens = [torch.Generator().manual_seed(int(s)) for s in (seeds.tolist() if isinstance(seeds, Tensor) else seeds)]
    if not gens:
        return torch.zeros(0, *shape)
    return torch.stack([torch.randn(tuple(shape), generator=g) for g in gens])


def call_noise(
    shape: Sequence[int], P: int, seeds: Tensor | Sequence[int] | int | None, generators: Sequence[torch.Generator] | None
) -> Tensor:
    """Noise ``[P, *shape]`` for one sampler call from per-patch seeds, generators, or an int
    base seed (patch ``p`` then gets ``derive_seeds(seed, [[p]])``); ValueError on a count mismatch."""
    if generators is None and (seeds is None or isinstance(seeds, int)):
        seeds = derive_seeds(seeds or 0, torch.arange(P)[:, None])
    elif generators is None and len(seeds) != P:
        raise ValueError(f"need one seed per patch ({P}), got {len(seeds)}")
    elif generators is not None and len(generators) != P:
        raise ValueError(f"need one generator per patch ({P}), got {len(generators)}")
    return patch_noise(shape, seeds, generators)


def _halve_chunk(size: int, device: torch.device) -> int:
    """The chunk size after an out-of-memory error on a chunk of ``size`` patches; a clear
    ``torch.OutOfMemoryError`` when one patch was already too many."""
    if size <= 1:
        raise torch.OutOfMemoryError(
            f"{device} ran out of memory running the Patch-DiT on a single patch; free memory on the device, "
            "or run on the CPU"
        )
    if device.type == "cuda":
        torch.cuda.empty_cache()  # hand back what the failed chunk held before the retry
    return max(1, size // 2)


@dataclass
class _Counters:
    """What one engine run counts while it goes."""

    evaluations: int = 0
    dit_calls: int = 0
    fp32_reruns: int = 0
    halved: int | None = None


def run_plan(
    denoiser: PatchDenoiser,
    y0_patches: Tensor,
    plan: SamplingPlan,
    noise: Tensor,
    *,
    clip_x0: float | None = 1.0,
    max_batch_patches: int = 256,
    fp32_fallback: bool = True,
    progress: Callable[[int], None] | None = None,
) -> SamplerOutput:
    """Run ``plan`` on ``y0_patches [P,C,h,w]`` with ``noise [P,C,h,w]`` (module docstring).

    ``progress(n)`` is called with the patch-evaluations of each denoiser call, which add
    up to ``plan.evaluations``.
    """
    device = y0_patches.device
    group, steps = plan.group.to(device), plan.steps.to(device)
    if y0_patches.shape[0] == 0:
        return SamplerOutput(y0_patches.float().clone(), group, steps, 0, 0, 0, 0, torch.zeros(0, dtype=torch.long),
                             group_names=plan.names)
    t_start, table = plan.tables(device)
    ac = denoiser.alphas_cumprod.to(device)
    # The state of every patch stays float32 whatever the model's dtype: it is
    # updated in place N times and fp16 rounding would accumulate.
    x_all = torch.ops.patchscaler.shortcut_noise(y0_patches.float().contiguous(), noise.to(device), t_start[group], ac)
    cond = denoiser.condition(y0_patches)
    # The schedule of the whole call is known now: one read-back of the step counts,
    # then the active sets are cut on the host and the steps run without any
    # device→host transfer (indices and timesteps come from these tables), except
    # the finite check of a half-precision chunk.
    steps_host = steps.cpu()
    iterations = int(steps_host.max())
    fp32_steps = torch.zeros(y0_patches.shape[0], dtype=torch.long)
    count = _Counters()
    step = _ChunkStep(denoiser, x_all, cond, group, table, ac, clip_x0, _half_precision_guard(denoiser, fp32_fallback))
    limit = max_batch_patches
    for j in range(iterations):
        pending = list(torch.nonzero(steps_host > j).squeeze(1).split(limit))
        while pending:
            idx_host = pending.pop(0)
            try:
                rerun = step(idx_host, j)
            except torch.OutOfMemoryError:
                rerun = None  # halved below, once the error (and the chunk's tensors it holds) is gone
            if rerun is None:
                # Retry this chunk (only) in halves, and keep the smaller size for the
                # rest of the call; a patch's result does not depend on its chunk.
                limit = count.halved = _halve_chunk(idx_host.numel(), device)
                pending[:0] = list(idx_host.split(limit))
                continue
            if rerun:
                count.fp32_reruns += 1
                fp32_steps[idx_host] += 1
            count.evaluations += idx_host.numel()
            count.dit_calls += 1
            if progress is not None:
                progress(idx_host.numel())
    return SamplerOutput(x_all, group, steps, count.evaluations, count.dit_calls, iterations, count.fp32_reruns,
                         fp32_steps, count.halved, plan.names)


class _ChunkStep:
    """One DDIM step of one chunk of patches, in place in the state of all patches."""

    def __init__(self, denoiser, x_all, cond, group, table, ac, clip, guard):
        self.denoiser, self.x_all, self.cond, self.group = denoiser, x_all, cond, group
        self.table, self.ac, self.clip, self.guard = table, ac, clip, guard

    def __call__(self, idx_host: Tensor, j: int) -> bool:
        """Step patches ``idx_host`` at iteration ``j``; True when the chunk was rerun in float32.
        An out-of-memory error leaves the state untouched (the step is applied last)."""
        idx = idx_host.to(self.x_all.device, non_blocking=True)
        g = self.group[idx]
        t, t_next = self.table[g, j], self.table[g, j + 1]
        x, c = self.x_all[idx], {k: v[idx] for k, v in self.cond.items()}
        out = self.denoiser(x, t, c)
        rerun = self.guard and not bool(torch.isfinite(out).all())
        if rerun:
            out = _rerun_fp32(self.denoiser, x, t, c)
        group_denoise_step_trusted(self.x_all, out, idx, t, t_next, self.ac, self.denoiser.prediction, self.clip)
        return rerun


def _half_precision_guard(denoiser: PatchDenoiser, fp32_fallback: bool) -> bool:
    """Whether chunks are checked: a half-precision denoiser that can compute in float32."""
    return (
        fp32_fallback
        and callable(getattr(denoiser, "full_precision", None))
        and getattr(denoiser, "dtype", torch.float32) in (torch.float16, torch.bfloat16)
    )


def _rerun_fp32(denoiser: PatchDenoiser, x: Tensor, t: Tensor, cond: dict[str, Tensor]) -> Tensor:
    out = denoiser.full_precision(x, t, cond)
    if not bool(torch.isfinite(out).all()):
        raise FloatingPointError("the Patch-DiT's output is not finite even in float32 (broken weights or input?)")
    return out


class Sampler:
    """A sampling policy on the shared engine. Subclasses set ``name`` and implement
    `plan_groups` (which group each patch of one image is in, and each group's timesteps).

    ``__call__(y0_patches [P,C,h,w], qmap [P], seeds=..., max_batch_patches=256,
    progress=None, group=None) -> SamplerOutput``

    qmap: ``[P]`` float32 mean GRM confidence per patch; without ``group``, the call's
        patches are planned as one image.
    group: ``[P]`` int64 groups already planned image by image (`assign_groups` on each
        image's whole qmap, as the pipeline does when it streams an image in bands).
    seeds: ``[P]`` int64 (or a list) per-patch seeds; or an int base seed, from which
        patch ``p`` gets ``derive_seeds(seed, [[p]])`` (then the noise depends on the
        patch's position in the call: pass per-patch seeds for batch-independent results);
    generators: instead of seeds, one `torch.Generator` per patch.
    progress: called with the number of patch-evaluations after each denoiser call.

    ``fp32_fallback`` (default True): with a half-precision denoiser that has
    ``full_precision``, a chunk with a non-finite output is run again in float32; this
    costs one device→host read of a flag per chunk. False: no check.
    """

    name: str = "sampler"
    clip_x0: float | None = 1.0

    def __init__(self, denoiser: PatchDenoiser, *, fp32_fallback: bool = True):
        self.denoiser = denoiser
        self.fp32_fallback = fp32_fallback
        # The one schedule is the denoiser's (from its weights).
        self.alphas_cumprod = denoiser.alphas_cumprod

    # --------------------------------------------------------------- the policy

    @property
    def schedules(self) -> tuple[tuple[int, int], ...]:
        """``((T_g, N_g), ...)`` per group."""
        raise NotImplementedError

    @property
    def group_names(self) -> tuple[str, ...]:
        raise NotImplementedError

    def assign_groups(self, qmap: Tensor) -> Tensor:
        """One image's ``[P]`` mean confidence → ``[P]`` int64 group."""
        raise NotImplementedError

    # --------------------------------------------------------------- shared

    def plan(self, qmap: Tensor, group: Tensor | None = None) -> SamplingPlan:
        """The `SamplingPlan` for patches with confidence ``qmap`` (or the given groups)."""
        return SamplingPlan(self.assign_groups(qmap) if group is None else group, self.schedules, self.group_names)

    def planned_evaluations(self, group: Tensor) -> int:
        """Patch-evaluations a call with these groups will run (known before it starts)."""
        return SamplingPlan(group.cpu(), self.schedules, self.group_names).evaluations

    @torch.no_grad()
    def __call__(
        self,
        y0_patches: Tensor,
        qmap: Tensor,
        seeds: Tensor | Sequence[int] | int | None = 0,
        generators: Sequence[torch.Generator] | None = None,
        max_batch_patches: int = 256,
        progress: Callable[[int], None] | None = None,
        group: Tensor | None = None,
    ) -> SamplerOutput:
        if y0_patches.dim() != 4 or qmap.shape != (y0_patches.shape[0],):
            raise ValueError(f"need y0_patches [P,C,h,w] and qmap [P], got {tuple(y0_patches.shape)}, {tuple(qmap.shape)}")
        if group is not None and group.shape != qmap.shape:
            raise ValueError(f"need one group per patch ({qmap.shape[0]}), got {tuple(group.shape)}")
        if max_batch_patches < 1:
            raise ValueError(f"max_batch_patches must be >= 1, got {max_batch_patches}")
        device = y0_patches.device
        plan = self.plan(qmap.to(device), None if group is None else group.to(device))
        P = y0_patches.shape[0]
        noise = call_noise(y0_patches.shape[1:], P, seeds, generators) if P else None
        return run_plan(self.denoiser, y0_patches, plan, noise, clip_x0=self.clip_x0,
                        max_batch_patches=max_batch_patches, fp32_fallback=self.fp32_fallback, progress=progress)
