"""Train the Patch-DiT (with its similarity-aware texture encoder) on latent patch pairs.

    python -m patchscaler.train.dit --minutes 600 --device cuda       # → runs/dit
    python -m patchscaler.train.dit --resume --minutes 120            # continue exactly
    python -m patchscaler.train.dit --export                          # → patchscaler/weights/bicubic/dit_x4.safetensors
    python -m patchscaler.train.dit --init patchscaler/weights/bicubic/dit_x4.safetensors --device cuda --minutes 10
                                                                      # continue the shipped model

Data: ``(y0, x0)`` latent patch pairs, ``y0`` from the frozen GRM (``--grm-checkpoint``
or the packaged weights), ``x0`` the codec latent of the HR crop (see
`patchscaler.train.patch_pairs`). Objective: the usual denoising loss at
``t ~ U{0..T3}`` only (inference never starts above T3, SPEC §2), on
``y_t = sqrt(ᾱ_t)·x0 + sqrt(1−ᾱ_t)·ε``, with target ε or ``v = sqrt(ᾱ)ε − sqrt(1−ᾱ)x0``
(``--prediction``), learned through the preconditioning around ``y0`` of
`patchscaler.models.dit` (``--anchor-sigma``; "auto" = RMS of x0 − y0 on held-out
patches, measured at the start of a run). The texture prompt comes from the RTM (``--rtm``, built by
`patchscaler.train.rtm`): query = frozen texture encoder of ``y0``, top-K retrieval
**excluding the training patch's own photo** (otherwise the model learns to copy a
reference that at test time does not exist), and with probability ``--drop-prompt``
the "no reference" prompt instead. The memory's keys and values are frozen.

Real degradations (``--degradation real``): each crop's LR is made on the fly by the
real-world pipeline, in the training process by default, or by ``--workers N`` DataLoader
processes (`patch_pairs.RealCropBatches`: batch k depends on the seed and k alone, so
``--resume`` stays exact); on a GPU the degradation costs more than the step, so give it
the machine's spare cores.

Shortcut inputs (``--shortcut-prob p``): inference starts each group at T from
``sqrt(ᾱ_T)·y0 + sqrt(1−ᾱ_T)·ε`` (SPEC §2), not from a noised x0. Trained only on noised
x0, the net learns that ``y_t − sqrt(ᾱ)·y0`` carries ``x0 − y0``; where the GRM's error is
as large as the noise (real degradations: RMS 0.22 against a noise std of 0.24 at t=150)
it then passes the start noise through as "detail". A share p of the patches is noised
from y0 instead (same target x0), so the first step learns to treat that difference as
noise. p = 0 is the plain objective (the bicubic set's DiT). Shortcut patches draw t
from ``[--shortcut-t-min, T3]`` only: a group starts no lower, and near t = 0 the
preconditioned target of a shortcut input, ``(x0 − anchor)/c_out``, grows like
``σ/sqrt(1−ᾱ)`` and would swamp the loss.

Validation (held-out photos, fixed noise): loss at t = T1, T2, T3 and the latent MSE
of the model's one-step x̂0 from each t, from a noised x0 and from the shortcut start
(noised y0, what a group's first step sees), next to the MSE of ``y0`` itself (the DiT is
only useful where it beats ``y0`` or adds plausible detail at a small MSE cost).
"""

from __future__ import annotations

import argparse
import copy
import math
import sys
from contextlib import nullcontext
from pathlib import Path

import torch
import torch.nn.functional as F

import patchscaler.ops  # noqa: F401  (registers torch.ops.patchscaler.*)
from patchscaler.diffusion.schedule import make_alphas_cumprod
from patchscaler.train.patch_pairs import (
    LatentPatchPairs,
    RealCropBatches,
    add_common_args,
    load_frozen_grm,
    open_pool,
    set_weights_defaults,
    split_entries,
)
from patchscaler.models.dit import PatchDiT, PatchDiTConfig, save_dit
from patchscaler.models.rtm import load_rtm
from patchscaler.sampling.pgs import PGSConfig
from patchscaler.train.common import (
    RunControl,
    RunLog,
    SilentLog,
    agree,
    atomic_save,
    check_batch_divides,
    keep_run_args,
    load_last,
    parse_run_args,
    rank_slice,
    restore_trainer_state,
    trainer_state,
    update_ema,
)


