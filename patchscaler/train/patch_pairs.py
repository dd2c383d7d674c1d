"""What the diffusion-side training scripts share (`patchscaler.train.texture`, `.rtm`,
`.dit`, `.calibrate_pgs`): the latent patch pairs they learn from, the train/held-out
split of the photos and the frozen GRM that makes ``y0``. Run plumbing (log file,
checkpoints, time budget, signals) is in `patchscaler.train.common`.

Patch pairs. An aligned random crop (LR ``c×c``, HR ``4c×4c``) goes through the frozen
GRM; the crop's latents ``y0`` (GRM), ``x0`` (codec of the HR crop) and ``C`` are then
cut into 16×16 patches at least ``margin`` LR pixels from the crop border, so every
patch's ``y0`` was computed with real image context on all sides, as it is at
inference on a whole image. Each patch carries its photo's `image_id`, which the DiT
trainer uses to keep retrieval off the patch's own photo.

Held-out split: a photo is held out when ``image_id % 20 == 0`` (about 5 %, stable
under adding or removing other files). Held-out photos are used by no trainer and by
the RTM builder, only by evaluation and PGS calibration.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import torch
from torch import Tensor

from patchscaler.inference.codec import PixelUnshuffleCodec
from patchscaler.data.dataset import PairPool, augment, worker_batch_indices
from patchscaler.data.dataset import image_id
from patchscaler.train.common import DEFAULT_DATA, add_run_args

__all__ = [
    "DEFAULT_DATA",
    "HELD_OUT_MODULUS",
    "split_entries",
    "load_frozen_grm",
    "LatentPatchPairs",
    "RealCropBatches",
    "add_common_args",
    "real_lr",
]

HELD_OUT_MODULUS = 20


def add_common_args(p, out_default: str) -> None:
    """Arguments every diffusion-side script takes."""
    add_run_args(p, out_default)
    p.add_argument("--device", default="cpu")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--max-images", type=int, default=None, help="use only the first N photos (tiny smoke runs)")
    p.add_argument(
        "--cache", default=None,
        help="pair-pool cache file (default: runs/cache/pool_x4.pt, shared with the GRM trainer, for the default --data only)",
    )
    p.add_argument(
        "--degradation", default="bicubic", choices=["bicubic", "real"],
        help="LR of each crop: MATLAB bicubic, or the real-world pipeline drawn per crop (use with a "
             "--grm-checkpoint trained on the same degradation)",
    )


def set_weights_defaults(a, **components: str) -> None:
    """Fill each argument left ``None`` in ``components`` (argument name → weights
    component, e.g. ``rtm="rtm"``) with that component's file in the model set trained for
    ``a.degradation`` (`checkpoints.set_trained_for`, from the sets' own set.json), so a
    ``--degradation real`` run reads and writes the set made for real photos, whichever
    set `upscale()` uses by default."""
    from patchscaler.checkpoints import set_trained_for, weights_file

    model_set = set_trained_for(a.degradation)
    for arg, component in components.items():
        if getattr(a, arg) is None:
            setattr(a, arg, str(weights_file(component, model_set)))


def open_pool(a, lr_crop: int, log) -> PairPool:
    """The PairPool of ``a.data`` (cached like the GRM trainer's), limited to ``a.max_images`` photos."""
    cache = a.cache
    # The default cache file is shared with the GRM trainer and holds exactly one
    # folder's pool; a pool of any other folder would overwrite it, so only the
    # default folder may use it.
    if cache is None and Path(a.data).resolve() == DEFAULT_DATA.resolve():
        cache = Path("runs") / "cache" / "pool_x4.pt"
    pool = PairPool(a.data, scale=4, min_hr_side=4 * lr_crop, cache=cache, log=log)
    if a.max_images is not None:
        pool.entries = pool.entries[: a.max_images]
        pool.names = pool.names[: a.max_images]
    return pool


def split_entries(pool: PairPool) -> tuple[list[int], list[int]]:
    """(train, held-out) indices into ``pool.entries`` by the rule in the module docstring.

    If no photo falls in the held-out rule (tiny pools), the one with the smallest id is held out.
    """
    ids = [image_id(n) for n in pool.names]
    held = [i for i, v in enumerate(ids) if v % HELD_OUT_MODULUS == 0]
    if not held and len(ids) > 1:
        held = [min(range(len(ids)), key=lambda i: ids[i])]
    train = [i for i in range(len(ids)) if i not in set(held)]
    return train, held


def load_frozen_grm(checkpoint: str | None, device: torch.device | str = "cpu"):
    """The GRM that makes ``y0`` and ``C``, frozen, in eval mode.

    checkpoint: None → the packaged weights of the default set (`load_grm`; the trainers
    name their set's file instead, `set_weights_defaults`); a ``.pt`` checkpoint of
    `patchscaler.train.grm` (its EMA weights); an exported ``.safetensors`` file;
    or "bicubic" → an untrained GRM, which is exactly MATLAB bicubic with C = 0.5
    (for smoke tests of the pipeline only).
    """
    from patchscaler.models.grm import GRM, GRMConfig, grm_from_file, load_grm

    if checkpoint is None:
        return load_grm(4, device=device)
    if checkpoint == "bicubic":
        warnings.warn("using an untrained GRM (bicubic y0, C = 0.5): smoke tests only", stacklevel=2)
        model = GRM(GRMConfig())
    else:
        path = Path(checkpoint)
        if path.suffix == ".safetensors":
            model = grm_from_file(path)
        else:
            ck = torch.load(path, map_location="cpu", weights_only=False)
            model = GRM(GRMConfig.from_dict(ck["config"]))
            model.load_state_dict(ck.get("ema") or ck["model"])
    return model.to(device).eval().requires_grad_(False)


class LatentPatchPairs:
    """Random latent patch pairs from some photos of a `PairPool` (module docstring).

    ``sample(n_crops, generator)`` → dict of
      ``y0 [M,48,p,p]`` (GRM), ``x0 [M,48,p,p]`` (codec of HR), ``conf [M,1,p,p]``,
      ``image_id [M]`` int64, with M = n_crops·per_crop; float32 on ``device``.
    With ``grm=None`` only ``x0`` and ``image_id`` are made (crops of exactly p LR pixels).
    Deterministic given the generator's state.

    ``degradation="real"`` makes each crop's LR with the real-world pipeline
    (`data.degradations.degrade`, drawn from the same generator) instead of the
    stored MATLAB-bicubic LR.

    ``per_photo=False`` picks crops in proportion to each photo's area (training: every
    pixel is as likely as any other); ``True`` gives every photo the same share, the way
    benchmark scores average over images (PGS calibration: a few large wallpapers with
    blurred backgrounds would otherwise decide the thresholds).
    """

    def __init__(
        self,
        pool: PairPool,
        entries: list[int],
        grm=None,
        lr_crop: int = 48,
        patch: int = 16,
        margin: int = 8,
        device: torch.device | str = "cpu",
        per_photo: bool = False,
        degradation: str = "bicubic",
    ):
        if degradation not in ("bicubic", "real"):
            raise ValueError(f"degradation must be 'bicubic' or 'real', got {degradation!r}")
        self.degradation = degradation
        if not entries:
            raise ValueError("no photos to sample from")
        self.pool, self.entries, self.grm = pool, list(entries), grm
        self.patch, self.device = patch, torch.device(device)
        self.lr_crop = lr_crop if grm is not None else patch
        self.margin = margin if grm is not None else 0
        span = self.lr_crop - 2 * self.margin
        if span < patch:
            raise ValueError(f"lr_crop {lr_crop} leaves no {patch}-pixel patch inside a {margin}-pixel margin")
        self.offsets = [self.margin + i * patch for i in range(span // patch)]
        self.codec = PixelUnshuffleCodec(4)
        self.ids = torch.tensor([image_id(pool.names[i]) for i in self.entries], dtype=torch.long)
        c = self.lr_crop
        w = [max(0, pool.entries[i].lr.shape[1] - c + 1) * max(0, pool.entries[i].lr.shape[2] - c + 1) for i in self.entries]
        self.weights = torch.tensor(w, dtype=torch.float64)
        if per_photo:
            self.weights = (self.weights > 0).double()
        if self.weights.sum() == 0:
            raise ValueError(f"no photo is large enough for an LR crop of {c}")

    @property
    def per_crop(self) -> int:
        return len(self.offsets) ** 2

    def crops(self, n: int, generator: torch.Generator) -> tuple[Tensor, Tensor, Tensor]:
        """``(lr [n,3,c,c], hr [n,3,4c,4c])`` uint8 and ``image_id [n]`` (converted on the device in `sample`)."""
        c = self.lr_crop
        pick = torch.multinomial(self.weights, n, replacement=True, generator=generator)
        lrs, hrs = [], []
        for j in pick.tolist():
            e = self.pool.entries[self.entries[j]]
            h, w = e.lr.shape[1:]
            y = int(torch.randint(0, h - c + 1, (1,), generator=generator))
            x = int(torch.randint(0, w - c + 1, (1,), generator=generator))
            code = int(torch.randint(0, 8, (1,), generator=generator))
            lr, hr = augment(e.lr[:, y : y + c, x : x + c], e.hr[:, 4 * y : 4 * (y + c), 4 * x : 4 * (x + c)], code)
            lrs.append(lr)
            hrs.append(hr)
        return torch.stack(lrs), torch.stack(hrs), self.ids[pick]

    def _cut(self, z: Tensor) -> Tensor:
        """``[n,C,c,c]`` → ``[n·per_crop, C, p, p]`` (crop-major, then row-major offsets)."""
        p = self.patch
        tiles = [z[:, :, y : y + p, x : x + p] for y in self.offsets for x in self.offsets]
        return torch.stack(tiles, dim=1).flatten(0, 1)

    @torch.no_grad()
    def sample(self, n_crops: int, generator: torch.Generator) -> dict[str, Tensor]:
        lr, hr, ids = self.crops(n_crops, generator)
        if self.grm is not None and self.degradation == "real":
            lr = real_lr(hr, generator)
        return self.encode(lr, hr, ids)

    @torch.no_grad()
    def encode(self, lr: Tensor, hr: Tensor, ids: Tensor) -> dict[str, Tensor]:
        """Crops from `crops` (with their LR degraded, or not) → the patch dict of `sample`."""
        # uint8 crosses to the device (4x fewer bytes) and becomes float there.
        hr = hr.to(self.device).float() / 255.0
        out = {"x0": self._cut(self.codec.encode(hr)), "image_id": ids.repeat_interleave(self.per_crop)}
        if self.grm is not None:
            y0, conf = self.grm(lr.to(self.device).float() / 255.0)
            out["y0"] = self._cut(y0.float())
            out["conf"] = self._cut(conf.float())
        return out


def real_lr(hr: Tensor, generator: torch.Generator) -> Tensor:
    """uint8 HR crops ``[n,3,4c,4c]`` → their LR ``[n,3,c,c]`` uint8 by the real-world
    pipeline (`data.degradations.degrade`, drawn from ``generator``)."""
    from patchscaler.data.degradations import degrade

    return (degrade(hr.float() / 255.0, generator=generator) * 255).round().to(torch.uint8)


class RealCropBatches(torch.utils.data.IterableDataset):
    """An endless stream of ``(lr, hr, image_id)`` crop batches of ``pairs`` (`LatentPatchPairs.crops`,
    ``n_crops`` each) with the LR made by the real-world pipeline, for `LatentPatchPairs.encode`.

    Degrading costs more than the DiT's training step on a GPU, so it runs in DataLoader
    workers. Batch ``k`` is a function of ``(seed, k)`` only (its own generator draws the
    crops, then the degradation): worker ``w`` of ``W`` makes ``k ≡ start + w (mod W)``,
    the DataLoader hands the batches out in order, and a run resumed at step ``k`` sees
    the batches it would have seen, whatever the number of workers.
    """

    def __init__(self, pairs: LatentPatchPairs, n_crops: int, seed: int = 0, start: int = 0):
        self.pairs, self.n_crops, self.seed, self.start = pairs, n_crops, seed, start

    def batch_at(self, k: int) -> tuple[Tensor, Tensor, Tensor]:
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + k)
        lr, hr, ids = self.pairs.crops(self.n_crops, g)
        return real_lr(hr, g), hr, ids

    def __iter__(self):
        return (self.batch_at(k) for k in worker_batch_indices(self.start))
