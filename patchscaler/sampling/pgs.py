"""Patch-adaptive Group Sampling (paper §3.2, SPEC §1.2 and §2) and the uniform baseline.

Per latent patch ``p`` with coarse latent ``y0[p]`` and mean GRM confidence ``q[p]``
(the "Qmap", `patch_qmap`):

1. group by thresholds γ1 > γ2: simple ``q > γ1``, medium ``γ2 < q ≤ γ1``, hard ``q ≤ γ2``;
   group ``g`` has a start timestep and a step count ``(T_g, N_g)``;
2. shortcut start ``y_T = sqrt(ᾱ_T)·y0 + sqrt(1−ᾱ_T)·ε`` (`shortcut_noise`), with ε drawn
   from the patch's own seed, so a patch's result never depends on which other patches
   share its batch;
3. ``N_g`` DDIM (η = 0) steps along `ddim_timesteps(T_g, N_g)` to x̂0.

The ragged scheduler runs every group in one loop. At global iteration ``j`` the active
set is every patch with ``N_g > j`` (from any group, any image); it is cut into chunks
of at most ``max_batch_patches``, the denoiser runs once per chunk, and
`group_denoise_step` applies each patch's own DDIM update (its own ``t`` and
``t_next``) in place in the state of all patches. Total work is
``Σ_g |G_g|·N_g`` patch-evaluations, against ``P·N_3`` for `UniformSampler`.

Half precision: with a denoiser in fp16/bf16 that offers ``full_precision`` (see
`patchscaler.sampling.denoiser`), every chunk's output is checked for NaN/Inf and a
chunk that has one is run again in float32 before its step is applied; `PGSOutput`
counts those reruns, per call and per patch.

A sampler holds no state of a call, so one sampler may be called from several threads
at once.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Callable, Iterator, Sequence

import torch
from torch import Tensor

import patchscaler.ops  # noqa: F401  (registers torch.ops.patchscaler.*)
from patchscaler.checkpoints import weights_file
from patchscaler.ops.group_denoise import group_denoise_step_trusted
from patchscaler.diffusion.schedule import NUM_TRAIN_TIMESTEPS, ddim_timesteps
from patchscaler.sampling.denoiser import PatchDenoiser

__all__ = [
    "PGSConfig",
    "PGSOutput",
    "PGSSampler",
    "UniformSampler",
    "QUALITY_PRESETS",
    "check_quality",
    "assign_groups",
    "patch_qmap",
    "derive_seeds",
    "patch_noise",
]

SIMPLE, MEDIUM, HARD = 0, 1, 2
GROUP_NAMES = ("simple", "medium", "hard")
# Speed/quality presets: the same step counts with thresholds that send more patches to
# the cheap ("fast") or the hard ("detail") groups (`patchscaler.train.calibrate_pgs`);
# "balanced" is the config itself.
QUALITY_PRESETS = ("fast", "balanced", "detail")


def check_quality(name: str) -> str:
    """``name`` if it is one of `QUALITY_PRESETS`, else ValueError."""
    if name not in QUALITY_PRESETS:
        raise ValueError(f"quality must be one of {', '.join(map(repr, QUALITY_PRESETS))}, got {name!r}")
    return name


@dataclass
class PGSConfig:
    """Sampler settings. Written by `python -m patchscaler.train.calibrate_pgs` to a model
    set's ``pgs_config.json`` (with the measured trade-off in ``calibration``), from that
    set's trained DiT; the defaults below are SPEC §2's starting points.

    gammas: (γ1, γ2), γ1 > γ2, thresholds on a patch's mean confidence in [0, 1].
    groups: ((T1, N1), (T2, N2), (T3, N3)) for simple, medium, hard; T1 < T2 < T3 and
        N1 ≤ N2 ≤ N3 (the sampler accepts any values; calibration enforces the order).
    prediction: "eps"/"v" to insist on a model type, None to take the denoiser's.
    schedule, num_train_timesteps: the schedule of the DiT the config was calibrated with;
        the sampler takes its ᾱ table from the denoiser and refuses one that differs.
    clip_x0: clamp each step's x̂0 to [−clip_x0, clip_x0] (the latent of an image in
        [0, 1] lies in [−1, 1]); None: no clamp.
    presets: {"fast": {"gammas": [γ1, γ2], ...}, "detail": {...}}: other thresholds for
        the same (T_i, N_i), from the calibration (`preset`): "fast" puts more patches in
        the cheap groups, "detail" more in the hard one.
    """

    gammas: tuple[float, float] = (0.7, 0.4)
    groups: tuple[tuple[int, int], ...] = ((150, 1), (350, 4), (600, 12))
    prediction: str | None = None
    clip_x0: float | None = 1.0
    schedule: str = "cosine"
    num_train_timesteps: int = NUM_TRAIN_TIMESTEPS
    calibration: dict | None = field(default=None, compare=False)
    presets: dict | None = field(default=None, compare=False)

    def __post_init__(self):
        self.gammas = tuple(float(g) for g in self.gammas)
        self.groups = tuple((int(t), int(n)) for t, n in self.groups)
        if len(self.gammas) != 2 or not self.gammas[0] > self.gammas[1]:
            raise ValueError(f"gammas must be (γ1, γ2) with γ1 > γ2, got {self.gammas}")
        if len(self.groups) != 3:
            raise ValueError(f"groups must be three (T, N) pairs (simple, medium, hard), got {self.groups}")
        for t, n in self.groups:
            if not 0 <= t < self.num_train_timesteps:
                raise ValueError(f"start timestep {t} outside [0, {self.num_train_timesteps})")
            ddim_timesteps(t, n)  # validates n
        if self.prediction not in (None, "eps", "v"):
            raise ValueError(f"prediction must be None, 'eps' or 'v', got {self.prediction!r}")

    def to_dict(self) -> dict:
        d = asdict(self)
        d["gammas"] = list(self.gammas)
        d["groups"] = [list(g) for g in self.groups]
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "PGSConfig":
        known = {k: v for k, v in d.items() if k in cls.__dataclass_fields__}
        return cls(**known)

    def save(self, path: str | os.PathLike) -> None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(json.dumps(self.to_dict(), indent=2) + "\n")

    def preset(self, name: str) -> "PGSConfig":
        """This config with the thresholds of quality preset ``name`` (`QUALITY_PRESETS`).

        "balanced" is the config itself. A preset the config does not carry (the defaults,
        or a config calibrated before presets existed) raises ValueError.
        """
        if check_quality(name) == "balanced":
            return self
        if not self.presets or name not in self.presets:
            raise ValueError(f"this PGS config has no {name!r} preset (run python -m patchscaler.train.calibrate_pgs)")
        return replace(self, gammas=tuple(self.presets[name]["gammas"]))

    @classmethod
    def load(cls, path: str | os.PathLike | None = None, *, model: str | None = None) -> "PGSConfig":
        """From ``path``, else from model set ``model``'s ``pgs_config.json`` when it exists, else defaults."""
        if path is None:
            path = weights_file("pgs", model)
            if not path.is_file():
                return cls()
        return cls.from_dict(json.loads(Path(path).read_text()))


