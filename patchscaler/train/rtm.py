"""Build the Reference Texture Memory from the training photos.

    python -m patchscaler.train.rtm                        # → patchscaler/weights/bicubic/rtm_x4.safetensors
    python -m patchscaler.train.rtm --entries 4096 --candidates 65536 --minutes 20
    python -m patchscaler.train.rtm --resume               # continue an interrupted k-means

1. Candidates: ``--candidates`` random HR latent patches (16×16 latent = 64×64 HR
   pixels, random flips/rotations) from the training photos (held-out photos
   excluded, see `patchscaler.train.patch_pairs`). The frozen texture encoder
   (``--texture``, from `patchscaler.train.texture`) gives each its key and value tokens.
2. Diversity: spherical k-means of the keys into ``--entries`` clusters (cosine
   similarity; assignment by `topk_retrieve` with k=1; an emptied cluster is re-seeded
   with the candidate currently worst served by its centroid). Each cluster is
   represented by its member closest to the centroid, so every entry is a real patch
   whose value tokens exist. Without this step the memory would be dominated by the
   most common content (sky, walls) and rare textures would have no close reference.
3. Export keys (fp16), value tokens (fp16), source-photo ids and the encoder itself.

The candidate set and the k-means state are checkpointed in OUT (``--resume``).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

import patchscaler.ops  # noqa: F401  (registers torch.ops.patchscaler.*)
from patchscaler.train.patch_pairs import LatentPatchPairs, add_common_args, open_pool, set_weights_defaults, split_entries
from patchscaler.models.rtm import ReferenceTextureMemory
from patchscaler.train.common import RunControl, RunLog, atomic_save
from patchscaler.models.texture import load_texture_encoder
from patchscaler.train.texture import DEFAULT_EXPORT as DEFAULT_TEXTURE


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m patchscaler.train.rtm", description=__doc__.split("\n")[0])
    add_common_args(p, "runs/rtm")
    p.add_argument("--texture", default=str(DEFAULT_TEXTURE), help="texture encoder exported by patchscaler.train.texture")
    p.add_argument("--entries", type=int, default=4096, help="memory size N")
    p.add_argument("--candidates", type=int, default=65536, help="random HR patches to choose the entries from")
    p.add_argument("--iters", type=int, default=25, help="k-means iterations (at most)")
    p.add_argument("--chunk", type=int, default=512, help="patches per encoder batch")
    p.add_argument("--export-to", default=None, help="default: the --degradation model set's rtm_x4.safetensors "
                   "(--degradation names the set here; the memory is made from HR patches)")
    a = p.parse_args(argv)
    set_weights_defaults(a, export_to="rtm")
    return a


@torch.no_grad()
def spherical_kmeans(
    keys: torch.Tensor, n: int, iters: int, generator: torch.Generator, state: dict | None = None, on_iter=None, stop=None
) -> dict:
    """Cluster unit vectors ``keys [M,D]`` float32 into ``n`` clusters by cosine similarity.

    Returns ``{"centroids" [n,D], "assign" [M], "sim" [M] (similarity to own centroid),
    "iter", "changed"}``; ``state`` (a previous return value) continues a run.
    ``on_iter(state)`` is called after every iteration; ``stop()`` → True ends early.
    """
    M = keys.shape[0]
    if state is None:
        init = torch.randperm(M, generator=generator)[:n]
        state = {"centroids": keys[init].clone(), "assign": torch.full((M,), -1, dtype=torch.long), "iter": 0, "changed": M}
    while state["iter"] < iters and not (stop and stop()):
        sim, assign = torch.ops.patchscaler.topk_retrieve(keys, state["centroids"].contiguous(), 1)
        sim, assign = sim[:, 0], assign[:, 0]
        changed = int((assign != state["assign"]).sum())
        sums = torch.zeros_like(state["centroids"]).index_add_(0, assign, keys)
        counts = torch.bincount(assign, minlength=n)
        centroids = F.normalize(sums, dim=1)
        empty = torch.nonzero(counts == 0).squeeze(1)
        if empty.numel():
            # Re-seed empty clusters with the candidates their centroids serve worst.
            worst = torch.argsort(sim)[: empty.numel()]
            centroids[empty] = keys[worst]
        state = {"centroids": centroids, "assign": assign, "sim": sim, "iter": state["iter"] + 1, "changed": changed}
        if on_iter:
            on_iter(state)
        if changed <= M // 1000 and empty.numel() == 0:
            break
    return state


def representatives(keys: torch.Tensor, centroids: torch.Tensor, assign: torch.Tensor) -> torch.Tensor:
    """Index of the candidate closest to each non-empty cluster's centroid, ``[n_nonempty]`` int64 (sorted by cluster)."""
    sim = (keys * centroids[assign]).sum(1)
    n = centroids.shape[0]
    best = torch.full((n,), -2.0).scatter_reduce(0, assign, sim, reduce="amax")
    is_best = sim == best[assign]
    # Several members may tie for the best: keep the smallest candidate index.
    cand = torch.where(is_best, torch.arange(keys.shape[0]), torch.full_like(assign, keys.shape[0]))
    pick = torch.full((n,), keys.shape[0], dtype=torch.long).scatter_reduce(0, assign, cand, reduce="amin")
    return pick[pick < keys.shape[0]]


