"""Patch-adaptive Group Sampling (paper §3.2, SPEC §1.2 and §2) and the uniform baseline:
the policies. The engine that runs them is `patchscaler.sampling.engine`.

Per latent patch ``p`` with coarse latent ``y0[p]`` and mean GRM confidence ``q[p]``
(the "Qmap", `patch_qmap`):

1. group by thresholds γ1 > γ2: simple ``q > γ1``, medium ``γ2 < q ≤ γ1``, hard ``q ≤ γ2``;
   group ``g`` has a start timestep and a step count ``(T_g, N_g)``;
2. cap: a quality preset allows at most a share of an image's patches in the hard and in
   the medium group (`PRESET_MAX_SHARE`); past it, the lowest-confidence patches keep the
   harder group and the others move to the next easier one, so a preset changes the
   cost even when every patch is below the thresholds;
3. the engine: shortcut start from y0 at ``T_g`` and ``N_g`` DDIM steps to x̂0.

Total work is ``Σ_g |G_g|·N_g`` patch-evaluations, against ``P·N_3`` for `UniformSampler`.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import torch
from torch import Tensor

from patchscaler.checkpoints import weights_file
from patchscaler.diffusion.schedule import NUM_TRAIN_TIMESTEPS, ddim_timesteps
from patchscaler.sampling.denoiser import PatchDenoiser
from patchscaler.sampling.engine import Sampler, SamplerOutput, derive_seeds, patch_noise, patch_qmap
from patchscaler.sampling.spec import QUALITY_PRESETS, SamplerSpec, check_quality, register_sampler

__all__ = [
    "PGSConfig",
    "PGSOutput",
    "PGSSampler",
    "UniformSampler",
    "QUALITY_PRESETS",
    "PRESET_MAX_SHARE",
    "check_quality",
    "assign_groups",
    "patch_qmap",
    "derive_seeds",
    "patch_noise",
]

SIMPLE, MEDIUM, HARD = 0, 1, 2
GROUP_NAMES = ("simple", "medium", "hard")
# The largest share of an image's patches each preset lets into the (hard, medium) group,
# set near the 95th percentile of each preset's own shares on Set5 + Set14 + B100 (the
# thresholds alone, x4 bicubic LR; medians 2 / 6 / 30 % hard), so they bind on few
# ordinary images and change the cost of those whose confidence is low almost everywhere
# (RealSRSet's frog: 400 of 400 patches hard under every preset without them).
# A config's preset entry may carry its own "max_share".
PRESET_MAX_SHARE = {"fast": (0.40, 0.65), "balanced": (0.55, 0.85), "detail": (0.90, 0.75)}
PGSOutput = SamplerOutput  # the name this output had before every sampler shared it


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
    max_share: (hard, medium): the largest share of one image's patches in the hard and
        in the medium group, in (0, 1]; (1, 1): no cap. `preset` sets the preset's.
    """

    gammas: tuple[float, float] = (0.7, 0.4)
    groups: tuple[tuple[int, int], ...] = ((150, 1), (350, 4), (600, 12))
    prediction: str | None = None
    clip_x0: float | None = 1.0
    schedule: str = "cosine"
    num_train_timesteps: int = NUM_TRAIN_TIMESTEPS
    calibration: dict | None = field(default=None, compare=False)
    presets: dict | None = field(default=None, compare=False)
    max_share: tuple[float, float] = (1.0, 1.0)

    def __post_init__(self):
        self.gammas = tuple(float(g) for g in self.gammas)
        self.max_share = tuple(float(s) for s in self.max_share)
        if len(self.max_share) != 2 or not all(0 < s <= 1 for s in self.max_share):
            raise ValueError(f"max_share must be (hard, medium) shares in (0, 1], got {self.max_share}")
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
        d["max_share"] = list(self.max_share)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "PGSConfig":
        known = {k: v for k, v in d.items() if k in cls.__dataclass_fields__}
        return cls(**known)

    def save(self, path: str | os.PathLike) -> None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(json.dumps(self.to_dict(), indent=2) + "\n")

    def preset(self, name: str) -> "PGSConfig":
        """This config with quality preset ``name``'s (`QUALITY_PRESETS`) thresholds and
        group caps (`PRESET_MAX_SHARE`, or the preset entry's own "max_share").

        "balanced" keeps the config's thresholds. Another preset the config does not carry
        (the defaults, or a config calibrated before presets existed) raises ValueError.
        """
        entry = (self.presets or {}).get(check_quality(name))
        if name != "balanced" and entry is None:
            raise ValueError(f"this PGS config has no {name!r} preset (run python -m patchscaler.train.calibrate_pgs)")
        entry = entry or {}
        return replace(self, gammas=tuple(entry.get("gammas", self.gammas)),
                       max_share=tuple(entry.get("max_share", PRESET_MAX_SHARE[name])))

    @classmethod
    def load(cls, path: str | os.PathLike | None = None, *, model: str | None = None) -> "PGSConfig":
        """From ``path``, else from model set ``model``'s ``pgs_config.json`` when it exists, else defaults."""
        if path is None:
            path = weights_file("pgs", model)
            if not path.is_file():
                return cls()
        return cls.from_dict(json.loads(Path(path).read_text()))


