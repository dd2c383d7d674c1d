"""Texture prompt models (paper §3.3): the texture encoder that makes RTM keys and
queries, and the similarity-aware texture encoder that turns retrieved RTM entries
into the DiT's cross-attention prompt.

Flow at inference, per latent patch::

    y0 patch [P,48,16,16] --TextureEncoder--> query key [P,64] (L2-normalised)
        --RTM top-K by inner product--> scores [P,K], value tokens [P,K,n_tok,d_v]
        --SimilarityAwareTextureEncoder--> prompt [P, K·n_tok, d]

The texture encoder (the paper's frozen "texture classifier") is trained once,
contrastively (`python -m patchscaler.train.texture`), so that the key of a coarse
patch ``y0`` lands near the key of its HR patch ``x0``; it is then frozen. The RTM's
value tokens are the same frozen encoder's spatial features of each entry's HR
patch (`TextureEncoder.value_tokens`), precomputed when the memory is built, so the
value side costs nothing at inference and needs no retraining when the DiT is
retrained. Only the similarity-aware encoder is trained with the DiT.
"""

from __future__ import annotations

import math
import os
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from patchscaler.checkpoints import read_safetensors, save_safetensors

__all__ = [
    "TextureEncoderConfig",
    "TextureEncoder",
    "SimilarityAwareTextureEncoder",
    "load_texture_encoder",
    "save_texture_encoder",
]


@dataclass
class TextureEncoderConfig:
    """Sizes of the texture encoder. ``value_grid`` g gives g² value tokens per RTM entry."""

    in_channels: int = 48
    widths: tuple[int, int, int] = (48, 96, 128)
    key_dim: int = 64
    value_grid: int = 2

    @property
    def value_dim(self) -> int:
        """Channels of one value token (= the last stage's width)."""
        return self.widths[-1]

    @property
    def value_tokens(self) -> int:
        return self.value_grid**2

    def to_dict(self) -> dict:
        return {**asdict(self), "widths": list(self.widths)}

    @classmethod
    def from_dict(cls, d: dict) -> "TextureEncoderConfig":
        d = dict(d)
        d["widths"] = tuple(d["widths"])
        return cls(**d)


class _ResBlock(nn.Module):
    """GroupNorm-SiLU-conv3×3, twice, plus the input: [P,C,H,W] → [P,C,H,W]."""

    def __init__(self, ch: int):
        super().__init__()
        self.body = nn.Sequential(
            nn.GroupNorm(8, ch), nn.SiLU(), nn.Conv2d(ch, ch, 3, padding=1),
            nn.GroupNorm(8, ch), nn.SiLU(), nn.Conv2d(ch, ch, 3, padding=1),
        )

    def forward(self, x: Tensor) -> Tensor:
        return x + self.body(x)