def parse_args(argv=None) -> argparse.Namespace:
    pgs = PGSConfig()  # SPEC §2's groups: the calibrated pgs_config.json is made from this DiT, later
    p = argparse.ArgumentParser(prog="python -m patchscaler.train.dit", description=__doc__.split("\n")[0])
    add_common_args(p, "runs/dit")
    p.add_argument("--grm-checkpoint", default=None,
                   help="GRM .pt/.safetensors (default: the --degradation model set's; 'bicubic' for smoke tests)")
    p.add_argument("--rtm", default=None, help="texture memory (default: the --degradation model set's); 'none' trains without references")
    p.add_argument("--width", type=int, default=PatchDiTConfig.width)
    p.add_argument("--depth", type=int, default=PatchDiTConfig.depth)
    p.add_argument("--heads", type=int, default=PatchDiTConfig.heads)
    p.add_argument("--prediction", choices=["v", "eps"], default="v")
    p.add_argument("--anchor-sigma", default=None,
                   help="σ of the preconditioning around y0: a number, 'auto' (RMS of x0 - y0 on the held-out "
                        "patches) or 'none'; default 'auto' for a new model, the --init model's own σ with --init "
                        "(give it to re-measure σ for a new degradation: the net's target then keeps unit scale)")
    p.add_argument("--top-k", type=int, default=4)
    p.add_argument("--t-max", type=int, default=pgs.groups[-1][0], help="largest training timestep (T3)")
    p.add_argument("--steps", type=int, default=200_000)
    p.add_argument("--crops", type=int, default=16, help="LR crops per batch (4 patches each at the default sizes)")
    p.add_argument("--lr-crop", type=int, default=48)
    p.add_argument("--lr", type=float, default=2e-4)
    p.add_argument("--warmup", type=int, default=1000)
    p.add_argument("--ema", type=float, default=0.9999)
    p.add_argument("--drop-prompt", type=float, default=0.1, help="probability of the 'no reference' prompt")
    p.add_argument("--shortcut-prob", type=float, default=0.0,
                   help="share of patches noised from y0 instead of x0 (the sampler's first step; module docstring)")
    p.add_argument("--shortcut-t-min", type=int, default=100,
                   help="smallest t of a shortcut patch (no group starts lower; module docstring)")
    p.add_argument("--workers", type=int, default=0,
                   help="with --degradation real: processes degrading the crops (RealCropBatches; 0: in the "
                        "training process, from the run's generator)")
    p.add_argument("--amp", choices=["none", "bf16"], default=None, help="autocast (default: bf16 on CUDA, none on CPU)")
    p.add_argument("--val-patches", type=int, default=256)
    p.add_argument("--val-every", type=int, default=2000)
    p.add_argument("--log-every", type=int, default=50)
    p.add_argument("--init", default=None,
                   help="start a new run from exported weights (e.g. the shipped dit_x4.safetensors): "
                        "its config and weights, a fresh optimiser; ignored when --resume finds a checkpoint")
    p.add_argument("--export", action="store_true", help="export OUT/last.pt's EMA weights and exit")
    p.add_argument("--export-to", default=None, help="default: the --degradation model set's dit_x4.safetensors")
    a = parse_run_args(p, argv)
    set_weights_defaults(a, grm_checkpoint="grm", rtm="rtm", export_to="dit")
    return a


# What a resumed run keeps from its checkpoint unless the command line gives it again.
RESUMED_SETTINGS = ("lr", "warmup", "ema", "drop_prompt", "shortcut_prob", "shortcut_t_min", "t_max", "top_k")


class PromptSource:
    """Per-batch texture prompt inputs: (values, scores) from the RTM with own-photo exclusion, or None."""

    def __init__(self, rtm, top_k: int):
        self.rtm, self.top_k = rtm, top_k

    @torch.no_grad()
    def __call__(self, y0: torch.Tensor, image_ids: torch.Tensor):
        if self.rtm is None:
            return None, None
        values, scores = self.rtm.query(y0, self.top_k, exclude_image_ids=image_ids)
        return values, scores