@dataclass
class PGSOutput:
    """What a sampler returns. Unpacks as ``x0, group, steps = sampler(...)``.

    x0: ``[P,C,h,w]`` float32 denoised latent patches; group: ``[P]`` int64 (0 simple,
    1 medium, 2 hard); steps: ``[P]`` int64 DDIM steps taken per patch;
    evaluations: patch-evaluations of the denoiser actually run (= steps.sum());
    dit_calls: denoiser forward calls (chunks); iterations: global loop iterations.
    fp32_reruns: chunks whose half-precision output had a NaN/Inf and were run again in
        float32 (0 for a float32 denoiser); fp32_steps: ``[P]`` int64 (CPU), how many of
        each patch's steps came from such a rerun (None: zeros).
    batch_halved_to: when the device ran out of memory, the chunk was halved and that
        step retried; the chunk size the call ended with (None: it never ran out).
    """

    x0: Tensor
    group: Tensor
    steps: Tensor
    evaluations: int
    dit_calls: int
    iterations: int
    fp32_reruns: int = 0
    fp32_steps: Tensor | None = None
    batch_halved_to: int | None = None  # patches per denoiser call after out-of-memory halvings (None: none)

    def __iter__(self) -> Iterator[Tensor]:
        return iter((self.x0, self.group, self.steps))

    @property
    def fp32_evaluations(self) -> int:
        """Patch-evaluations recomputed in float32 (Σ ``fp32_steps``)."""
        return int(self.fp32_steps.sum()) if self.fp32_steps is not None else 0

    def part(self, start: int, stop: int) -> "PGSOutput":
        """Patches ``start:stop`` (e.g. one image's); ``evaluations`` and ``fp32_steps``
        are theirs, ``dit_calls``, ``iterations`` and ``fp32_reruns`` stay the whole call's."""
        sl = slice(start, stop)
        steps = self.steps[sl]
        fp32 = self.fp32_steps[sl] if self.fp32_steps is not None else None
        return PGSOutput(
            self.x0[sl], self.group[sl], steps, int(steps.sum()), self.dit_calls, self.iterations, self.fp32_reruns, fp32,
            self.batch_halved_to,
        )