class TextureEncoder(nn.Module):
    """Latent patch ``[P, 48, h, w]`` (h, w ≥ 4, typically 16) → L2-normalised key ``[P, key_dim]``.

    A small CNN: stem at full patch resolution, two stride-2 stages (16→8→4), then
    the key is a linear map of the per-channel spatial mean *and* standard deviation
    of the last feature map. The standard deviation is there because texture is a
    second-order statistic: two patches with the same mean colour but different grain
    must get different keys.
    """

    def __init__(self, config: TextureEncoderConfig | None = None):
        super().__init__()
        self.config = config = config or TextureEncoderConfig()
        w1, w2, w3 = config.widths
        self.trunk = nn.Sequential(
            nn.Conv2d(config.in_channels, w1, 3, padding=1),
            _ResBlock(w1),
            nn.Conv2d(w1, w2, 3, stride=2, padding=1),
            _ResBlock(w2),
            nn.Conv2d(w2, w3, 3, stride=2, padding=1),
            _ResBlock(w3),
            nn.GroupNorm(8, w3),
            nn.SiLU(),
        )
        self.head = nn.Linear(2 * w3, config.key_dim)

    def features(self, latent: Tensor) -> Tensor:
        """``[P, 48, h, w]`` → last feature map ``[P, C, ⌈h/4⌉, ⌈w/4⌉]``."""
        return self.trunk(latent)

    def forward(self, latent: Tensor) -> Tensor:
        """``[P, 48, h, w]`` (any float dtype) → unit-norm keys ``[P, key_dim]`` in the input's dtype."""
        return self.encode(latent)[0]

    def value_tokens(self, latent: Tensor) -> Tensor:
        """HR latent patches ``[N, 48, h, w]`` → RTM value tokens ``[N, g², C]`` (g = value_grid, row-major)."""
        return self.encode(latent)[1]

    def encode(self, latent: Tensor) -> tuple[Tensor, Tensor]:
        """Key and value tokens with one trunk pass: ``[N,48,h,w]`` → ``([N,key_dim], [N,g²,C])``."""
        if latent.device.type == "cpu" and not torch.is_grad_enabled():
            if latent.shape[0] > _CPU_CHUNK:
                # CPU inference: chunks of patches whose activations stay in cache (every
                # op here acts on each patch alone, so the result is the same).
                keys, values = zip(*(self.encode(c) for c in latent.split(_CPU_CHUNK)))
                return torch.cat(keys), torch.cat(values)
            # oneDNN's convolutions are faster channels-last (0.39 s -> 0.27 s for the 441
            # query patches of a 256² image with the chunking above, 1 thread).
            latent = latent.contiguous(memory_format=torch.channels_last)
        f = self.features(latent)
        flat = f.flatten(2)
        pooled = torch.cat([flat.mean(-1), flat.float().std(-1, unbiased=False).to(f.dtype)], dim=1)
        key = F.normalize(self.head(pooled), dim=-1)
        values = F.adaptive_avg_pool2d(f, self.config.value_grid).flatten(2).transpose(1, 2).contiguous()
        return key, values


# Patches per CPU inference chunk of `TextureEncoder.encode`: 64 × 48 × 16 × 16 fp32 is
# 3 MiB per activation (32-64 measured best, 512 1.4x slower).
_CPU_CHUNK = 64


def _fourier_features(x: Tensor, dim: int, max_freq: float = 32.0) -> Tensor:
    """Scalars ``[...]`` in about [−1, 1] → ``[..., dim]`` sin/cos features at log-spaced frequencies."""
    half = dim // 2
    freqs = torch.exp(torch.linspace(0.0, math.log(max_freq), half, device=x.device, dtype=torch.float32))
    ang = x.float()[..., None] * freqs * math.pi
    return torch.cat([torch.sin(ang), torch.cos(ang)], dim=-1)


