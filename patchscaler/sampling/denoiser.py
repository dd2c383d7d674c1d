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

The samplers know nothing else about the model, which keeps them testable with an
analytic stand-in (tests/test_pgs.py uses an oracle that knows x0).
"""

from __future__ import annotations

from typing import Protocol

import torch
from torch import Tensor

from patchscaler.checkpoints import weights_file
from patchscaler.models.dit import PatchDiT, load_dit
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
    """

    def __init__(self, dit: PatchDiT, rtm: ReferenceTextureMemory | None = None, chunk: int = 512):
        self.dit = dit
        self.rtm = rtm
        self.chunk = chunk
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

    @classmethod
    def from_pretrained(
        cls, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32, *, model: str | None = None
    ) -> "DiTDenoiser":
        """Model set ``model``'s DiT (required) and texture memory (used when the set has one)."""
        dit = load_dit(device=device, dtype=dtype, model=model)
        rtm = load_rtm(device=device, model=model) if weights_file("rtm", model).is_file() else None
        return cls(dit, rtm)

    @torch.no_grad()
    def condition(self, y0: Tensor) -> dict[str, Tensor]:
        """``y0 [P,C,h,w]`` → ``{"y0": y0, "prompt": [P, L, width]}``."""
        prompts = []
        k = self.dit.config.top_k
        for y in y0.split(self.chunk):
            if self.rtm is not None:
                values, scores = self.rtm.query(y, min(k, len(self.rtm)))
                prompts.append(self.dit.encode_prompt(values, scores))
            else:
                prompts.append(self.dit.encode_prompt(None, None, batch=y.shape[0]))
        return {"y0": y0, "prompt": torch.cat(prompts) if prompts else y0.new_zeros(0, 0, self.dit.config.width)}

    @torch.no_grad()
    def __call__(self, y_t: Tensor, t: Tensor, cond: dict[str, Tensor]) -> Tensor:
        return self.dit(y_t, t, cond["y0"], cond["prompt"])
