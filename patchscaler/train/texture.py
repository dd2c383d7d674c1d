"""Train the texture encoder (RTM keys and queries) contrastively.

    python -m patchscaler.train.texture --minutes 60                 # → runs/texture, then export
    python -m patchscaler.train.texture --resume --minutes 30        # continue
    python -m patchscaler.train.texture --export                     # → runs/texture/texture_x4.safetensors

Objective (SPEC §2): the key of a coarse latent patch ``y0`` (from the frozen GRM)
must land near the key of its own HR patch ``x0``. Symmetric InfoNCE over a batch:
``logits = enc(y0)·enc(x0)ᵀ / τ``, cross-entropy towards the diagonal in both
directions; every other patch of the batch is a negative. One encoder embeds both
sides, because at inference RTM keys are embeddings of HR patches and queries are
embeddings of ``y0``.

Evaluation: on held-out photos, a fixed set of ``--val-pairs`` (≥ 1000) patch pairs;
each ``y0`` queries the keys of all the ``x0`` (brute force through
`topk_retrieve`), and top-1 / top-K accuracy is how often its own partner is first /
among the first K (chance: 1/n, K/n). Those candidates come from random places of
many photos, so even an untrained encoder finds the partner most of the time (y0 is
already close to x0). ``--report`` adds the hard version: every patch on a stride-8
grid of each whole held-out photo (neighbours overlap by half), so most candidates
are shifted copies of the same texture, and compares with an untrained encoder.
"""

from __future__ import annotations

import argparse
import copy
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

import patchscaler.ops  # noqa: F401  (registers torch.ops.patchscaler.*)
from patchscaler.checkpoints import read_metadata
from patchscaler.train.patch_pairs import (
    LatentPatchPairs,
    add_common_args,
    load_frozen_grm,
    open_pool,
    set_weights_defaults,
    split_entries,
)
from patchscaler.models.texture import TextureEncoder, TextureEncoderConfig, load_texture_encoder, save_texture_encoder
from patchscaler.train.common import (
    RunControl,
    RunLog,
    atomic_save,
    load_last,
    restore_trainer_state,
    trainer_state,
    update_ema,
)

# An intermediate, not a shipped weight: `patchscaler.train.rtm` bundles the encoder
# into the memory file, which is what inference loads.
DEFAULT_EXPORT = Path("runs") / "texture" / "texture_x4.safetensors"


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m patchscaler.train.texture", description=__doc__.split("\n")[0])
    add_common_args(p, "runs/texture")
    p.add_argument("--grm-checkpoint", default=None,
                   help="GRM .pt/.safetensors (default: the --degradation model set's; 'bicubic' for smoke tests)")
    p.add_argument("--steps", type=int, default=20000, help="stop after this many optimiser steps")
    p.add_argument("--crops", type=int, default=32, help="LR crops per batch (4 patches each at the default sizes)")
    p.add_argument("--lr-crop", type=int, default=48, help="LR crop side; patches are cut 8 px inside it")
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--temperature", type=float, default=0.07)
    p.add_argument("--ema", type=float, default=0.999)
    p.add_argument("--val-pairs", type=int, default=1024, help="held-out pairs (candidates) for the retrieval accuracy")
    p.add_argument("--val-every", type=int, default=1000)
    p.add_argument("--top-k", type=int, default=4)
    p.add_argument("--log-every", type=int, default=50)
    p.add_argument("--init", default=None,
                   help="start from this encoder (an exported encoder, or a texture memory file: its bundled "
                        "encoder), e.g. patchscaler/weights/bicubic/rtm_x4.safetensors to fine-tune for another degradation")
    p.add_argument("--export", action="store_true", help="export OUT/last.pt's EMA encoder and exit")
    p.add_argument("--export-to", default=str(DEFAULT_EXPORT), help="where --export writes the EMA encoder (input of train.rtm)")
    p.add_argument("--report", action="store_true",
                   help="print the easy and the hard (dense same-photo) retrieval accuracy of the exported encoder and exit")
    a = p.parse_args(argv)
    set_weights_defaults(a, grm_checkpoint="grm")
    return a