def noised_input(x0, y0, eps, a_t, shortcut=None):
    """The DiT's training input ``sqrt(ᾱ)·s + sqrt(1−ᾱ)·ε`` ``[P,C,h,w]``, with ``s = x0``,
    or ``y0`` where ``shortcut [P]`` (bool) is set: the sampler's shortcut start
    (module docstring). ``a_t [P,1,1,1]`` is ᾱ at each patch's t."""
    start = x0 if shortcut is None else torch.where(shortcut.view(-1, 1, 1, 1), y0, x0)
    return a_t.sqrt() * start + (1 - a_t).sqrt() * eps


def export(a, log) -> None:
    ck = torch.load(Path(a.out) / "last.pt", map_location="cpu", weights_only=False)
    model = PatchDiT(PatchDiTConfig.from_dict(ck["config"]))
    model.load_state_dict(ck["ema"])
    save_dit(model, a.export_to, extra_metadata={"step": ck["step"], "val": ck.get("val", {}), "rtm": ck["args"].get("rtm")})
    log(f"exported EMA weights of step {ck['step']} -> {a.export_to} (val {ck.get('val')})")


class _DenoiserStep(torch.nn.Module):
    """The part of a training step that has parameters, as one ``forward`` for DDP to wrap."""

    def __init__(self, model: PatchDiT):
        super().__init__()
        self.model = model

    def forward(self, y_t, t, y0, values, scores, drop):
        prompt = self.model.encode_prompt(values, scores, batch=y_t.shape[0], drop=drop if values is not None else None)
        return self.model.net(y_t, t, y0, prompt).float()


