"""Calibrate Patch-adaptive Group Sampling: thresholds γ1, γ2 and (T_i, N_i) per group.

    python -m patchscaler.train.calibrate_pgs                  # → patchscaler/weights/bicubic/pgs_config.json
    python -m patchscaler.train.calibrate_pgs --crops 160 --fractions 0.5,0.38,0.12 --threads 2

On latent patches of held-out photos (never seen by the GRM, texture, RTM or DiT
trainers, see `patchscaler.train.patch_pairs`), with the frozen GRM, DiT and RTM:

1. Thresholds from confidence quantiles (crops drawn with every held-out photo
   equally likely, as benchmark means weigh every image equally): with group shares ``--fractions``
   (simple, medium, hard), γ1 is the (1 − f_simple) quantile of the Qmap (mean
   confidence per patch) and γ2 its f_hard quantile.
2. Per-group sweep: every candidate (T, N) of the group's grid denoises the group's
   patches. Score (dB) = PSNR of the decoded 64×64 patches − ``--hf-weight`` ×
   |log2 HF-ratio| (HF ratio: SR vs HR luma energy above half Nyquist, energy-weighted
   over the group's patches), which rewards fidelity and penalises both missing and
   invented detail. The groups' (T, N) are then chosen together (`choose_groups`):
   the best patch-weighted mean score among combinations with T1 < T2 < T3,
   N1 ≤ N2 ≤ N3 that spend at most ``--budget`` of the uniform sampler's
   evaluations (the cheapest within ``--tolerance`` dB of it).
3. Presets (`PGSConfig.preset`): "fast" and "detail" keep the groups' (T, N) and move
   the thresholds to the group shares ``--fast-fractions`` / ``--detail-fractions``.
4. Trade-off: PGS with the chosen config against the uniform baseline (every patch
   N3 steps from T3) on all patches, in one run: patch-evaluations and wall time of
   each, PSNR / HF ratio of both and of the GRM alone. Written into the config's
   ``calibration`` field together with the sweep table.

Sweep results are saved as they finish (OUT/sweep.json) and reused by ``--resume``.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import torch

import patchscaler.ops  # noqa: F401  (registers torch.ops.patchscaler.*)
from patchscaler.inference.codec import PixelUnshuffleCodec
from patchscaler.train.patch_pairs import (
    LatentPatchPairs,
    add_common_args,
    load_frozen_grm,
    open_pool,
    set_weights_defaults,
    split_entries,
)
from patchscaler.metrics.hf_ratio import hf_energy
from patchscaler.train.common import RunControl, RunLog
from patchscaler.metrics.ycbcr import y_channel
from patchscaler.models.dit import load_dit
from patchscaler.models.rtm import load_rtm
from patchscaler.sampling.denoiser import DiTDenoiser
from patchscaler.sampling.pgs import (
    GROUP_NAMES,
    PGSConfig,
    PGSSampler,
    UniformSampler,
    assign_groups,
    patch_qmap,
)

DEFAULT_GRIDS = (
    "100:1,150:1,150:2,200:2",
    "250:2,300:3,350:4,350:6",
    "450:6,600:6,600:8,600:12",
)


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m patchscaler.train.calibrate_pgs", description=__doc__.split("\n")[0])
    add_common_args(p, "runs/calibrate_pgs")
    p.add_argument("--grm-checkpoint", default=None,
                   help="GRM .pt/.safetensors (default: the --degradation model set's; 'bicubic' for smoke tests)")
    p.add_argument("--dit", default=None, help="Patch-DiT (default: the --degradation model set's)")
    p.add_argument("--rtm", default=None, help="texture memory (default: the --degradation model set's); 'none' for the no-reference prompt")
    p.add_argument("--crops", type=int, default=160, help="held-out LR crops (4 patches each at the default sizes)")
    p.add_argument("--lr-crop", type=int, default=48)
    p.add_argument("--fractions", default="0.5,0.38,0.12",
                   help="target shares of simple, medium, hard patches (sized so PGS spends <= 1/3 of uniform's evaluations)")
    p.add_argument("--fast-fractions", default="0.7,0.22,0.08", help="group shares of the 'fast' preset")
    p.add_argument("--detail-fractions", default="0.3,0.4,0.3", help="group shares of the 'detail' preset")
    p.add_argument("--grid-simple", default=DEFAULT_GRIDS[0], help="candidates T:N,...")
    p.add_argument("--grid-medium", default=DEFAULT_GRIDS[1])
    p.add_argument("--grid-hard", default=DEFAULT_GRIDS[2])
    p.add_argument("--hf-weight", type=float, default=1.0, help="dB of score per octave of HF-energy error")
    p.add_argument("--tolerance", type=float, default=0.05, help="dB of mean score below the best still accepted (then the cheapest wins)")
    p.add_argument("--budget", type=float, default=0.3, help="largest share of the uniform sampler's evaluations PGS may spend")
    p.add_argument("--batch", type=int, default=256, help="max patches per DiT call")
    p.add_argument("--export-to", default=None, help="default: the --degradation model set's pgs_config.json")
    a = p.parse_args(argv)
    set_weights_defaults(a, grm_checkpoint="grm", dit="dit", rtm="rtm", export_to="pgs")
    return a


def _grid(spec: str) -> list[tuple[int, int]]:
    return [tuple(int(v) for v in item.split(":")) for item in spec.split(",") if item]


def _fractions(spec: str) -> list[float]:
    fr = [float(v) for v in spec.split(",")]
    if len(fr) != 3 or abs(sum(fr) - 1) > 1e-6 or min(fr) < 0:
        raise ValueError(f"group fractions must be three shares summing to 1, got {spec}")
    return fr


def _thresholds(qmap: torch.Tensor, fr: list[float]) -> tuple[float, float]:
    """(γ1, γ2) that put shares ``fr`` (simple, medium, hard) of the patches in each group."""
    g1 = float(qmap.quantile(1 - fr[0]))
    g2 = float(qmap.quantile(fr[2]))
    if not g1 > g2:  # a degenerate Qmap (e.g. constant confidence): keep the thresholds ordered
        g1, g2 = g2 + 1e-6, g2
    return g1, g2


def quality(x0_hat: torch.Tensor, x0: torch.Tensor, codec: PixelUnshuffleCodec) -> dict:
    """PSNR (dB, RGB in [0,1], mean MSE over patches) and energy-weighted HF ratio of latent patches."""
    sr = codec.decode(x0_hat.float()).clamp(0, 1)
    hr = codec.decode(x0.float()).clamp(0, 1)
    mse = float((sr - hr).square().mean())
    e_sr = sum(hf_energy(y_channel(s)) for s in sr)
    e_hr = sum(hf_energy(y_channel(h)) for h in hr)
    return {
        "psnr": 10 * math.log10(1.0 / max(mse, 1e-12)),
        "hf_ratio": e_sr / e_hr if e_hr > 0 else 1.0,
    }


def score(q: dict, hf_weight: float) -> float:
    return q["psnr"] - hf_weight * abs(math.log2(max(q["hf_ratio"], 1e-6)))


def choose_groups(
    table: list[list[tuple[int, int, float]]], sizes: list[int], budget: float, tolerance: float
) -> tuple[tuple[int, int], ...] | None:
    """The (T, N) of each group, chosen jointly.

    table[g]: candidates (T, N, score) of group g (simple, medium, hard); sizes[g]: its
    patches. Among combinations with T1 < T2 < T3, N1 ≤ N2 ≤ N3 and an evaluation cost
    Σ sizes·N / (Σ sizes · N3) ≤ ``budget`` (PGS against the uniform sampler, which
    gives every patch N3 steps), take the best patch-weighted mean score; among those
    within ``tolerance`` of it, the cheapest. None when no combination fits the budget.
    The yardstick is the uniform sampler of the same N3 (the baseline PGS is judged
    against), so a larger N3 for the hard group leaves more room for the others.
    """
    total = max(1, sum(sizes))
    best_rows = []
    for s_ in table[0]:
        for m in table[1]:
            for h in table[2]:
                if not (s_[0] < m[0] < h[0] and s_[1] <= m[1] <= h[1]):
                    continue
                cost = (sizes[0] * s_[1] + sizes[1] * m[1] + sizes[2] * h[1]) / (total * h[1])
                if cost > budget:
                    continue
                mean = (sizes[0] * s_[2] + sizes[1] * m[2] + sizes[2] * h[2]) / total
                best_rows.append((mean, cost, ((s_[0], s_[1]), (m[0], m[1]), (h[0], h[1]))))
    if not best_rows:
        return None
    top = max(r[0] for r in best_rows)
    return min((r for r in best_rows if r[0] >= top - tolerance), key=lambda r: (r[1], -r[0]))[2]


def calibrate(a) -> None:
    out = Path(a.out)
    log = RunLog(out / "calibrate.log")
    torch.set_num_threads(a.threads)
    ctl = RunControl(a.minutes, a.ckpt_minutes)
    device = torch.device(a.device)
    log(f"calibrating PGS: args={vars(a)}")

    pool = open_pool(a, a.lr_crop, log)
    _, held_idx = split_entries(pool)
    grm = load_frozen_grm(a.grm_checkpoint, device)
    held = LatentPatchPairs(pool, held_idx, grm, lr_crop=a.lr_crop, device=device, per_photo=True, degradation=a.degradation)
    data = held.sample(a.crops, torch.Generator().manual_seed(a.seed))
    y0, x0 = data["y0"], data["x0"]
    qmap = patch_qmap(data["conf"])
    P = y0.shape[0]
    seeds = torch.arange(P, dtype=torch.long) + 1_000_003 * a.seed
    log(f"{P} held-out patches from {len(held_idx)} photos; Qmap mean {float(qmap.mean()):.4f} "
        f"quantiles 10/50/90% {[round(float(v), 4) for v in qmap.quantile(torch.tensor([0.1, 0.5, 0.9]))]}")

    fr = _fractions(a.fractions)
    g1, g2 = _thresholds(qmap, fr)
    log(f"thresholds γ1={g1:.4f} γ2={g2:.4f}")

    dit = load_dit(a.dit, device=device)
    rtm = None if a.rtm == "none" else load_rtm(a.rtm, device=device)
    denoiser = DiTDenoiser(dit, rtm)
    codec = PixelUnshuffleCodec(4)
    # The config is made from this DiT: it names the DiT's schedule, which the sampler checks.
    schedule = dict(schedule=dit.config.schedule, num_train_timesteps=dit.config.num_train_timesteps)
    base = PGSConfig(gammas=(g1, g2), **schedule)
    group = assign_groups(qmap, base.gammas)

    sweep_path = out / "sweep.json"
    sweep = json.loads(sweep_path.read_text()) if a.resume and sweep_path.is_file() else {}
    grids = [_grid(a.grid_simple), _grid(a.grid_medium), _grid(a.grid_hard)]
    table: list[list[tuple[int, int, float]]] = []  # per group: (T, N, score)
    sizes = torch.bincount(group, minlength=3).tolist()
    for g, grid in enumerate(grids):
        members = torch.nonzero(group == g).squeeze(1)
        name = GROUP_NAMES[g]
        if members.numel() == 0:
            log(f"{name}: no patches; its candidates all score 0")
            table.append([(T, N, 0.0) for T, N in grid])
            continue
        rows = []
        for T, N in grid:
            key = f"{name}:{T}:{N}"
            if key not in sweep:
                if ctl.out_of_time():
                    log("time budget spent during the sweep; rerun with --resume")
                    return
                cfg = PGSConfig(gammas=(g1, g2), groups=(base.groups[0], base.groups[1], (T, N)), **schedule)
                t0 = time.time()
                res = UniformSampler(denoiser, cfg)(y0[members], qmap[members], seeds[members], max_batch_patches=a.batch)
                sweep[key] = {**quality(res.x0, x0[members], codec), "seconds": time.time() - t0,
                              "evaluations": res.evaluations, "patches": int(members.numel())}
                sweep_path.parent.mkdir(parents=True, exist_ok=True)
                sweep_path.write_text(json.dumps(sweep, indent=1))
            r = sweep[key]
            rows.append((T, N, score(r, a.hf_weight)))
            log(f"{name} T={T} N={N}: psnr {r['psnr']:.3f} hf {r['hf_ratio']:.3f} score {rows[-1][2]:.3f} "
                f"({r['evaluations']} evals, {r['seconds']:.1f}s)")
        y0q = quality(y0[members], x0[members], codec)
        log(f"{name}: GRM alone psnr {y0q['psnr']:.3f} hf {y0q['hf_ratio']:.3f} score {score(y0q, a.hf_weight):.3f}")
        table.append(rows)
    chosen = choose_groups(table, sizes, a.budget, a.tolerance)
    if chosen is None:
        raise SystemExit(f"no candidate combination spends <= {a.budget} of uniform's evaluations; widen the grids or raise --budget")
    log(f"chose {chosen} (groups {dict(zip(GROUP_NAMES, sizes))}, budget {a.budget} of uniform)")
    # Presets: the same step counts, other thresholds: "fast" sends more patches to the
    # cheap groups, "detail" more to the hard one (Qmap quantiles at --fast-fractions /
    # --detail-fractions), so compute grows fast < balanced < detail.
    presets = {}
    for name, spec in (("fast", a.fast_fractions), ("detail", a.detail_fractions)):
        pf = _fractions(spec)
        pg = _thresholds(qmap, pf)
        pgroup = assign_groups(qmap, pg)
        share = sum(int((pgroup == g).sum()) * chosen[g][1] for g in range(3)) / (P * chosen[2][1])
        presets[name] = {"gammas": list(pg), "fractions": pf, "evaluations_vs_uniform": round(share, 4)}
        log(f"preset {name}: γ=({pg[0]:.5f}, {pg[1]:.5f}), {share:.3f} of uniform's evaluations on the held-out patches")
    cfg = PGSConfig(gammas=(g1, g2), groups=tuple(chosen), prediction=None, presets=presets or None, **schedule)

    results = {}
    for label, sampler in (("pgs", PGSSampler(denoiser, cfg)), ("uniform", UniformSampler(denoiser, cfg))):
        t0 = time.time()
        res = sampler(y0, qmap, seeds, max_batch_patches=a.batch)
        results[label] = {**quality(res.x0, x0, codec), "seconds": round(time.time() - t0, 3),
                          "evaluations": res.evaluations, "dit_calls": res.dit_calls}
    results["grm"] = quality(y0, x0, codec)
    calibration = {
        "patches": P,
        "held_out_photos": len(held_idx),
        "group_sizes": dict(zip(GROUP_NAMES, sizes)),
        "fractions_target": dict(zip(GROUP_NAMES, fr)),
        "evaluation_ratio_uniform_over_pgs": results["uniform"]["evaluations"] / max(1, results["pgs"]["evaluations"]),
        "time_ratio_uniform_over_pgs": results["uniform"]["seconds"] / max(1e-9, results["pgs"]["seconds"]),
        "results": results,
        "score": f"PSNR(dB, RGB 64x64 patches) - {a.hf_weight} x |log2 HF ratio|",
        "sweep": sweep,
        "dit": Path(a.dit).name,
        "rtm": Path(a.rtm).name,
        "device": str(device),
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
    }
    cfg.calibration = calibration
    cfg.save(a.export_to)
    log(f"PGS {cfg.groups} γ={cfg.gammas}: {results['pgs']} vs uniform {results['uniform']} vs GRM {results['grm']}")
    log(f"uniform/PGS: {calibration['evaluation_ratio_uniform_over_pgs']:.2f}x evaluations, "
        f"{calibration['time_ratio_uniform_over_pgs']:.2f}x time; wrote {a.export_to}")


def main(argv=None) -> int:
    calibrate(parse_args(argv))
    return 0


if __name__ == "__main__":
    sys.exit(main())