class SimilarityAwareTextureEncoder(nn.Module):
    """Retrieved RTM entries and their similarities → prompt tokens for cross-attention.

    Inputs: ``values [P, K, n_tok, value_dim]`` (RTM value tokens of the top-K
    entries, any float dtype) and ``scores [P, K]`` (their cosine similarities to the
    query, in [−1, 1]). Output: ``[P, K·n_tok, dim]``.

    Each entry's similarity enters twice: a learned embedding of the score is *added*
    to the entry's tokens (so attention can tell a close reference from a far one),
    and a learned sigmoid *gate* of the score scales the projected value (so a poor
    match can be faded out before the DiT sees it). A learned per-rank and
    per-token-position embedding keeps entries and their spatial cells apart. One
    pre-norm self-attention layer then lets the K references exchange information.

    ``values=None`` (no memory, or retrieval dropped during training) gives the learned
    "no reference" tokens with similarity 0 in every slot, so the prompt shape does
    not depend on whether a memory is present.
    """

    def __init__(self, value_dim: int, dim: int, top_k: int = 4, n_tok: int = 4, heads: int = 4, sim_features: int = 32):
        super().__init__()
        self.value_dim, self.dim, self.top_k, self.n_tok, self.heads = value_dim, dim, top_k, n_tok, heads
        self.sim_features = sim_features
        self.value_norm = nn.LayerNorm(value_dim)
        self.value_proj = nn.Linear(value_dim, dim)
        self.empty_value = nn.Parameter(torch.zeros(n_tok, value_dim))
        self.sim_mlp = nn.Sequential(nn.Linear(sim_features, dim), nn.SiLU(), nn.Linear(dim, 2 * dim))
        self.rank_embed = nn.Parameter(torch.zeros(top_k, 1, dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, n_tok, dim))
        self.attn_norm = nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.attn_out = nn.Linear(dim, dim)
        self.mlp_norm = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(approximate="tanh"), nn.Linear(2 * dim, dim))
        self.out_norm = nn.LayerNorm(dim)
        nn.init.normal_(self.empty_value, std=0.02)
        nn.init.normal_(self.rank_embed, std=0.02)
        nn.init.normal_(self.pos_embed, std=0.02)
        # Gate starts at sigmoid(2) ≈ 0.88 for every similarity: references pass at init.
        nn.init.zeros_(self.sim_mlp[2].weight)
        with torch.no_grad():
            self.sim_mlp[2].bias.zero_()
            self.sim_mlp[2].bias[dim:].fill_(2.0)

    @property
    def num_tokens(self) -> int:
        """Prompt length K·n_tok."""
        return self.top_k * self.n_tok

    def forward(
        self, values: Tensor | None, scores: Tensor | None, batch: int | None = None, drop: Tensor | None = None
    ) -> Tensor:
        """``values [P,K,n_tok,value_dim]``, ``scores [P,K]`` → prompt ``[P, K·n_tok, dim]`` (parameter dtype).

        With ``values=None`` pass ``batch=P``; every slot gets the "no reference" tokens.
        ``drop [P]`` bool: rows to treat as "no reference" (retrieval dropout in training,
        so the model also works, and does not over-trust, when no good match exists).
        K may be smaller than ``top_k`` (fewer entries in a tiny memory); not larger.
        """
        wdtype = self.value_proj.weight.dtype
        if values is None:
            if batch is None:
                raise ValueError("batch is required when values is None")
            values = self.empty_value.to(wdtype).expand(batch, self.top_k, self.n_tok, self.value_dim)
            scores = torch.zeros(batch, self.top_k, device=values.device)
        P, K, n_tok, _ = values.shape
        if K > self.top_k or n_tok != self.n_tok or scores.shape != (P, K):
            raise ValueError(
                f"values {tuple(values.shape)} / scores {tuple(scores.shape)} do not fit "
                f"top_k={self.top_k}, n_tok={self.n_tok}"
            )
        if drop is not None:
            d = drop.to(device=values.device, dtype=torch.bool)
            values = torch.where(d[:, None, None, None], self.empty_value.to(wdtype), values.to(wdtype))
            scores = torch.where(d[:, None], torch.zeros((), device=scores.device), scores.float())
        tok = self.value_proj(self.value_norm(values.to(wdtype)))  # [P,K,n,d]
        sim = self.sim_mlp(_fourier_features(scores, self.sim_features).to(wdtype))  # [P,K,2d]
        sim_add, sim_gate = sim[..., None, : self.dim], sim[..., None, self.dim :]
        tok = torch.sigmoid(sim_gate) * tok + sim_add + self.rank_embed[:K] + self.pos_embed
        x = tok.reshape(P, K * n_tok, self.dim)

        h = self.attn_norm(x)
        q, k, v = self.qkv(h).view(P, -1, 3, self.heads, self.dim // self.heads).permute(2, 0, 3, 1, 4)
        a = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(P, -1, self.dim)
        x = x + self.attn_out(a)
        x = x + self.mlp(self.mlp_norm(x))
        return self.out_norm(x)


def save_texture_encoder(
    state: dict[str, Tensor], config: dict, path: str | os.PathLike, metadata: dict | None = None
) -> None:
    """Write texture-encoder weights ``state`` with the config and ``metadata`` in the file."""
    save_safetensors(path, state, format="patchscaler.TextureEncoder", config=config, metadata=metadata)


def load_texture_encoder(path: str | os.PathLike) -> TextureEncoder:
    """Read an encoder written by `save_texture_encoder` (fp32, eval mode, frozen)."""
    state, config, _ = read_safetensors(path, format="patchscaler.TextureEncoder")
    enc = TextureEncoder(TextureEncoderConfig.from_dict(config))
    enc.load_state_dict({k: v.float() for k, v in state.items()})
    return enc.eval().requires_grad_(False)