def train(a):
    """Train (or export, returning None); returns this rank's trained model."""
    from patchscaler.command.distributed import from_env

    out = Path(a.out)
    ctx = None if a.export else from_env(a.device)  # cuda -> cuda:LOCAL_RANK under torchrun
    main_rank = ctx is None or ctx.is_main
    log = RunLog(out / "train.log") if main_rank else SilentLog()
    if a.export:
        export(a, log)
        return None
    torch.set_num_threads(a.threads)
    ctl = RunControl(a.minutes, a.ckpt_minutes)
    device = torch.device(a.device) if ctx is None else ctx.device
    check_batch_divides(a.crops, ctx)
    amp = a.amp or ("bf16" if device.type == "cuda" else "none")

    rtm = None
    if a.rtm != "none":
        rtm = load_rtm(a.rtm, device=device)
        if rtm.image_ids is None:
            raise ValueError(f"{a.rtm} has no image ids: cannot exclude the training photo from retrieval")

    ck = load_last(a, log)
    if ck is not None:
        keep_run_args(a, ck.get("args", {}), RESUMED_SETTINGS, log)
    init = None
    if ck is None and a.init is not None:
        from patchscaler.models.dit import load_dit

        init = load_dit(a.init)
        log(f"initialised from {a.init} (a fresh optimiser and step count)")
    # Without a checkpoint the config is made once the held-out patches are there
    # (anchor_sigma="auto" measures on them).
    cfg = PatchDiTConfig.from_dict(ck["config"]) if ck else init.config if init is not None else None

    if ctx is not None and not ctx.is_main:
        ctx.barrier()  # rank 0 builds the pool cache first, the others then read it
    pool = open_pool(a, a.lr_crop, log)
    if ctx is not None and ctx.is_main:
        ctx.barrier()
    train_idx, held_idx = split_entries(pool)
    grm = load_frozen_grm(a.grm_checkpoint, device)
    pairs = LatentPatchPairs(pool, train_idx, grm, lr_crop=a.lr_crop, device=device, degradation=a.degradation)
    held = LatentPatchPairs(pool, held_idx, grm, lr_crop=a.lr_crop, device=device, degradation=a.degradation)
    log(f"photos: {len(train_idx)} train, {len(held_idx)} held out; batch {a.crops * pairs.per_crop} patches")
    vgen = torch.Generator().manual_seed(12345)
    val = held.sample(-(-a.val_patches // held.per_crop), vgen)
    val["eps"] = torch.randn(val["x0"].shape, generator=vgen).to(device)

    def anchor_sigma() -> float | None:
        if (a.anchor_sigma or "auto") == "auto":
            sigma = round(float((val["x0"] - val["y0"]).square().mean().sqrt()), 4)
            log(f"anchor_sigma = RMS(x0 - y0) on {val['x0'].shape[0]} held-out patches = {sigma}")
            return sigma
        return None if a.anchor_sigma == "none" else float(a.anchor_sigma)

    if cfg is not None and ck is None and a.anchor_sigma is not None:
        # --init for another degradation: its y0 is farther from x0, so σ is measured anew
        # (the preconditioning is a formula of σ; the net's weights carry over).
        log(f"anchor_sigma of {a.init}: {cfg.anchor_sigma}")
        cfg = PatchDiTConfig.from_dict(cfg.to_dict() | {"anchor_sigma": anchor_sigma()})
    if cfg is None:
        n_tok, v_dim = rtm.value_shape if rtm is not None else (4, 128)
        sigma = anchor_sigma()
        cfg = PatchDiTConfig(
            width=a.width, depth=a.depth, heads=a.heads, prediction=a.prediction, anchor_sigma=sigma,
            top_k=a.top_k, value_tokens=n_tok, value_dim=v_dim,
        )
    if rtm is not None and tuple(rtm.value_shape) != (cfg.value_tokens, cfg.value_dim):
        raise ValueError(f"RTM value tokens {rtm.value_shape} do not fit the model config {cfg}")
    top_k = min(cfg.top_k, len(rtm)) if rtm is not None else cfg.top_k
    prompts = PromptSource(rtm, top_k)
    # Validation queries the memory without exclusion: held-out photos are not in it.
    val["values"], val["scores"] = prompts(val["y0"], None)
    val_ts = sorted({t for t, _ in PGSConfig().groups if t <= a.t_max} | {a.t_max})

    torch.manual_seed(a.seed)
    model = PatchDiT(cfg)
    if init is not None:
        model.load_state_dict(init.state_dict())
    model = model.to(device)
    ema = copy.deepcopy(model).eval().requires_grad_(False)
    opt = torch.optim.AdamW(model.parameters(), lr=a.lr, betas=(0.9, 0.999), weight_decay=0.0)
    gen = torch.Generator().manual_seed(a.seed)
    # Per-step noise is drawn where it is used: on a GPU, a CPU generator making
    # ~6M normals per step (and the copy) would cost more than the training step.
    noise_gen = gen if device.type == "cpu" else torch.Generator(device=device).manual_seed(a.seed + 1)
    step, val_result = 0, {}
    if ck:
        step = restore_trainer_state(ck, model, ema, opt, gen)
        if "noise_gen" in ck and noise_gen is not gen:
            noise_gen.set_state(ck["noise_gen"])
        val_result = ck.get("val", {})
    n_params = sum(p.numel() for p in model.parameters())
    log(f"PatchDiT {cfg} params={n_params} amp={amp} rtm={a.rtm} ({len(rtm) if rtm is not None else 0} entries) args={vars(a)}")

    ac = make_alphas_cumprod(cfg.schedule, cfg.num_train_timesteps).to(device)
    step_fn = _DenoiserStep(model)
    if ctx is not None:
        from torch.nn.parallel import DistributedDataParallel

        # Every rank draws the global batch and trains its slice (see train/common.py).
        # Unused parameters happen (no memory: the prompt encoder idles), so let DDP look for them.
        step_fn = DistributedDataParallel(step_fn, find_unused_parameters=True)

    def autocast():
        return torch.autocast(device.type, dtype=torch.bfloat16) if amp == "bf16" else nullcontext()

    @torch.no_grad()
    def evaluate() -> dict:
        r = {"y0_mse": float(F.mse_loss(val["y0"], val["x0"]))}
        P = val["x0"].shape[0]
        prompt = ema.encode_prompt(val["values"], val["scores"], batch=P)
        for t in val_ts:
            tt = torch.full((P,), t, device=device, dtype=torch.long)
            a_t = ac[tt].view(-1, 1, 1, 1)
            y_t = a_t.sqrt() * val["x0"] + (1 - a_t).sqrt() * val["eps"]
            with autocast():
                f = ema.net(y_t, tt, val["y0"], prompt).float()
            r[f"loss_t{t}"] = float(F.mse_loss(f, ema.net_target(val["x0"], val["eps"], y_t, tt, val["y0"])))
            with autocast():
                x0_hat = ema.predict_x0(y_t, tt, val["y0"], prompt)
            r[f"x0_mse_t{t}"] = float(F.mse_loss(x0_hat.clamp(-1, 1), val["x0"]))
            # What inference's first step sees: the shortcut start, noised from y0.
            y_s = a_t.sqrt() * val["y0"] + (1 - a_t).sqrt() * val["eps"]
            with autocast():
                x0_hat = ema.predict_x0(y_s, tt, val["y0"], prompt)
            r[f"shortcut_x0_mse_t{t}"] = float(F.mse_loss(x0_hat.clamp(-1, 1), val["x0"]))
        log(f"val step {step} (EMA): " + " ".join(f"{k}={v:.5f}" for k, v in r.items()))
        return r

    def checkpoint() -> None:
        if not main_rank:
            return
        atomic_save(
            trainer_state(model, ema, opt, gen, step)
            | {"config": cfg.to_dict(), "args": vars(a), "val": val_result}
            | ({"noise_gen": noise_gen.get_state()} if noise_gen is not gen else {}),
            out / "last.pt",
        )

    if ck is None and main_rank:
        val_result = evaluate()
    crops = None
    if a.degradation == "real" and a.workers > 0:
        stream = RealCropBatches(pairs, a.crops, seed=a.seed, start=step)
        crops = iter(torch.utils.data.DataLoader(
            stream, batch_size=None, num_workers=a.workers, prefetch_factor=4,
            worker_init_fn=lambda _: torch.set_num_threads(1),
        ))
    meter, n = 0.0, 0
    while step < a.steps and not agree(ctx, ctl.out_of_time())[0]:
        batch = pairs.encode(*next(crops)) if crops is not None else pairs.sample(a.crops, gen)
        x0, y0 = batch["x0"], batch["y0"]
        P = x0.shape[0]
        t = torch.randint(0, a.t_max + 1, (P,), generator=gen).to(device)
        eps = torch.randn(x0.shape, generator=noise_gen, device=device)
        drop = (torch.rand(P, generator=gen) < a.drop_prompt).to(device)
        shortcut = torch.zeros(P, dtype=torch.bool, device=device)
        if a.shortcut_prob > 0:
            shortcut = (torch.rand(P, generator=gen) < a.shortcut_prob).to(device)
            t_start = torch.randint(a.shortcut_t_min, a.t_max + 1, (P,), generator=gen).to(device)
            t = torch.where(shortcut, t_start, t)
        # This rank's slice of the global batch (all of it when alone).
        x0, y0, t, eps, drop, shortcut, ids = (
            rank_slice(v, ctx) for v in (x0, y0, t, eps, drop, shortcut, batch["image_id"])
        )
        a_t = ac[t].view(-1, 1, 1, 1)
        y_t = noised_input(x0, y0, eps, a_t, shortcut)
        values, scores = prompts(y0, ids.to(device))
        for g in opt.param_groups:
            g["lr"] = a.lr * min(1.0, (step + 1) / a.warmup)
        model.train()
        with autocast():
            f = step_fn(y_t, t, y0, values, scores, drop)
        loss = F.mse_loss(f, model.net_target(x0, eps, y_t, t, y0))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        gnorm = torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        if not math.isfinite(float(gnorm)):
            log(f"step {step}: non-finite gradient, skipped")
            continue
        opt.step()
        step += 1
        update_ema(ema, model, a.ema, step)
        meter += loss.item()
        n += 1
        if step % a.log_every == 0:
            log(f"step {step} loss {meter / n:.5f} gnorm {float(gnorm):.3f} lr {opt.param_groups[0]['lr']:.2e} "
                f"{ctl.elapsed():.0f}s")
            meter, n = 0.0, 0
        if step % a.val_every == 0 and main_rank:
            val_result = evaluate()
        if agree(ctx, ctl.checkpoint_due())[0]:
            checkpoint()
    if step % a.val_every != 0 and main_rank:
        val_result = evaluate()
    checkpoint()
    log(f"stopped at step {step}; checkpoint {out / 'last.pt'}")
    if ctx is not None:
        ctx.barrier()
        ctx.close()
    return model


def main(argv=None) -> int:
    train(parse_args(argv))
    return 0


if __name__ == "__main__":
    sys.exit(main())
