"""CPU time budget of the PatchScaler pipeline and the Patch-DiT size that fits it.

    python scripts/dit_cpu_budget.py                       # full run, ~10 min on 2 cores
    python scripts/dit_cpu_budget.py --quick               # fewer configs and rounds
    python scripts/dit_cpu_budget.py --threads 1 --skip-grid --skip-train

Standalone script (not a pytest file). Prints tables and writes
``benchmarks/results/dit-cpu-budget.md`` (machine name, exact command, load average).

What it measures, each on this machine in one run so alternatives compare as ratios:

1. **Components** at 128² and 256² LR: the shipped GRM (`load_grm`, fp32 and bf16),
   patch split + blend (`PatchPlan.split` / `merge`, latent patch 16, overlap 4), and
   retrieval (texture-encoder query + fused top-k over a 4096-entry memory + value
   lookup + the DiT's prompt encoder, once per patch).
2. **DiT forward per patch** for a grid of sizes (width × depth × patchify 2×2 / 4×4),
   fp32, per thread count. Configs run interleaved round by round; the table gives the
   median ms per patch-evaluation and the median of the per-round ratios to the
   reference config (the pre-change default 192/6/p2), so machine-load drift cancels.
3. **Variants** of the chosen config (prompt length K·n_tok, MLP ratio, bf16 autocast,
   bf16 weights, torch.compile, batch chunk size), again interleaved with their reference.
4. **One training step** (forward, backward, AdamW) at the trainer's default batch.
5. **End to end** `PatchScalerPipeline` with the shipped GRM, a randomly initialised
   DiT of the chosen size (default: `PatchDiTConfig()`) and a random 4096-entry RTM,
   default PGS groups (150,1)/(350,4)/(600,12), thresholds γ1/γ2 from the Qmap
   quantiles of the real GRM confidence on Set14 (shares ``--fractions``, as
   `patchscaler.train.calibrate_pgs` does), against uniform sampling.

The measured CPU may be shared with other jobs (a training run, CI): the load average
at start and end is recorded. With one of two cores busy, one thread is faster than two.
"""

from __future__ import annotations

import argparse
import copy
import datetime
import glob
import math
import os
import platform
import shlex
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

import patchscaler.ops  # noqa: F401  (registers torch.ops.patchscaler.*)
from patchscaler.models.dit import PatchDiT, PatchDiTConfig
from patchscaler.models.rtm import ReferenceTextureMemory
from patchscaler.models.texture import TextureEncoder
from patchscaler.inference.patch_plan import plan_patches
from patchscaler.sampling.denoiser import DiTDenoiser
from patchscaler.sampling.pgs import PGSConfig, PGSSampler, UniformSampler, assign_groups, patch_qmap

ROOT = Path(__file__).resolve().parent.parent
REFERENCE = (192, 6, 2)  # (width, depth, patch) of the DiT default before this measurement
C = 48  # latent channels (x4 pixel-unshuffle of RGB)
PATCH, OVERLAP = 16, 4


def device_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return f"CPU {line.split(':', 1)[1].strip()} ({os.cpu_count()} cores)"
    except OSError:
        pass
    return f"CPU {platform.processor() or platform.machine()} ({os.cpu_count()} cores)"


def loadavg() -> str:
    try:
        return " ".join(f"{v:.2f}" for v in os.getloadavg())
    except OSError:
        return "?"