def assign_groups(qmap: Tensor, gammas: tuple[float, float]) -> Tensor:
    """Mean confidence per patch ``[P]`` → group ``[P]`` int64: 0 if q > γ1, 1 if γ2 < q ≤ γ1, 2 if q ≤ γ2."""
    g1, g2 = gammas
    q = qmap.float()
    group = torch.full(q.shape, HARD, dtype=torch.long, device=q.device)
    group[q > g2] = MEDIUM
    group[q > g1] = SIMPLE
    return group


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


class PGSSampler:
    """Patch-adaptive group sampler with the ragged scheduler (module docstring).

    ``__call__(y0_patches [P,C,h,w], qmap [P], seeds=..., max_batch_patches=256) -> PGSOutput``

    seeds: ``[P]`` int64 (or a list) per-patch seeds; or an int base seed, from which
    patch ``p`` gets ``derive_seeds(seed, [[p]])`` (then the noise depends on the patch's
    position in the call: pass per-patch seeds for batch-independent results);
    generators: instead of seeds, one `torch.Generator` per patch.
    progress: called with the number of patch-evaluations after each denoiser call.

    ``fp32_fallback`` (default True): with a half-precision denoiser that has
    ``full_precision``, a chunk with a non-finite output is run again in float32 (module
    docstring); this costs one device→host read of a flag per chunk. False: no check.
    """

    def __init__(self, denoiser: PatchDenoiser, config: PGSConfig | None = None, *, fp32_fallback: bool = True):
        self.denoiser = denoiser
        self.fp32_fallback = fp32_fallback
        self.config = config = config if config is not None else PGSConfig()
        if config.prediction is not None and config.prediction != denoiser.prediction:
            raise ValueError(f"config wants prediction {config.prediction!r}, the denoiser makes {denoiser.prediction!r}")
        # The one schedule is the denoiser's (from its weights); the config only names it.
        self.alphas_cumprod = denoiser.alphas_cumprod
        made = (denoiser.schedule, self.alphas_cumprod.shape[0])
        if made != (config.schedule, config.num_train_timesteps):
            raise ValueError(
                f"the PGS config is for a {config.schedule!r} schedule of {config.num_train_timesteps} steps, "
                f"the denoiser was trained with a {made[0]!r} schedule of {made[1]} steps"
            )

    def assign_groups(self, qmap: Tensor) -> Tensor:
        """``[P]`` mean confidence → ``[P]`` int64 group."""
        return assign_groups(qmap, self.config.gammas)

    def _timestep_table(self, device: torch.device) -> tuple[Tensor, Tensor, Tensor]:
        """(t_start [G], n_steps [G], table [G, maxN+1]): row g is the group's DDIM timesteps then −1 (x̂0)."""
        groups = self.config.groups
        width = max(n for _, n in groups) + 1
        table = torch.full((len(groups), width), -1, dtype=torch.long)
        for g, (t0, n) in enumerate(groups):
            table[g, :n] = torch.tensor(ddim_timesteps(t0, n))
        t_start = torch.tensor([t for t, _ in groups], dtype=torch.long)
        n_steps = torch.tensor([n for _, n in groups], dtype=torch.long)
        return t_start.to(device), n_steps.to(device), table.to(device)

    @torch.no_grad()
    def __call__(
        self,
        y0_patches: Tensor,
        qmap: Tensor,
        seeds: Tensor | Sequence[int] | int | None = 0,
        generators: Sequence[torch.Generator] | None = None,
        max_batch_patches: int = 256,
        progress: Callable[[int], None] | None = None,
    ) -> PGSOutput:
        if y0_patches.dim() != 4 or qmap.shape != (y0_patches.shape[0],):
            raise ValueError(f"need y0_patches [P,C,h,w] and qmap [P], got {tuple(y0_patches.shape)}, {tuple(qmap.shape)}")
        if max_batch_patches < 1:
            raise ValueError(f"max_batch_patches must be >= 1, got {max_batch_patches}")
        P = y0_patches.shape[0]
        device = y0_patches.device
        group = self.assign_groups(qmap.to(device))
        t_start, n_steps, table = self._timestep_table(device)
        steps = n_steps[group]
        if P == 0:
            return PGSOutput(y0_patches.float().clone(), group, steps, 0, 0, 0, 0, torch.zeros(0, dtype=torch.long))

        if generators is None and (seeds is None or isinstance(seeds, int)):
            seeds = derive_seeds(seeds or 0, torch.arange(P)[:, None])
        elif generators is None and len(seeds) != P:
            raise ValueError(f"need one seed per patch ({P}), got {len(seeds)}")
        elif generators is not None and len(generators) != P:
            raise ValueError(f"need one generator per patch ({P}), got {len(generators)}")
        noise = patch_noise(y0_patches.shape[1:], seeds, generators).to(device)

        ac = self.alphas_cumprod.to(device)
        # The state of every patch stays float32 whatever the model's dtype: it is
        # updated in place N times and fp16 rounding would accumulate.
        x_all = torch.ops.patchscaler.shortcut_noise(y0_patches.float().contiguous(), noise, t_start[group], ac)
        cond = self.denoiser.condition(y0_patches)
        prediction = self.denoiser.prediction
        clip = self.config.clip_x0

        evaluations = dit_calls = fp32_reruns = 0
        guard = self._half_precision_guard()
        fp32_steps = torch.zeros(P, dtype=torch.long)
        # The schedule of the whole call is known now: one read-back of the step counts,
        # then the active sets are cut on the host and the steps run without any
        # device→host transfer (indices and timesteps come from these tables), except
        # the finite check of a half-precision chunk.
        steps_host = steps.cpu()
        iterations = int(steps_host.max())
        limit, halved = max_batch_patches, None
        for j in range(iterations):
            pending = list(torch.nonzero(steps_host > j).squeeze(1).split(limit))
            while pending:
                idx_host = pending.pop(0)
                idx = idx_host.to(device, non_blocking=True)
                g = group[idx]
                t, t_next = table[g, j], table[g, j + 1]
                x, c = x_all[idx], {k: v[idx] for k, v in cond.items()}
                try:
                    out = self.denoiser(x, t, c)
                except torch.OutOfMemoryError:
                    # Retry this chunk (only) in halves, and keep the smaller size for the
                    # rest of the call; a patch's result does not depend on its chunk.
                    del x, c
                    limit = halved = _halve_chunk(idx_host.numel(), device)
                    pending[:0] = list(idx_host.split(limit))
                    continue
                if guard and not bool(torch.isfinite(out).all()):
                    out = self._rerun_fp32(x, t, c)
                    fp32_reruns += 1
                    fp32_steps[idx_host] += 1
                group_denoise_step_trusted(x_all, out, idx, t, t_next, ac, prediction, clip)
                evaluations += idx.numel()
                dit_calls += 1
                if progress is not None:
                    progress(idx.numel())
        return PGSOutput(x_all, group, steps, evaluations, dit_calls, iterations, fp32_reruns, fp32_steps, halved)

    def _half_precision_guard(self) -> bool:
        """Whether chunks are checked: a half-precision denoiser that can compute in float32."""
        d = self.denoiser
        return (
            self.fp32_fallback
            and callable(getattr(d, "full_precision", None))
            and getattr(d, "dtype", torch.float32) in (torch.float16, torch.bfloat16)
        )

    def _rerun_fp32(self, x: Tensor, t: Tensor, cond: dict[str, Tensor]) -> Tensor:
        out = self.denoiser.full_precision(x, t, cond)
        if not bool(torch.isfinite(out).all()):
            raise FloatingPointError(
                "the Patch-DiT's output is not finite even in float32 (broken weights or input?)"
            )
        return out


class UniformSampler(PGSSampler):
    """The baseline: every patch is "hard" — N3 DDIM steps from T3 — whatever its confidence.
    Same call signature and output as `PGSSampler` (``group`` is 2 everywhere)."""

    def assign_groups(self, qmap: Tensor) -> Tensor:
        return torch.full(qmap.shape, HARD, dtype=torch.long, device=qmap.device)