def validation_pairs(held_pairs: LatentPatchPairs, n_pairs: int) -> dict:
    """The fixed held-out pairs of the training evaluation (the same in every run and in `--report`)."""
    return held_pairs.sample(-(-n_pairs // held_pairs.per_crop), torch.Generator().manual_seed(12345))


@torch.no_grad()
def dense_held_out_pairs(
    pool, entries: list[int], grm, stride: int = 8, patch: int = 16, margin: int = 8, degradation: str = "bicubic"
) -> dict:
    """Every ``patch``-sized latent patch on a ``stride`` grid of each whole photo (at least
    ``margin`` pixels inside it): ``{"y0", "x0" [M,48,p,p], "image_id" [M]}``.
    With ``degradation="real"`` the photo's LR is its seeded real degradation (as in eval)."""
    from patchscaler.data.degradations import degrade_image
    from patchscaler.inference.codec import PixelUnshuffleCodec
    from patchscaler.data.dataset import image_id

    codec = PixelUnshuffleCodec(4)
    y0s, x0s, ids = [], [], []
    for i in entries:
        e = pool.entries[i]
        lr = e.lr[None].float() / 255.0
        if degradation == "real":
            lr = degrade_image(e.hr.float() / 255.0, pool.names[i])[None]
        y0, _ = grm(lr)
        x0 = codec.encode(e.hr[None].float() / 255.0)
        h, w = y0.shape[-2:]
        for y in range(margin, h - margin - patch + 1, stride):
            for x in range(margin, w - margin - patch + 1, stride):
                y0s.append(y0[0, :, y : y + patch, x : x + patch])
                x0s.append(x0[0, :, y : y + patch, x : x + patch])
                ids.append(image_id(pool.names[i]))
    return {"y0": torch.stack(y0s).float(), "x0": torch.stack(x0s), "image_id": torch.tensor(ids)}


def report(a, log) -> None:
    """Easy and hard held-out retrieval accuracy: exported encoder vs an untrained one."""
    torch.set_num_threads(a.threads)
    pool = open_pool(a, a.lr_crop, log)
    _, held_idx = split_entries(pool)
    grm = load_frozen_grm(a.grm_checkpoint, "cpu")
    held_pairs = LatentPatchPairs(pool, held_idx, grm, lr_crop=a.lr_crop, degradation=a.degradation)
    easy = validation_pairs(held_pairs, a.val_pairs)
    hard = dense_held_out_pairs(pool, held_idx, grm, degradation=a.degradation)
    torch.manual_seed(a.seed)
    encoders = {"trained": load_texture_encoder(a.export_to), "untrained": TextureEncoder(TextureEncoderConfig())}
    for name, enc in encoders.items():
        for label, d in (("random pairs", easy), ("dense same-photo grid", hard)):
            r = retrieval_accuracy(enc, d["y0"], d["x0"], a.top_k)
            log(f"{name} encoder, {label}: " + " ".join(f"{k}={v:.4f}" if isinstance(v, float) else f"{k}={v}" for k, v in r.items()))


def info_nce(q: torch.Tensor, k: torch.Tensor, temperature: float) -> torch.Tensor:
    """Symmetric InfoNCE of unit vectors ``q [B,D]`` (from y0) and ``k [B,D]`` (from x0); scalar."""
    logits = q @ k.T / temperature
    target = torch.arange(q.shape[0], device=q.device)
    return 0.5 * (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target))


@torch.no_grad()
def retrieval_accuracy(encoder: TextureEncoder, y0: torch.Tensor, x0: torch.Tensor, k: int, chunk: int = 512) -> dict:
    """Top-1 / top-k rate at which ``y0[i]``'s query retrieves ``x0[i]`` among all ``x0`` keys."""
    encoder.eval()
    keys = torch.cat([encoder(x) for x in x0.split(chunk)])
    queries = torch.cat([encoder(y) for y in y0.split(chunk)])
    k = min(k, keys.shape[0])
    _, idx = torch.ops.patchscaler.topk_retrieve(queries.contiguous(), keys.contiguous(), k)
    truth = torch.arange(keys.shape[0])[:, None]
    return {
        "top1": float((idx[:, :1] == truth).any(1).float().mean()),
        f"top{k}": float((idx == truth).any(1).float().mean()),
        "candidates": keys.shape[0],
    }


def initial_encoder(path: str) -> TextureEncoder:
    """The encoder in ``path``: an exported encoder, or the one a texture memory bundles."""
    from patchscaler.models.rtm import ReferenceTextureMemory

    if read_metadata(path).get("format") == "patchscaler.TextureEncoder":
        return load_texture_encoder(path)
    memory = ReferenceTextureMemory.load(path)
    if memory.encoder is None:
        raise ValueError(f"--init {path}: this texture memory has no bundled encoder")
    return memory.encoder.float()


def export(a, log) -> None:
    ck = torch.load(Path(a.out) / "last.pt", map_location="cpu", weights_only=False)
    sd = {k: v.half() for k, v in ck["ema"].items()}
    save_texture_encoder(sd, ck["config"], a.export_to, {"step": str(ck["step"]), "val": ck.get("val", {})})
    log(f"exported EMA encoder of step {ck['step']} -> {a.export_to} (val {ck.get('val')})")


def train(a) -> None:
    out = Path(a.out)
    log = RunLog(out / "train.log")
    if a.export:
        export(a, log)
        return
    if a.report:
        report(a, log)
        return
    torch.set_num_threads(a.threads)
    ctl = RunControl(a.minutes, a.ckpt_minutes)
    device = torch.device(a.device)

    ck = load_last(a, log)
    init = initial_encoder(a.init) if ck is None and a.init is not None else None
    cfg = TextureEncoderConfig.from_dict(ck["config"]) if ck else init.config if init is not None else TextureEncoderConfig()
    torch.manual_seed(a.seed)
    model = TextureEncoder(cfg).to(device)
    if init is not None:
        model.load_state_dict(init.state_dict())
        log(f"initialised from {a.init} (a fresh optimiser and step count)")
    ema = copy.deepcopy(model).eval().requires_grad_(False)
    opt = torch.optim.AdamW(model.parameters(), lr=a.lr, weight_decay=1e-4)
    gen = torch.Generator().manual_seed(a.seed)
    step = 0
    if ck:
        step = restore_trainer_state(ck, model, ema, opt, gen)
    log(f"texture encoder {cfg} params={sum(p.numel() for p in model.parameters())} args={vars(a)}")

    pool = open_pool(a, a.lr_crop, log)
    train_idx, held_idx = split_entries(pool)
    grm = load_frozen_grm(a.grm_checkpoint, device)
    train_pairs = LatentPatchPairs(pool, train_idx, grm, lr_crop=a.lr_crop, device=device, degradation=a.degradation)
    held_pairs = LatentPatchPairs(pool, held_idx, grm, lr_crop=a.lr_crop, device=device, degradation=a.degradation)
    log(f"photos: {len(train_idx)} train, {len(held_idx)} held out; {train_pairs.per_crop} patches per crop")
    val = validation_pairs(held_pairs, a.val_pairs)

    def evaluate() -> dict:
        r = retrieval_accuracy(ema, val["y0"], val["x0"], a.top_k)
        log(f"val step {step}: " + " ".join(f"{k}={v:.4f}" if isinstance(v, float) else f"{k}={v}" for k, v in r.items()))
        return r

    def checkpoint(val_result=None) -> None:
        # Training draws random numbers from `gen` only: no global RNG state to keep.
        atomic_save(
            trainer_state(model, ema, opt, gen, step, torch_rng=False)
            | {"config": cfg.to_dict(), "args": vars(a), "val": val_result or {}},
            out / "last.pt",
        )

    result = evaluate() if ck is None else ck.get("val", {})
    meter, n = 0.0, 0
    while step < a.steps and not ctl.out_of_time():
        batch = train_pairs.sample(a.crops, gen)
        model.train()
        q, k = model(batch["y0"]), model(batch["x0"])
        loss = info_nce(q, k, a.temperature)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        step += 1
        update_ema(ema, model, a.ema, step)
        meter += loss.item()
        n += 1
        if step % a.log_every == 0:
            log(f"step {step} infonce {meter / n:.4f} (chance {torch.log(torch.tensor(float(q.shape[0]))).item():.3f}) {ctl.elapsed():.0f}s")
            meter, n = 0.0, 0
        if step % a.val_every == 0:
            result = evaluate()
        if ctl.checkpoint_due():
            checkpoint(result)
    if step % a.val_every != 0:
        result = evaluate()
    checkpoint(result)
    log(f"stopped at step {step}; checkpoint {out / 'last.pt'}")


def main(argv=None) -> int:
    train(parse_args(argv))
    return 0


if __name__ == "__main__":
    sys.exit(main())