def build(a) -> None:
    out = Path(a.out)
    log = RunLog(out / "build.log")
    torch.set_num_threads(a.threads)
    ctl = RunControl(a.minutes, a.ckpt_minutes)
    gen = torch.Generator().manual_seed(a.seed)
    encoder = load_texture_encoder(a.texture)
    log(f"building RTM: args={vars(a)}")

    cand_path = out / "candidates.pt"
    if a.resume and cand_path.is_file():
        cand = torch.load(cand_path, weights_only=True)
        log(f"resumed {cand['keys'].shape[0]} candidates from {cand_path}")
    else:
        pool = open_pool(a, 16, log)
        train_idx, held_idx = split_entries(pool)
        src = LatentPatchPairs(pool, train_idx, grm=None)
        log(f"photos: {len(train_idx)} used, {len(held_idx)} held out")
        keys, values, ids = [], [], []
        done = 0
        while done < a.candidates:
            n = min(a.chunk, a.candidates - done)
            batch = src.sample(n, gen)
            with torch.no_grad():
                k, v = encoder.encode(batch["x0"])
            keys.append(k)
            values.append(v.half())
            ids.append(batch["image_id"])
            done += n
            if done % (16 * a.chunk) == 0 or done == a.candidates:
                log(f"encoded {done}/{a.candidates} candidates ({ctl.elapsed():.0f}s)")
        cand = {"keys": torch.cat(keys), "values": torch.cat(values), "image_ids": torch.cat(ids), "gen": gen.get_state()}
        atomic_save(cand, cand_path)
    gen.set_state(cand["gen"])

    keys = cand["keys"].float().contiguous()
    n = min(a.entries, keys.shape[0])
    state = None
    if a.resume and (out / "last.pt").is_file():
        state = torch.load(out / "last.pt", weights_only=False)
        log(f"resuming k-means at iteration {state['iter']}")

    def on_iter(s):
        log(f"k-means iter {s['iter']}: changed {s['changed']}, mean cos to centroid {float(s['sim'].mean()):.4f}")
        if ctl.checkpoint_due():
            atomic_save(s, out / "last.pt")

    state = spherical_kmeans(keys, n, a.iters, gen, state, on_iter=on_iter, stop=ctl.out_of_time)
    atomic_save(state, out / "last.pt")
    if state.get("sim") is None:
        sim, assign = torch.ops.patchscaler.topk_retrieve(keys, state["centroids"].contiguous(), 1)
        state["sim"], state["assign"] = sim[:, 0], assign[:, 0]

    pick = representatives(keys, state["centroids"], state["assign"])
    mem = ReferenceTextureMemory(keys[pick], cand["values"][pick].float(), cand["image_ids"][pick], encoder)
    # How well the chosen entries cover the candidates: each candidate's best entry.
    cover, _ = torch.ops.patchscaler.topk_retrieve(keys, mem.keys.contiguous(), 1)
    stats = {
        "entries": len(mem),
        "candidates": int(keys.shape[0]),
        "kmeans_iters": int(state["iter"]),
        "photos": int(cand["image_ids"].unique().numel()),
        "photos_in_memory": int(mem.image_ids.unique().numel()),
        "max_entries_per_photo": int(torch.unique(mem.image_ids, return_counts=True)[1].max()),
        "candidate_coverage_mean_cos": round(float(cover.mean()), 4),
        "data": str(a.data),
    }
    mem.save(a.export_to, metadata=stats)
    log(f"exported {len(mem)} entries -> {a.export_to}: {stats}")


def main(argv=None) -> int:
    build(parse_args(argv))
    return 0


if __name__ == "__main__":
    sys.exit(main())
