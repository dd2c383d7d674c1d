"""The denoiser interface the samplers drive, and its implementation by the Patch-DiT
with the texture prompt from the Reference Texture Memory.

A denoiser does two things:

* ``condition(y0 [P,C,h,w]) -> dict[str, Tensor]``: everything per patch that does not
  change across denoising steps (here: ``y0`` itself and the texture prompt, whose
  retrieval and encoding would otherwise be repeated at every step). Every value has
  the patch dimension first, so the sampler can index a chunk of patches out of it.
* ``__call__(y_t [B,C,h,w], t [B] int64, cond: dict of [B,...]) -> [B,C,h,w]``: the
  model output (ε̂ or v̂, named by the ``prediction`` attribute).

and carries the diffusion schedule it was trained with: ``alphas_cumprod [T]`` float64
and its ``schedule`` name (the DiT's, from its weights' metadata). The samplers use that
table; they never rebuild one.

Optionally, a denoiser whose model runs in half precision also has ``dtype`` and
``full_precision(y_t, t, cond)``: the same call computed in float32. The samplers call it
for a chunk whose half-precision output is not finite (fp16 overflows above 65504), so
half precision never turns a patch into NaN (black) output.

The samplers know nothing else about the model, which keeps them testable with an
analytic stand-in (tests/test_pgs.py uses an oracle that knows x0).
"""

from __future__ import annotations

import copy
import threading
from typing import Callable, Protocol

import torch
from torch import Tensor

from patchscaler.checkpoints import weights_file
from patchscaler.models.dit import PatchDiT, load_dit, pad_rows
from patchscaler.models.rtm import ReferenceTextureMemory, load_rtm

__all__ = ["PatchDenoiser", "DiTDenoiser"]


class PatchDenoiser(Protocol):
    prediction: str
    schedule: str
    alphas_cumprod: Tensor

    def condition(self, y0: Tensor) -> dict[str, Tensor]: ...

    def __call__(self, y_t: Tensor, t: Tensor, cond: dict[str, Tensor]) -> Tensor: ...


