"""Teacher labels for the `real` set: degraded LR tiles, Real-ESRGAN x4plus's output on them, the HR.

    python -m patchscaler.train.teacher_labels --minutes 60            # label (resumes by itself)
    python -m patchscaler.train.teacher_labels --shards 400            # label up to shard 399
    python -m patchscaler.train.teacher_labels --summary               # how many are there

Why a cache: the teacher (16.7M parameters through ncnn) costs about a millisecond per LR
pixel on one core, two orders of magnitude more than a GRM training step per pixel, so each
tile is labelled once and trained on many times (random crops and the 8 flips/rotations of
`data.dataset.augment`). The teacher is deterministic, so L1 to its output does not blur the
way L1 to an ambiguous ground truth does (issue 21).

Shard ``k`` holds ``--tiles`` tiles and is a function of ``(seed, k)`` alone: its generator
draws the HR crops (`PairPool.sample_hr`) and then the high-order degradation
(`data.degradations.degrade`, one resize per shard as per batch in training). Shards are
written atomically as ``shard_KKKKKK.pt`` (uint8 ``lr [n,3,t,t]``, ``teacher`` and ``hr``
``[n,3,4t,4t]``) and a shard that exists is skipped, so the command resumes where any
earlier run stopped and two runs with the same settings make the same files. The cache
is git-ignored and remade by this command; ``meta.json`` pins the settings that shape it.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import torch

from patchscaler.data.dataset import PairPool, augment, worker_batch_indices
from patchscaler.data.degradations import DegradationConfig, degrade
from patchscaler.train.common import DATA_ROOT

__all__ = ["LabelledBatches", "default_cache", "label_shard", "list_shards", "main"]

FORMAT = "patchscaler-teacher-labels-1"
# --backend -> the teacher named in a cache's meta.json (ncnn's string is the one existing caches hold)
TEACHER_BACKENDS = {"ncnn": "realesrgan-x4plus (ncnn)", "torch-bf16": "realesrgan-x4plus (torch, bf16 autocast)"}


def default_cache() -> Path:
    """``$XDG_CACHE_HOME/patchscaler/teacher-real-x4`` (``~/.cache/...``): outside the repository,
    so a fresh checkout does not drop it and git never sees it."""
    root = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return root / "patchscaler" / "teacher-real-x4"


def list_shards(cache: str | os.PathLike) -> list[Path]:
    """The finished shards of ``cache``, in index order."""
    return sorted(Path(cache).glob("shard_*.pt"))


def _u8(x: torch.Tensor) -> torch.Tensor:
    return (x.clamp(0, 1) * 255.0).round().to(torch.uint8)


def label_shard(pool: PairPool, teacher, k: int, tiles: int, lr_tile: int, seed: int) -> dict[str, torch.Tensor]:
    """Shard ``k``: ``tiles`` HR crops of ``4·lr_tile``, their seeded real degradation and the teacher's ×4."""
    g = torch.Generator().manual_seed(seed * 1_000_003 + k)
    hr = pool.sample_hr(tiles, lr_tile * pool.scale, g)
    lr = degrade(hr, DegradationConfig(scale=pool.scale), g)
    # One ncnn call per tile: the whole tile is the teacher's context, so a crop's label
    # does not depend on which other crops were labelled with it.
    sr = torch.stack([teacher(t) for t in lr])
    return {"lr": _u8(lr), "teacher": _u8(sr), "hr": _u8(hr)}