def heads_for(width: int) -> int:
    return max(1, width // 32)  # head dim 32


def make_cfg(width: int, depth: int, patch: int, **kw) -> PatchDiTConfig:
    kw.setdefault("heads", heads_for(width))
    return PatchDiTConfig(width=width, depth=depth, patch_size=patch, **kw)


def n_params(m: torch.nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


def gflops_per_patch(cfg: PatchDiTConfig) -> float:
    """Forward GFLOPs for one 16×16 latent patch: dense layers by the FLOP counter, attention analytically."""
    from torch.utils.flop_counter import FlopCounterMode

    m = PatchDiT(cfg).eval()
    y = torch.zeros(1, C, PATCH, PATCH)
    with torch.no_grad():
        prompt = m.encode_prompt(None, None, batch=1)
        fc = FlopCounterMode(display=False)
        with fc:
            m(y, torch.zeros(1, dtype=torch.long), y, prompt)
    n = (PATCH // cfg.patch_size) ** 2
    L = cfg.top_k * cfg.value_tokens
    attn = cfg.depth * (4 * n * n * cfg.width + 4 * n * L * cfg.width)
    return (fc.get_total_flops() + attn) / 1e9


def inputs(batch: int, cfg: PatchDiTConfig, model: PatchDiT, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    y0 = torch.randn(batch, C, PATCH, PATCH, generator=g) * 0.5
    yt = torch.randn(batch, C, PATCH, PATCH, generator=g)
    t = torch.randint(0, 600, (batch,), generator=g)
    values = torch.randn(batch, cfg.top_k, cfg.value_tokens, cfg.value_dim, generator=g)
    scores = torch.rand(batch, cfg.top_k, generator=g)
    with torch.no_grad():
        prompt = model.encode_prompt(values, scores)
    return yt, t, y0, prompt


def interleaved(fns: dict, rounds: int, warmup: int = 1, ref: str | None = None) -> dict:
    """Time callables round-robin; returns {name: (median s, min s, median ratio to ref)}."""
    for f in fns.values():
        for _ in range(warmup):
            f()
    times = {k: [] for k in fns}
    for _ in range(rounds):
        for k, f in fns.items():
            t0 = time.perf_counter()
            f()
            times[k].append(time.perf_counter() - t0)
    out = {}
    for k, ts in times.items():
        ratio = statistics.median(a / b for a, b in zip(ts, times[ref])) if ref else float("nan")
        out[k] = (statistics.median(ts), min(ts), ratio)
    return out


class Report:
    def __init__(self):
        self.lines: list[str] = []

    def __call__(self, text: str = "") -> None:
        print(text, flush=True)
        self.lines.append(text)

    def table(self, header: list[str], rows: list[list]) -> None:
        self("| " + " | ".join(header) + " |")
        self("|" + "---|" * len(header))
        for r in rows:
            self("| " + " | ".join(str(c) for c in r) + " |")
        self()


# ------------------------------------------------------------------- inputs


def set14_lr(side: int) -> dict[str, torch.Tensor]:
    """Set14 HR photos, centre-cropped square and resized (antialiased bicubic) to side×side LR."""
    from patchscaler.data.images import load_image
    from patchscaler.data.resize import imresize

    out = {}
    for f in sorted(glob.glob(str(ROOT.parent / "shared/data/benchmark/Set14/HR/*.png"))):
        hr = load_image(f)
        H, W = hr.shape[-2:]
        s = min(H, W)
        sq = hr[:, (H - s) // 2 : (H - s) // 2 + s, (W - s) // 2 : (W - s) // 2 + s]
        out[Path(f).stem] = imresize(sq[None], size=(side, side))[0].clamp(0, 1)
    return out


def random_rtm(n: int, cfg: PatchDiTConfig) -> ReferenceTextureMemory:
    g = torch.Generator().manual_seed(1)
    enc = TextureEncoder().eval().requires_grad_(False)
    keys = F.normalize(torch.randn(n, enc.config.key_dim, generator=g), dim=1)
    values = torch.randn(n, enc.config.value_tokens, enc.config.value_dim, generator=g)
    assert (enc.config.value_tokens, enc.config.value_dim) == (cfg.value_tokens, cfg.value_dim)
    return ReferenceTextureMemory(keys, values, torch.arange(n), enc)


# ------------------------------------------------------------------- sections


def section_components(rep: Report, threads: list[int], rounds: int, dit_cfg: PatchDiTConfig) -> None:
    from patchscaler.models.grm import load_grm

    rep("## Components (per image, batch 1)")
    rep()
    grm32 = load_grm(model="bicubic")
    grm16 = copy.deepcopy(grm32).to(torch.bfloat16)
    dit = PatchDiT(dit_cfg).eval()
    rtm = random_rtm(4096, dit_cfg)
    rows = []
    for n in threads:
        torch.set_num_threads(n)
        for side in (128, 256):
            lr = torch.rand(1, 3, side, side)
            lr16 = lr.to(torch.bfloat16)
            plan = plan_patches(side, side, PATCH, OVERLAP)
            lat = torch.randn(1, C, side, side)
            patches = plan.split(lat)
            win = plan.window()
            P = plan.num_patches
            with torch.no_grad():
                fns = {
                    "GRM fp32": lambda: grm32(lr),
                    "GRM bf16": lambda: grm16(lr16),
                    "split+blend": lambda: plan.merge(plan.split(lat), win),
                    "retrieval (encoder+top-k+lookup)": lambda: rtm.query(patches, dit_cfg.top_k),
                    "prompt encoder": lambda: dit.encode_prompt(*rtm.query(patches, dit_cfg.top_k)),
                }
                res = interleaved(fns, rounds, ref="GRM fp32")
            for k, (med, mn, _) in res.items():
                rows.append([n, f"{side}² ({P} patches)", k, f"{med * 1e3:.1f}", f"{mn * 1e3:.1f}"])
    rep.table(["threads", "LR", "stage", "median ms", "min ms"], rows)
    rep("`prompt encoder` includes the retrieval before it (once per patch, not per step).")
    rep()


def section_grid(rep: Report, threads: list[int], grid: list[tuple], batch: int, rounds: int) -> None:
    rep(f"## DiT forward, fp32, batch {batch} patches (16×16×48 latent), interleaved rounds")
    rep()
    rep(f"ratio = median over rounds of (config time / {REFERENCE[0]}/{REFERENCE[1]}/p{REFERENCE[2]} time) in the same round.")
    rep()
    models, info = {}, {}
    for w, d, p in grid:
        cfg = make_cfg(w, d, p)
        m = PatchDiT(cfg).eval()
        models[(w, d, p)] = (m, inputs(batch, cfg, m))
        info[(w, d, p)] = (n_params(m), gflops_per_patch(cfg), (PATCH // p) ** 2)
    rows = []
    for n in threads:
        torch.set_num_threads(n)
        with torch.no_grad():
            fns = {k: (lambda m=m, a=a: m(*a)) for k, (m, a) in models.items()}
            res = interleaved(fns, rounds, ref=REFERENCE)
        for k, (med, mn, ratio) in res.items():
            params, gf, tok = info[k]
            ms = med / batch * 1e3
            rows.append([
                n, k[0], k[1], f"{k[2]}×{k[2]} ({tok} tok)", f"{params / 1e6:.2f}M", f"{gf:.3f}",
                f"{ms:.2f}", f"{mn / batch * 1e3:.2f}", f"{ratio:.2f}", f"{gf / ms * 1e3:.0f}", f"{ms * 1024 / 1e3:.1f}",
            ])
    rep.table(
        ["threads", "width", "depth", "patchify", "params", "GFLOP/patch", "ms/patch (median)", "ms/patch (min)",
         "ratio to ref", "GFLOP/s", "s per 1024 patches"],
        rows,
    )


def section_variants(rep: Report, threads: list[int], base: PatchDiTConfig, batch: int, rounds: int, compile_: bool) -> None:
    rep(f"## Variants of {base.width}/{base.depth}/p{base.patch_size} (mlp {base.mlp_ratio}, prompt "
        f"{base.top_k}×{base.value_tokens} tokens), batch {batch}, interleaved")
    rep()
    from dataclasses import replace

    ref = PatchDiT(base).eval()
    ref_in = inputs(batch, base, ref)
    fns: dict = {}
    notes: dict = {}

    def plain(name: str, cfg: PatchDiTConfig, note: str = "") -> None:
        m = PatchDiT(cfg).eval()
        a = inputs(batch, cfg, m)
        fns[name] = lambda: m(*a)
        notes[name] = (n_params(m), note)

    fns["reference fp32"] = lambda: ref(*ref_in)
    notes["reference fp32"] = (n_params(ref), "")
    plain("prompt 2×4 = 8 tokens", replace(base, top_k=2))
    plain("prompt 4×1 = 4 tokens", replace(base, value_tokens=1))
    plain("prompt 8×4 = 32 tokens", replace(base, top_k=8))
    plain("mlp ratio 2", replace(base, mlp_ratio=2.0))
    plain("mlp ratio 3", replace(base, mlp_ratio=3.0))

    def autocast_fn():
        with torch.autocast("cpu", dtype=torch.bfloat16):
            return ref(*ref_in)

    fns["bf16 autocast"] = autocast_fn
    notes["bf16 autocast"] = (n_params(ref), "torch.autocast('cpu', bfloat16)")
    bf = copy.deepcopy(ref).to(torch.bfloat16)
    fns["bf16 weights"] = lambda: bf(*ref_in)
    notes["bf16 weights"] = (n_params(ref), "model.to(bfloat16), as PatchScalerPipeline(dtype=bfloat16)")
    for b in (32, 64, 256):
        a = inputs(b, base, ref)
        reps = max(1, batch // b)
        fns[f"chunk {b}"] = (lambda a=a, reps=reps: [ref(*a) for _ in range(reps)])
        notes[f"chunk {b}"] = (n_params(ref), f"{reps} call(s) of {b} patches, per patch")
    compile_s = {}
    if compile_:
        for name, model, ctx in (("torch.compile fp32", ref, None), ("torch.compile bf16 weights", bf, None)):
            t0 = time.perf_counter()
            cm = torch.compile(model)
            with torch.no_grad():
                cm(*ref_in)
            compile_s[name] = time.perf_counter() - t0
            fns[name] = lambda cm=cm: cm(*ref_in)
            notes[name] = (n_params(ref), f"first call {compile_s[name]:.0f} s")
    rows = []
    for n in threads:
        torch.set_num_threads(n)
        with torch.no_grad():
            res = interleaved(fns, rounds, ref="reference fp32")
        for k, (med, mn, ratio) in res.items():
            scale = 1.0
            if k.startswith("chunk"):
                b = int(k.split()[1])
                reps = max(1, batch // b)
                scale = batch / (reps * b)
                ratio *= scale
            rows.append([n, k, f"{notes[k][0] / 1e6:.2f}M", f"{med * scale / batch * 1e3:.2f}", f"{ratio:.2f}", notes[k][1]])
    rep.table(["threads", "variant", "params", "ms/patch (median)", "ratio to reference", "note"], rows)


def section_train(rep: Report, threads: list[int], configs: list[PatchDiTConfig], batch: int, rounds: int) -> dict:
    rep(f"## One DiT training step (forward + backward + clip + AdamW + EMA), batch {batch} patches (trainer default: 16 crops × 4)")
    rep()
    rows, out = [], {}
    models = {}
    for cfg in configs:
        m = PatchDiT(cfg).train()
        opt = torch.optim.AdamW(m.parameters(), lr=1e-4)
        ema = [p.detach().clone() for p in m.parameters()]
        g = torch.Generator().manual_seed(0)
        x0 = torch.randn(batch, C, PATCH, PATCH, generator=g) * 0.5
        y0 = x0 + 0.1 * torch.randn(x0.shape, generator=g)
        eps = torch.randn(x0.shape, generator=g)
        t = torch.randint(0, 600, (batch,), generator=g)
        values = torch.randn(batch, cfg.top_k, cfg.value_tokens, cfg.value_dim, generator=g)
        scores = torch.rand(batch, cfg.top_k, generator=g)
        a = m.alphas_cumprod[t].float().view(-1, 1, 1, 1)
        yt = a.sqrt() * x0 + (1 - a).sqrt() * eps

        def step(m=m, opt=opt, ema=ema, yt=yt, t=t, y0=y0, x0=x0, eps=eps, values=values, scores=scores, amp=False):
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=amp):
                prompt = m.encode_prompt(values, scores)
                f = m.net(yt, t, y0, prompt)
            loss = F.mse_loss(f.float(), m.net_target(x0, eps, yt, t, y0))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(m.parameters(), 1.0)
            opt.step()
            with torch.no_grad():  # EMA update, as the trainer does
                torch._foreach_lerp_(ema, list(m.parameters()), 1e-4)

        key = f"{cfg.width}/{cfg.depth}/p{cfg.patch_size}"
        models[key + " fp32"] = step
        models[key + " bf16 autocast"] = (lambda step=step: step(amp=True))
    # The trainer's data side per step: the frozen GRM makes y0 for `crops` LR crops of 48²
    # (4 patches each), then the RTM is queried (texture encoder + top-k) for the patches.
    from patchscaler.models.grm import load_grm

    grm = load_grm(model="bicubic")
    crops = torch.rand(batch // 4, 3, 48, 48)
    rtm = random_rtm(4096, configs[0])
    y0p = torch.randn(batch, C, PATCH, PATCH)

    def data():
        with torch.no_grad():
            grm(crops)
            rtm.query(y0p, configs[0].top_k)

    models[f"data: GRM on {batch // 4} crops 48² + RTM query"] = data
    for n in threads:
        torch.set_num_threads(n)
        res = interleaved(models, rounds, ref=next(iter(models)))
        for k, (med, mn, _) in res.items():
            rows.append([n, k, f"{med:.3f}", f"{1 / med:.2f}", f"{batch / med:.0f}", f"{100_000 * med / 3600:.1f}"])
            out[(n, k)] = med
    rep.table(["threads", "config", "s/step (median)", "it/s", "patches/s", "h per 100k steps"], rows)
    rep("A trainer step on CPU = model step + data row (the GRM y0 is computed per batch, not cached).")
    rep()
    return out


def section_e2e(rep: Report, threads: list[int], cfg: PatchDiTConfig, fractions: tuple, images_per_size: int,
                rounds: int, uniform: bool) -> None:
    from patchscaler.models.grm import load_grm
    from patchscaler.inference.pipeline import PatchScalerPipeline

    groups = PGSConfig().groups
    rep(f"## End to end: PatchScalerPipeline, shipped GRM + random DiT {cfg.width}/{cfg.depth}/p{cfg.patch_size} "
        f"(mlp {cfg.mlp_ratio}, prompt {cfg.top_k}×{cfg.value_tokens}) + random RTM (4096 entries)")
    rep()
    rep(f"PGS groups {groups}; γ1, γ2 = Qmap quantiles over all 14 Set14 images at that LR size for group shares "
        f"{fractions} (simple, medium, hard). LR = Set14 HR centre square, antialiased bicubic resize to the size. "
        f"Times are median of {rounds} runs after a warm-up run.")
    rep()
    grm = load_grm(model="bicubic")
    dit = PatchDiT(cfg).eval()
    rtm = random_rtm(4096, cfg)

    class Timed:
        def __init__(self):
            self.t = {"condition": 0.0, "dit": 0.0, "sampler": 0.0, "grm": 0.0}

    timer = Timed()

    class TimedDenoiser(DiTDenoiser):
        def condition(self, y0):
            t0 = time.perf_counter()
            r = super().condition(y0)
            timer.t["condition"] += time.perf_counter() - t0
            return r

        def __call__(self, y_t, t, cond):
            t0 = time.perf_counter()
            r = super().__call__(y_t, t, cond)
            timer.t["dit"] += time.perf_counter() - t0
            return r

    def timed_sampler(cls):
        class S(cls):
            def __call__(self, *a, **k):
                t0 = time.perf_counter()
                r = super().__call__(*a, **k)
                timer.t["sampler"] += time.perf_counter() - t0
                return r
        S.__name__ = cls.__name__
        return S

    den = TimedDenoiser(dit, rtm)
    rows, mix_rows = [], []
    for side in (128, 256):
        lrs = set14_lr(side)
        plan = plan_patches(side, side, PATCH, OVERLAP)
        qmaps = {}
        with torch.no_grad():
            for name, lr in lrs.items():
                _, conf = grm(lr[None])
                qmaps[name] = patch_qmap(plan.split(conf.contiguous()))
        pooled = torch.cat(list(qmaps.values()))
        g1 = float(pooled.quantile(1 - fractions[0]))
        g2 = float(pooled.quantile(fractions[2]))
        pcfg = PGSConfig(gammas=(g1, g2), groups=groups)
        steps_of = torch.tensor([n for _, n in groups])
        avg = {}
        for name, q in qmaps.items():
            gr = assign_groups(q, (g1, g2))
            cnt = torch.bincount(gr, minlength=3).tolist()
            avg[name] = float(steps_of[gr].float().mean())
            mix_rows.append([f"{side}²", name, plan.num_patches, "/".join(map(str, cnt)), f"{avg[name]:.2f}",
                             f"{avg[name] / groups[-1][1]:.2f}"])
        fixed = assign_groups(pooled, PGSConfig().gammas)
        rep(f"{side}² LR: {plan.num_patches} patches/image; γ1 = {g1:.4g}, γ2 = {g2:.4g}; "
            f"Qmap 10/50/90% = {[round(float(v), 4) for v in pooled.quantile(torch.tensor([0.1, 0.5, 0.9]))]}; "
            f"with the fixed default γ = {PGSConfig().gammas}: {torch.bincount(fixed, minlength=3).tolist()} "
            f"simple/medium/hard patches over all images")
        rep()
        order = sorted(avg, key=avg.get)
        picks = [order[len(order) // 2], order[-1], order[0]][:images_per_size]
        pipes = {
            "pgs": PatchScalerPipeline(grm=grm, sampler=timed_sampler(PGSSampler)(den, pcfg)),
            "uniform": PatchScalerPipeline(grm=grm, sampler=timed_sampler(UniformSampler)(den, pcfg)),
            "none": PatchScalerPipeline(grm=grm, sampler="none"),
        }
        for n in threads:
            torch.set_num_threads(n)
            for name in picks:
                lr = lrs[name]
                samplers = ["pgs", "none"] + (["uniform"] if uniform and name == picks[0] and n == threads[0] else [])
                if n != threads[0] and name != picks[0]:
                    continue  # other thread counts: the median image only
                for s in samplers:
                    pipe = pipes[s]
                    pipe.upscale_images([lr])  # warm-up
                    walls, parts, evals = [], [], 0
                    for _ in range(rounds):
                        timer.t = dict.fromkeys(timer.t, 0.0)
                        t0 = time.perf_counter()
                        [(hr, gm)] = pipe.upscale_images([lr])
                        walls.append(time.perf_counter() - t0)
                        parts.append(dict(timer.t))
                        evals = gm.evaluations
                    i = walls.index(statistics.median(walls)) if rounds % 2 else min(range(rounds), key=lambda j: walls[j])
                    w, pt = walls[i], parts[i]
                    P = plan.num_patches
                    other_sampler = pt["sampler"] - pt["dit"] - pt["condition"]
                    bar = 4.6 if side == 128 else 20.0
                    rows.append([
                        n, f"{side}²", name, s, evals, f"{evals / P:.2f}", f"{w:.2f}", f"{w / bar:.0%}",
                        f"{pt['dit']:.2f}", f"{pt['dit'] / max(evals, 1) * 1e3:.2f}", f"{pt['condition']:.2f}",
                        f"{other_sampler:.2f}", f"{w - pt['sampler']:.2f}",
                    ])
    rep.table(["LR", "image", "patches", "simple/medium/hard", "evals/patch", "PGS/uniform evals"], mix_rows)
    rep.table(
        ["threads", "LR", "image", "sampler", "DiT evals", "evals/patch", "total s", "of bar", "DiT s", "ms/eval",
         "retrieval+prompt s", "other sampler s", "GRM+split+blend+decode s"],
        rows,
    )
    rep("Bars (issue 5): 128² ≤ 4.6 s, 256² ≤ 20 s end to end on this 2-core CPU. "
        "`other sampler` = noise, seeds, shortcut noising and the DDIM kernel; the last column is everything outside the sampler.")
    rep()


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--threads", default="1,2", help="thread counts for components, the grid and end to end")
    p.add_argument("--detail-threads", default="1", help="thread counts for the variants and the training step")
    p.add_argument("--batch", type=int, default=128, help="patches per DiT forward in the grid and variants")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--quick", action="store_true", help="a smaller grid, 3 rounds, no torch.compile")
    p.add_argument("--no-compile", action="store_true")
    p.add_argument("--width", type=int, default=None, help="DiT for variants/train/e2e (default: PatchDiTConfig())")
    p.add_argument("--depth", type=int, default=None)
    p.add_argument("--patch", type=int, default=None)
    p.add_argument("--mlp-ratio", type=float, default=None)
    p.add_argument("--fractions", default="0.4,0.35,0.25", help="simple,medium,hard shares for the PGS thresholds")
    p.add_argument("--images", type=int, default=2, help="Set14 images per size end to end (median, hardest, easiest)")
    p.add_argument("--train-batch", type=int, default=64)
    p.add_argument("--skip-components", action="store_true")
    p.add_argument("--skip-grid", action="store_true")
    p.add_argument("--skip-variants", action="store_true")
    p.add_argument("--skip-train", action="store_true")
    p.add_argument("--skip-e2e", action="store_true")
    p.add_argument("--no-uniform", action="store_true")
    p.add_argument("--out", default=str(ROOT / "benchmarks/results/dit-cpu-budget.md"))
    a = p.parse_args(argv)
    threads = [int(x) for x in a.threads.split(",")]
    detail_threads = [int(x) for x in a.detail_threads.split(",")]
    rounds = 3 if a.quick else a.rounds
    base = PatchDiTConfig()
    kw = {}
    if a.width is not None:
        kw.update(width=a.width, heads=heads_for(a.width))
    if a.depth is not None:
        kw["depth"] = a.depth
    if a.patch is not None:
        kw["patch_size"] = a.patch
    if a.mlp_ratio is not None:
        kw["mlp_ratio"] = a.mlp_ratio
    from dataclasses import replace

    chosen = replace(base, **kw)

    rep = Report()
    started = datetime.datetime.now().isoformat(timespec="seconds")
    cmd = "python " + " ".join(shlex.quote(x) for x in [os.path.relpath(sys.argv[0], ROOT)] + sys.argv[1:])
    rep("# Patch-DiT CPU time budget")
    rep()
    rep(f"- machine: {device_name()}; torch {torch.__version__}, CPU capability "
        f"{torch.backends.cpu.get_cpu_capability()}; python {platform.python_version()}")
    rep(f"- command: `{cmd}` (from the repository root)")
    rep(f"- started {started}; load average at start {loadavg()} (1/5/15 min)")
    rep(f"- chosen DiT for variants / training / end to end: width {chosen.width}, depth {chosen.depth}, heads "
        f"{chosen.heads}, patchify {chosen.patch_size}×{chosen.patch_size}, mlp {chosen.mlp_ratio}, prompt "
        f"{chosen.top_k}×{chosen.value_tokens} tokens, {n_params(PatchDiT(chosen)) / 1e6:.2f}M params, "
        f"{gflops_per_patch(chosen):.3f} GFLOP/patch")
    rep()

    t_start = time.time()
    torch.manual_seed(0)
    if not a.skip_components:
        section_components(rep, threads, rounds, chosen)
    if not a.skip_grid:
        widths = (96, 128, 160, 192) if not a.quick else (96, 192)
        grid = [(w, d, pp) for pp in (2, 4) for d in (4, 6) for w in widths]
        extra = [(256, 6, 4), (256, 8, 4), (320, 6, 4), (384, 6, 4)] if not a.quick else [(256, 6, 4)]
        key = (chosen.width, chosen.depth, chosen.patch_size)
        grid += [g for g in extra + [key] if g not in grid]
        section_grid(rep, threads, grid, a.batch, rounds)
    if not a.skip_variants:
        section_variants(rep, detail_threads, chosen, a.batch, rounds, compile_=not (a.quick or a.no_compile))
    if not a.skip_train:
        ref_cfg = make_cfg(*REFERENCE)
        cfgs = [chosen] + ([ref_cfg] if (chosen.width, chosen.depth, chosen.patch_size) != REFERENCE else [])
        section_train(rep, detail_threads, cfgs, a.train_batch, max(3, rounds - 2))
    if not a.skip_e2e:
        fr = tuple(float(x) for x in a.fractions.split(","))
        section_e2e(rep, threads, chosen, fr, a.images, 3 if not a.quick else 1, uniform=not a.no_uniform)
    rep(f"- finished after {time.time() - t_start:.0f} s; load average at end {loadavg()} (1/5/15 min)")
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text("\n".join(rep.lines) + "\n")
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