class DiTDenoiser:
    """`PatchDiT` + optional `ReferenceTextureMemory` as a `PatchDenoiser`.

    Without a memory (``rtm=None``) the DiT gets its learned "no reference" prompt.
    ``condition`` runs in chunks of ``chunk`` patches to bound memory.
    ``cpu_chunk``: on the CPU a call runs the DiT on at most this many patches at a time
    (64 patches = 1024 tokens: the MLP's 4×-wide activation is 4 MiB; larger batches
    spill from cache and page-fault on fresh memory: 1.1× slower at 192; 32 is 1.05×
    slower for the whole upscale). Results depend on it only through float rounding of
    differently-sized matrix products (≤ 1.2e-7 in the output image between 32 and 64).

    ``full_precision``: makes the float32 twin of a half-precision ``dit`` (e.g. by
    reloading its file); default: a float32 copy of ``dit``. Called at most once, on the
    first chunk that needs it (`float32_dit`), and kept: the twin costs memory only
    where half precision actually overflowed.

    Thread-safe: calls only read the modules, and the twin is built under a lock.
    """

    def __init__(
        self,
        dit: PatchDiT,
        rtm: ReferenceTextureMemory | None = None,
        chunk: int = 512,
        full_precision: Callable[[], PatchDiT] | None = None,
        cpu_chunk: int = 64,
    ):
        self.dit = dit
        self.rtm = rtm
        self.chunk = chunk
        self.cpu_chunk = cpu_chunk
        self._make_float32 = full_precision
        self._dit32: PatchDiT | None = dit if self.dtype == torch.float32 else None
        self._dit32_lock = threading.Lock()
        if rtm is not None and tuple(rtm.value_shape) != (dit.config.value_tokens, dit.config.value_dim):
            raise ValueError(
                f"RTM value tokens {rtm.value_shape} do not match the DiT's "
                f"(value_tokens={dit.config.value_tokens}, value_dim={dit.config.value_dim})"
            )

    @property
    def prediction(self) -> str:
        return self.dit.config.prediction

    @property
    def schedule(self) -> str:
        return self.dit.config.schedule

    @property
    def alphas_cumprod(self) -> Tensor:
        return self.dit.alphas_cumprod

    @property
    def dtype(self) -> torch.dtype:
        """The DiT's parameter dtype (what it computes in)."""
        return self.dit.patch_embed.weight.dtype

    def float32_dit(self) -> PatchDiT:
        """The DiT in float32: ``dit`` itself when it is float32, else its twin, made once."""
        dit = self._dit32
        if dit is None:
            with self._dit32_lock:
                if self._dit32 is None:
                    made = self._make_float32() if self._make_float32 is not None else copy.deepcopy(self.dit)
                    self._dit32 = made.float().eval().requires_grad_(False)
                dit = self._dit32
        return dit

    @classmethod
    def from_pretrained(
        cls, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32, *, model: str | None = None
    ) -> "DiTDenoiser":
        """Model set ``model``'s DiT (required) and texture memory (used when the set has one).
        A half-precision DiT's float32 twin is read from the same file when first needed."""
        dit = load_dit(device=device, dtype=dtype, model=model)
        rtm = load_rtm(device=device, model=model) if weights_file("rtm", model).is_file() else None
        return cls(dit, rtm, full_precision=lambda: load_dit(device=device, dtype=torch.float32, model=model))

    @torch.no_grad()
    def condition(self, y0: Tensor) -> dict[str, Tensor]:
        """``y0 [P,C,h,w]`` → ``{"y0": y0, "prompt": [P, L, width], "y0_embed": [P, N, width]}``
        (``y0_embed``: `PatchDiT.embed_y0`, y0's share of the DiT's token embedding, in the
        DiT's dtype), and with a memory the retrieval the prompt came from,
        ``"rtm_scores" [P,K]`` and ``"rtm_index" [P,K]`` (so `full_precision` can encode the
        prompt again in float32)."""
        prompts, scores, index, embeds = [], [], [], []
        k = self.dit.config.top_k
        for y in y0.split(self.chunk):
            n = y.shape[0]
            # The texture and prompt encoders' per-patch Linear layers: padded so that a
            # patch's prompt does not depend on its chunk (`models.dit.MIN_GEMM_ROWS`).
            y = pad_rows(y)
            embeds.append(self.dit.embed_y0(y)[:n])
            if self.rtm is not None:
                s, i = self.rtm.search(y, min(k, len(self.rtm)))
                prompts.append(self.dit.encode_prompt(self.rtm.lookup(i), s)[:n])
                scores.append(s[:n])
                index.append(i[:n])
            else:
                prompts.append(self.dit.encode_prompt(None, None, batch=y.shape[0])[:n])
        cond = {"y0": y0, "prompt": torch.cat(prompts) if prompts else y0.new_zeros(0, 0, self.dit.config.width)}
        if embeds:
            cond["y0_embed"] = torch.cat(embeds)
        if self.rtm is not None:
            cond["rtm_scores"] = torch.cat(scores) if scores else y0.new_zeros(0, 0)
            cond["rtm_index"] = torch.cat(index) if index else torch.zeros(0, 0, dtype=torch.long, device=y0.device)
        return cond

    @torch.no_grad()
    def __call__(self, y_t: Tensor, t: Tensor, cond: dict[str, Tensor]) -> Tensor:
        """``y_t [B,C,h,w]``, ``t [B]``, ``cond`` rows of `condition` → ε̂/v̂ ``[B,C,h,w]`` float32."""
        y0, prompt, y0_embed = cond["y0"], cond["prompt"], cond.get("y0_embed")
        n = self.cpu_chunk if y_t.device.type == "cpu" else y_t.shape[0]
        if y_t.shape[0] <= n:
            return self.dit(y_t, t, y0, prompt, y0_embed)
        parts = [
            self.dit(y_t[i : i + n], t[i : i + n], y0[i : i + n], prompt[i : i + n],
                     None if y0_embed is None else y0_embed[i : i + n])
            for i in range(0, y_t.shape[0], n)
        ]
        return torch.cat(parts)

    @torch.no_grad()
    def full_precision(self, y_t: Tensor, t: Tensor, cond: dict[str, Tensor]) -> Tensor:
        """`__call__` computed in float32 from the start: the prompt is encoded again from the
        retrieval by the float32 DiT (a half-precision prompt may itself have overflowed)."""
        dit = self.float32_dit()
        if self.rtm is not None:
            prompt = dit.encode_prompt(self.rtm.lookup(cond["rtm_index"]), cond["rtm_scores"])
        else:
            prompt = dit.encode_prompt(None, None, batch=y_t.shape[0])
        return dit(y_t, t, cond["y0"], prompt)
