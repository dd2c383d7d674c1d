"""How a group's start shapes its result: the plain shortcut, the matched start
(`PGSConfig.start_sigma`) and the first step from y0 alone (`PGSConfig.first_step_t`),
for one DiT on held-out latent patches, against the GRM alone.

    python scripts/shortcut_start_study.py --degradation real --dit /tmp/dit.safetensors --crops 32 --threads 1

Every candidate runs every patch through one (T, N) (the uniform sampler) with the same
per-patch noise; the table gives PSNR (RGB of the decoded 64×64 patches) and the HF
ratio (SR/HR energy above half Nyquist; 1 = the ground truth's detail, above 1 = invented
or passed-on noise), the two figures `patchscaler.train.calibrate_pgs` scores with.
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import replace

import torch

from patchscaler.codec import PixelUnshuffleCodec
from patchscaler.models.dit import load_dit
from patchscaler.models.rtm import load_rtm
from patchscaler.sampling.denoiser import DiTDenoiser
from patchscaler.sampling.pgs import PGSConfig, UniformSampler, patch_qmap
from patchscaler.train.calibrate_pgs import quality
from patchscaler.train.patch_pairs import (
    LatentPatchPairs,
    add_common_args,
    load_frozen_grm,
    open_pool,
    set_weights_defaults,
    split_entries,
)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_common_args(p, "runs/shortcut_start_study")
    p.add_argument("--grm-checkpoint", default=None)
    p.add_argument("--dit", default=None)
    p.add_argument("--rtm", default=None)
    p.add_argument("--crops", type=int, default=32)
    p.add_argument("--lr-crop", type=int, default=48)
    p.add_argument("--grid", default="150:1,150:2,350:2,350:4,600:4,600:8", help="(T, N) candidates T:N,...")
    a = p.parse_args(argv)
    set_weights_defaults(a, grm_checkpoint="grm", dit="dit", rtm="rtm")
    torch.set_num_threads(a.threads)

    pool = open_pool(a, a.lr_crop, print)
    _, held_idx = split_entries(pool)
    grm = load_frozen_grm(a.grm_checkpoint, torch.device("cpu"))
    held = LatentPatchPairs(pool, held_idx, grm, lr_crop=a.lr_crop, per_photo=True, degradation=a.degradation)
    data = held.sample(a.crops, torch.Generator().manual_seed(a.seed))
    y0, x0 = data["y0"], data["x0"]
    qmap = patch_qmap(data["conf"])
    seeds = torch.arange(y0.shape[0], dtype=torch.long)
    dit = load_dit(a.dit)
    denoiser = DiTDenoiser(dit, load_rtm(a.rtm))
    codec = PixelUnshuffleCodec(4)
    sigma = dit.config.anchor_sigma
    last = dit.config.num_train_timesteps - 1
    starts = {
        "shortcut": {},
        f"matched σ={sigma}": {"start_sigma": sigma},
        f"from y0 alone (t={last})": {"first_step_t": last},
    }
    g = quality(y0, x0, codec)
    print(f"{y0.shape[0]} held-out patches ({a.degradation}); GRM alone: PSNR {g['psnr']:.3f} HF {g['hf_ratio']:.3f}")
    print("| start | T:N | PSNR | HF | seconds |\n|---|---|---|---|---|")
    for item in a.grid.split(","):
        T, N = (int(v) for v in item.split(":"))
        for name, extra in starts.items():
            cfg = replace(PGSConfig(groups=((T // 3, 1), (T // 2, 1), (T, N))), **extra)
            t0 = time.time()
            out = UniformSampler(denoiser, cfg)(y0, qmap, seeds)
            q = quality(out.x0, x0, codec)
            print(f"| {name} | {T}:{N} | {q['psnr']:.3f} | {q['hf_ratio']:.3f} | {time.time() - t0:.1f} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