class LabelledBatches(torch.utils.data.IterableDataset):
    """An endless stream of ``(lr [B,3,p,p], teacher [B,3,sp,sp], hr [B,3,sp,sp])`` float batches in [0, 1]
    cut from the first ``shards`` labelled shards of ``cache`` (all there are by default).

    Batch ``k`` is a function of ``(seed, k, shards)``: its generator picks, per crop, a tile,
    a position on the LR grid (so the three crops stay aligned) and one of the 8
    flips/rotations. The labelling job may run beside training: :meth:`grow` takes in the
    shards it has finished since (the trainer calls it at each validation and records the
    count in its checkpoint, so ``--resume`` starts from the same data). Workers split ``k``
    as in :class:`data.dataset.DegradedBatches`.
    """

    def __init__(self, cache: str | os.PathLike, lr_patch: int, batch: int, seed: int = 0, start: int = 0,
                 shards: int | None = None, scale: int = 4):
        self.cache, self.scale = Path(cache), scale
        self.lr_patch, self.batch, self.seed, self.start = lr_patch, batch, seed, start
        self.shards = 0
        self.lr = self.teacher = self.hr = None
        available = len(list_shards(cache))
        if shards is not None and shards > available:
            raise ValueError(f"{cache} has {available} shards, the run was started on {shards}")
        self.grow(shards)
        if self.shards == 0:
            raise FileNotFoundError(f"no teacher labels in {cache}: run python -m patchscaler.train.teacher_labels")

    def grow(self, shards: int | None = None) -> int:
        """Load the shards from ``self.shards`` up to ``shards`` (default: all finished ones); returns how many were added."""
        paths = list_shards(self.cache)[self.shards : shards]
        if not paths:
            return 0
        parts = [torch.load(p, weights_only=True) for p in paths]
        new = {k: torch.cat([d[k] for d in parts]) for k in ("lr", "teacher", "hr")}
        if new["lr"].shape[-1] < self.lr_patch:
            raise ValueError(f"labelled tiles are {new['lr'].shape[-1]}² LR, smaller than the {self.lr_patch}² crops asked for")
        for k, v in new.items():
            old = getattr(self, k)
            setattr(self, k, v if old is None else torch.cat([old, v]))
        self.shards += len(paths)
        return len(paths)

    def __len__(self) -> int:
        """Labelled tiles."""
        return self.lr.shape[0]

    def batch_at(self, k: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + k)
        s, p = self.scale, self.lr_patch
        n, _, h, w = self.lr.shape
        lrs, ts, hrs = [], [], []
        for _ in range(self.batch):
            i = int(torch.randint(n, (), generator=g))
            y = int(torch.randint(h - p + 1, (), generator=g))
            x = int(torch.randint(w - p + 1, (), generator=g))
            code = int(torch.randint(8, (), generator=g))
            lr = self.lr[i, :, y : y + p, x : x + p]
            hs, ws = slice(s * y, s * (y + p)), slice(s * x, s * (x + p))
            lr, t = augment(lr, self.teacher[i, :, hs, ws], code)
            _, hr = augment(lr, self.hr[i, :, hs, ws], code)
            lrs.append(lr)
            ts.append(t)
            hrs.append(hr)
        return tuple(torch.stack(v).float().div_(255.0) for v in (lrs, ts, hrs))

    def __iter__(self):
        return (self.batch_at(k) for k in worker_batch_indices(self.start))


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m patchscaler.train.teacher_labels", description=__doc__.split("\n")[0])
    p.add_argument("--data", default=str(DATA_ROOT / "train"), help="folder of HR training photos")
    p.add_argument("--cache", default=None, help=f"label folder (default {default_cache()})")
    p.add_argument("--pool-cache", default=None, help="pair-pool cache file (default CACHE/pool_x4.pt)")
    p.add_argument("--tiles", type=int, default=8, help="tiles per shard (one degradation resize per shard)")
    p.add_argument("--lr-tile", type=int, default=96, help="LR tile side (HR = 4x); training crops come from inside")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--shards", type=int, default=None, help="label shards 0..N-1 (default: until --minutes)")
    p.add_argument("--minutes", type=float, default=None, help="stop after this long (between shards)")
    p.add_argument("--threads", type=int, default=1, help="ncnn and torch threads")
    p.add_argument("--backend", choices=list(TEACHER_BACKENDS), default="ncnn",
                   help="ncnn: the reference, fp32; torch-bf16: the same network in PyTorch under bf16 autocast "
                        "(about 3x faster on a CPU with AMX; its labels differ from ncnn's by ~0.006 on average, "
                        "0.07 at most: a cache holds one backend's labels, so give it its own --cache)")
    p.add_argument("--summary", action="store_true", help="print what the cache holds and exit")
    return p.parse_args(argv)


def _check_meta(cache: Path, a: argparse.Namespace) -> None:
    """Refuse to mix shards made with other settings into one cache (they would not be one data set)."""
    meta = {"format": FORMAT, "tiles": a.tiles, "lr_tile": a.lr_tile, "seed": a.seed, "scale": 4,
            "teacher": TEACHER_BACKENDS[a.backend], "data": Path(a.data).name}
    path = cache / "meta.json"
    if path.is_file():
        old = json.loads(path.read_text())
        if old != meta:
            raise SystemExit(f"{cache} holds labels made with {old}, not {meta}: use another --cache")
    else:
        cache.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(meta, indent=1) + "\n")


def main(argv=None) -> int:
    a = parse_args(argv)
    cache = Path(a.cache) if a.cache else default_cache()
    if a.summary:
        shards = list_shards(cache)
        print(f"{cache}: {len(shards)} shards" + (f", meta {(cache / 'meta.json').read_text().strip()}" if shards else ""))
        return 0
    from patchscaler.train.teacher import RealESRGAN, RealESRGANTorch

    torch.set_num_threads(a.threads)
    _check_meta(cache, a)
    log = lambda msg: print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)  # noqa: E731
    pool = PairPool(a.data, scale=4, min_hr_side=4 * a.lr_tile, cache=a.pool_cache or cache / "pool_x4.pt", log=log)
    teacher = RealESRGAN(threads=a.threads, tile=0) if a.backend == "ncnn" else RealESRGANTorch(tile=0, bf16=True)
    t0, made, k = time.time(), 0, 0
    while a.shards is None or k < a.shards:
        if a.minutes is not None and time.time() - t0 > a.minutes * 60:
            break
        path = cache / f"shard_{k:06d}.pt"
        if not path.is_file():
            t = time.time()
            shard = label_shard(pool, teacher, k, a.tiles, a.lr_tile, a.seed)
            tmp = path.with_suffix(f".{os.getpid()}.tmp")
            torch.save(shard, tmp)
            os.replace(tmp, path)
            made += 1
            log(f"shard {k}: {a.tiles} tiles of {a.lr_tile}² LR in {time.time() - t:.1f} s")
        k += 1
    log(f"made {made} shards this run; {len(list_shards(cache))} in {cache}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
