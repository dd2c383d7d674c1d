"""Reference Texture Memory (RTM, paper §3.3, SPEC §2).

N entries, each an HR texture patch from the training photos, stored as

* ``keys [N, key_dim]``: the frozen `TextureEncoder`'s L2-normalised embedding of the
  entry's HR latent patch (fp16 on disk, fp32 in memory on CPU);
* ``values [N, n_tok, value_dim]``: the same encoder's value tokens of that patch,
  precomputed so inference does no value encoding;
* ``image_ids [N]`` int64: a stable id of the photo the entry was cut from
  (`patchscaler.data.dataset.image_id`, a CRC32 of the file's path relative to the training folder), used to
  keep the DiT from retrieving its own training image (otherwise it learns to copy);
* ``encoder``: the `TextureEncoder` that made the keys. It is saved in the same file
  because a query made by any other encoder would be meaningless against these keys.

Retrieval is the fused `torch.ops.patchscaler.topk_retrieve` (inner products of unit
vectors = cosine similarity; the M×N score matrix is never materialised).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from torch import Tensor, nn

import patchscaler.ops  # noqa: F401  (registers torch.ops.patchscaler.*)
from patchscaler.checkpoints import read_safetensors, require, save_safetensors
from patchscaler.models.texture import TextureEncoder, TextureEncoderConfig

__all__ = ["ReferenceTextureMemory", "load_rtm"]


class ReferenceTextureMemory(nn.Module):
    """The memory: see the module docstring. Move it with ``.to(device)`` like any module.

    ``keys [N,D]`` should be unit-norm rows (fp32/fp16/bf16); ``values [N,n_tok,d_v]``;
    ``image_ids [N]`` int64 or None (no exclusion possible then).
    """

    def __init__(
        self,
        keys: Tensor,
        values: Tensor,
        image_ids: Tensor | None = None,
        encoder: TextureEncoder | None = None,
    ):
        super().__init__()
        if keys.dim() != 2 or values.dim() != 3 or values.shape[0] != keys.shape[0]:
            raise ValueError(f"keys {tuple(keys.shape)} and values {tuple(values.shape)} do not match ([N,D], [N,n_tok,d_v])")
        if image_ids is not None and image_ids.shape != (keys.shape[0],):
            raise ValueError(f"image_ids {tuple(image_ids.shape)} must be [N={keys.shape[0]}]")
        self.register_buffer("keys", keys.contiguous())
        self.register_buffer("values", values.contiguous())
        self.register_buffer("image_ids", None if image_ids is None else image_ids.long().contiguous())
        self.encoder = encoder
        self.metadata: dict[str, str] = {}

    def __len__(self) -> int:
        return self.keys.shape[0]

    @property
    def key_dim(self) -> int:
        return self.keys.shape[1]

    @property
    def value_shape(self) -> tuple[int, int]:
        """(n_tok, value_dim)."""
        return tuple(self.values.shape[1:])

    def retrieve(self, query_keys: Tensor, k: int, exclude_image_ids: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Top-``k`` entries by inner product: ``query_keys [M,D]`` → ``(scores [M,k] float32, idx [M,k] int64)``.

        Rows are sorted by descending score (ties: smaller entry index first).
        ``exclude_image_ids [M]`` (int64): query i never gets an entry whose image id
        equals ``exclude_image_ids[i]``. Exact, not approximate: the op is asked for
        ``k + extra`` candidates, where ``extra`` is the largest number of entries any of
        the excluded images owns, so at least ``k`` allowed candidates are among them;
        excluded ones are then dropped with a stable sort that keeps the score order.
        Raises ValueError when a query has fewer than ``k`` allowed entries in the memory.
        """
        n = len(self)
        if not 1 <= k <= n:
            raise ValueError(f"k must be in [1, {n}] for a memory of {n} entries, got {k}")
        q = query_keys.to(device=self.keys.device, dtype=self.keys.dtype).contiguous()
        if exclude_image_ids is None:
            return torch.ops.patchscaler.topk_retrieve(q, self.keys, k)
        if self.image_ids is None:
            raise ValueError("this memory has no image_ids, so it cannot exclude images")
        excl = exclude_image_ids.to(device=self.keys.device, dtype=torch.long)
        if excl.shape != (q.shape[0],):
            raise ValueError(f"exclude_image_ids {tuple(excl.shape)} must be [M={q.shape[0]}]")
        ids, counts = torch.unique(self.image_ids, return_counts=True)
        pos = torch.searchsorted(ids, excl).clamp(max=ids.numel() - 1)
        owned = torch.where(ids[pos] == excl, counts[pos], torch.zeros_like(pos))
        if bool((n - owned < k).any()):
            raise ValueError(f"a query's excluded image owns {int(owned.max())} of {n} entries, fewer than k={k} remain")
        extra = int(owned.max()) if owned.numel() else 0
        scores, idx = torch.ops.patchscaler.topk_retrieve(q, self.keys, min(k + extra, n))
        banned = self.image_ids[idx] == excl[:, None]
        order = torch.sort(banned.to(torch.int8), dim=1, stable=True).indices[:, :k]
        return scores.gather(1, order), idx.gather(1, order)

    def lookup(self, idx: Tensor) -> Tensor:
        """Entry indices ``[M,k]`` → value tokens ``[M, k, n_tok, value_dim]`` (the memory's dtype)."""
        return self.values[idx.to(self.values.device)]

    @torch.no_grad()
    def query(
        self, y0: Tensor, k: int, exclude_image_ids: Tensor | None = None
    ) -> tuple[Tensor, Tensor]:
        """Coarse latent patches ``y0 [P,48,h,w]`` → ``(values [P,k,n_tok,d_v], scores [P,k] float32)``.

        Encodes the queries with the memory's own encoder, retrieves, looks up values.
        """
        scores, idx = self.search(y0, k, exclude_image_ids)
        return self.lookup(idx), scores

    @torch.no_grad()
    def search(
        self, y0: Tensor, k: int, exclude_image_ids: Tensor | None = None
    ) -> tuple[Tensor, Tensor]:
        """`query` without the value lookup: ``y0 [P,48,h,w]`` → ``(scores [P,k] float32, idx [P,k] int64)``
        (`lookup` turns ``idx`` into the values)."""
        if self.encoder is None:
            raise ValueError("this memory was built without its texture encoder; pass query keys to retrieve()")
        enc_dtype = next(self.encoder.parameters()).dtype
        keys = self.encoder(y0.to(enc_dtype))
        return self.retrieve(keys, k, exclude_image_ids)

    def save(self, path: str | os.PathLike, metadata: dict | None = None, half: bool = True) -> None:
        """Write keys, values, image ids and the encoder (fp16 floats if ``half``) as safetensors."""
        def cast(v: Tensor) -> Tensor:
            return v.half() if half and v.is_floating_point() else v

        tensors = {"keys": cast(self.keys), "values": cast(self.values)}
        if self.image_ids is not None:
            tensors["image_ids"] = self.image_ids.cpu()
        meta = dict(metadata or {})
        if self.encoder is not None:
            tensors.update({f"encoder.{k}": cast(v) for k, v in self.encoder.state_dict().items()})
            meta["encoder_config"] = self.encoder.config.to_dict()
        save_safetensors(path, tensors, format="patchscaler.ReferenceTextureMemory", metadata=meta)

    @classmethod
    def load(
        cls, path: str | os.PathLike, device: torch.device | str = "cpu", dtype: torch.dtype | None = None
    ) -> "ReferenceTextureMemory":
        """Read a memory written by `save`. Floats become ``dtype`` (default: float32 on CPU,
        float16 elsewhere — fp16 matmuls are slow on CPU and fast on GPU)."""
        t, _, meta = read_safetensors(path, format="patchscaler.ReferenceTextureMemory")
        device = torch.device(device)
        if dtype is None:
            dtype = torch.float32 if device.type == "cpu" else torch.float16
        encoder = None
        if "encoder_config" in meta:
            encoder = TextureEncoder(TextureEncoderConfig.from_dict(json.loads(meta["encoder_config"])))
            encoder.load_state_dict({k[len("encoder."):]: v.float() for k, v in t.items() if k.startswith("encoder.")})
            encoder = encoder.to(device=device).eval().requires_grad_(False)
        mem = cls(t["keys"].to(dtype), t["values"].to(dtype), t.get("image_ids"), encoder)
        mem.metadata = {k: v for k, v in meta.items() if k not in ("format", "encoder_config")}
        return mem.to(device)


def load_rtm(
    path: str | os.PathLike | None = None,
    device: torch.device | str = "cpu",
    dtype: torch.dtype | None = None,
    *,
    model: str | None = None,
) -> ReferenceTextureMemory:
    """Load model set ``model``'s memory ``rtm_x4.safetensors`` (or ``path``)."""
    path = Path(path) if path is not None else require("rtm", model)
    if not path.is_file():
        raise FileNotFoundError(f"texture memory not found at {path}; build it with `python -m patchscaler.train.rtm`")
    return ReferenceTextureMemory.load(path, device=device, dtype=dtype)
