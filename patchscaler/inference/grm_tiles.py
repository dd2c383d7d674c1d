"""The GRM on large images, tile by tile (a pipeline concern, so it lives with the pipeline).

The GRM is a convolutional network whose output at a pixel depends on its input within
``context`` LR pixels (`GRMConfig.receptive_radius`). `restore_tiled` runs it on tiles
that overlap by `tile_overlap(context)`, keeps only each tile's trusted core (weights from
`_tile_weights`) and sums them into the latent in `PatchPlan.merge`'s order, so the result
equals the untiled GRM up to float rounding in the last bit, in bounded memory.
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn as nn
from torch import Tensor

from patchscaler.inference.patch_plan import PatchPlan, plan_patches

__all__ = ["check_tiling", "restore_tiled", "tile_overlap"]


_TILE_SLACK = 8  # tiles overlap by 2·context + this, so their trusted cores overlap too


def tile_overlap(context: int) -> int:
    """How much neighbouring tiles overlap for a ``context`` band; a tile must be larger."""
    return 2 * context + _TILE_SLACK


def check_tiling(tile: int, context: int) -> None:
    """ValueError unless tiles of side ``tile`` have a trusted core inside a ``context`` band."""
    if tile <= tile_overlap(context):
        raise ValueError(f"grm_tile ({tile}) must exceed 2*grm_context + {_TILE_SLACK} = {tile_overlap(context)}")


@torch.no_grad()
def restore_tiled(
    grm: nn.Module, lr: Tensor, tile: int, context: int, progress: bool = False,
    on_tile: Callable[[int, int], None] | None = None,
) -> tuple[Tensor, Tensor]:
    """``grm`` on ``lr [B,3,h,w]`` → ``(y0 [B,C,h,w], conf [B,1,h,w])`` float32, at most
    ``tile²`` LR pixels per forward.

    Larger images run as overlapping tiles, blended with a weight that is 0 on each tile's
    outer ``context`` band (where the tile's zero padding differs from the image's) except
    along the image border, and 1 elsewhere. With ``context`` ≥ the GRM's receptive radius
    the result equals the whole-image forward.

    ``progress``: a tqdm bar over the forwards; ``on_tile(done, total)``: told the tiles
    done (0 first, then after each forward; an image that needs no tiling is one tile).
    """
    check_tiling(tile, context)
    B, _, h, w = lr.shape
    if h <= tile and w <= tile:
        if on_tile is not None:
            on_tile(0, B)
        y0, conf = grm(lr)
        if on_tile is not None:
            on_tile(B, B)
        return y0.float(), conf.float()
    overlap = tile_overlap(context)
    th, tw = _balanced_tile(h, tile, overlap), _balanced_tile(w, tile, overlap)
    plan = plan_patches(h, w, (th, tw), (min(overlap, th - 1), min(overlap, tw - 1)))
    tiles = plan.split(lr.contiguous())
    # Several small tiles per forward, as long as they add up to one full tile's pixels.
    chunks = tiles.split(max(1, tile**2 // (th * tw)))
    if progress and len(chunks) > 1:
        from tqdm.auto import tqdm

        chunks = tqdm(chunks, desc="GRM tiles", unit="batch", leave=False)
    weights = _tile_weights(plan, context, B).to(lr.device)
    origins = plan.batch_origins(B).tolist()
    # Each tile's output is added into the sums as soon as it exists, instead of keeping
    # every tile and merging at the end (which held the latent ~3 times over). Tiles are
    # added in tile order, the order `PatchPlan.merge` sums them in, so the result is
    # bit for bit the same.
    y0 = num_conf = den = None
    done = 0
    if on_tile is not None:
        on_tile(0, tiles.shape[0])
    for chunk in chunks:
        y, c = grm(chunk)
        if y0 is None:
            y0 = torch.zeros(B, y.shape[1], h, w, device=lr.device)
            num_conf = torch.zeros(B, c.shape[1], h, w, device=lr.device)
            den = torch.zeros(B, 1, h, w, device=lr.device)
        for k in range(y.shape[0]):
            b, oy, ox = origins[done + k]
            wk = weights[done + k]
            region = (b, slice(None), slice(oy, oy + th), slice(ox, ox + tw))
            y0[region] += y[k].float() * wk
            num_conf[region] += c[k].float() * wk
            den[region] += wk
        done += y.shape[0]
        if on_tile is not None:
            on_tile(done, tiles.shape[0])
    return y0.div_(den), num_conf.div_(den)


def _tile_weights(plan: PatchPlan, context: int, batch: int) -> Tensor:
    """``[batch·T, 1, th, tw]`` float32: 1 on each tile's trusted core, 0 on its outer
    ``context`` band, except along sides on the image border (there the tile's zero
    padding is the image's own, so those pixels are exact too)."""
    (th, tw), c = plan.patch, context

    def axis(origin: int, n: int, size: int) -> Tensor:
        w = torch.ones(n)
        if origin > 0:
            w[:c] = 0
        if origin + n < size:
            w[n - c :] = 0
        return w

    wy = torch.stack([axis(y, th, plan.height) for y, _ in plan.origins().tolist()])
    wx = torch.stack([axis(x, tw, plan.width) for _, x in plan.origins().tolist()])
    return (wy[:, :, None] * wx[:, None, :])[:, None].repeat(batch, 1, 1, 1)


def _balanced_tile(size: int, max_tile: int, overlap: int) -> int:
    """Tile side along an axis of ``size``: the fewest tiles of at most ``max_tile`` that
    cover it with ``overlap``, made equal, so no tile is mostly a repeat of its neighbour."""
    if size <= max_tile:
        return size
    n = -(-(size - overlap) // (max_tile - overlap))
    return min(max_tile, -(-(size + (n - 1) * overlap) // n))


# ------------------------------------------------------------------------- weights