def assign_groups(qmap: Tensor, gammas: tuple[float, float], max_share: tuple[float, float] = (1.0, 1.0)) -> Tensor:
    """One image's mean confidence per patch ``[P]`` → group ``[P]`` int64: 0 if q > γ1,
    1 if γ2 < q ≤ γ1, 2 if q ≤ γ2; then at most ``max_share`` = (hard, medium) of the
    patches in those groups, the lowest confidence first (ties: the lower patch index)."""
    g1, g2 = gammas
    q = qmap.float()
    group = torch.full(q.shape, HARD, dtype=torch.long, device=q.device)
    group[q > g2] = MEDIUM
    group[q > g1] = SIMPLE
    P = q.numel()
    hard, harder_than_simple = int((group == HARD).sum()), int((group != SIMPLE).sum())
    cap_hard, cap_medium = (_share_count(s, P) for s in max_share)
    if hard <= cap_hard and harder_than_simple - hard <= cap_medium:
        return group  # no cap binds: the thresholds alone
    # The threshold groups are runs of the confidence order (hard lowest), so capping
    # them is cutting that order at new places.
    n_hard = min(hard, cap_hard)
    n_medium = min(harder_than_simple - n_hard, cap_medium)
    rank = torch.empty(P, dtype=torch.long, device=q.device)
    rank[torch.argsort(q, stable=True)] = torch.arange(P, device=q.device)
    group = torch.full(q.shape, SIMPLE, dtype=torch.long, device=q.device)
    group[rank < n_hard + n_medium] = MEDIUM
    group[rank < n_hard] = HARD
    return group


def _share_count(share: float, patches: int) -> int:
    """The most patches a share allows, rounded up (a share of a small image still admits one);
    the 1e-9 keeps 0.15·400 = 60.000000000000007 at 60."""
    return min(patches, math.ceil(share * patches - 1e-9))


class PGSSampler(Sampler):
    """Patch-adaptive group sampler (module docstring) on the shared engine; calls and
    output as `patchscaler.sampling.engine.Sampler`."""

    name = "pgs"

    def __init__(self, denoiser: PatchDenoiser, config: PGSConfig | None = None, *, fp32_fallback: bool = True):
        super().__init__(denoiser, fp32_fallback=fp32_fallback)
        self.config = config = config if config is not None else PGSConfig()
        if config.prediction is not None and config.prediction != denoiser.prediction:
            raise ValueError(f"config wants prediction {config.prediction!r}, the denoiser makes {denoiser.prediction!r}")
        # The one schedule is the denoiser's (from its weights); the config only names it.
        made = (denoiser.schedule, self.alphas_cumprod.shape[0])
        if made != (config.schedule, config.num_train_timesteps):
            raise ValueError(
                f"the PGS config is for a {config.schedule!r} schedule of {config.num_train_timesteps} steps, "
                f"the denoiser was trained with a {made[0]!r} schedule of {made[1]} steps"
            )

    @property
    def clip_x0(self) -> float | None:
        return self.config.clip_x0

    @property
    def schedules(self) -> tuple[tuple[int, int], ...]:
        return self.config.groups

    @property
    def group_names(self) -> tuple[str, ...]:
        return GROUP_NAMES

    def assign_groups(self, qmap: Tensor) -> Tensor:
        """One image's ``[P]`` mean confidence → ``[P]`` int64 group (thresholds, then caps)."""
        return assign_groups(qmap, self.config.gammas, self.config.max_share)


class UniformSampler(PGSSampler):
    """The baseline: every patch is "hard" — N3 DDIM steps from T3 — whatever its confidence.
    Same call signature and output as `PGSSampler` (``group`` is 2 everywhere)."""

    name = "uniform"

    def assign_groups(self, qmap: Tensor) -> Tensor:
        return torch.full(qmap.shape, HARD, dtype=torch.long, device=qmap.device)


register_sampler(SamplerSpec(
    "pgs", lambda denoiser, paths, quality: PGSSampler(denoiser, PGSConfig.load(paths["pgs"]).preset(quality)),
    ("dit", "pgs"), True, "patch-adaptive group sampling with the Patch-DiT (the method)",
    {"pgs": "balanced", "pgs-fast": "fast", "pgs-detail": "detail"},
))
register_sampler(SamplerSpec(
    "uniform", lambda denoiser, paths, quality: UniformSampler(denoiser, PGSConfig.load(paths["pgs"])),
    ("dit", "pgs"), False, "every patch the hard group's steps (the slow baseline)",
))
