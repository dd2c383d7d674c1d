"""Patch-DiT: the denoiser of PatchScaler (paper §3.1, SPEC §1.3).

One latent patch at a time::

    concat(y0, y_t) [P, 96, 16, 16] --4×4 patchify--> 16 tokens of width d
        --depth × [adaLN-Zero self-attention, adaLN-Zero cross-attention to the
                   texture prompt, adaLN-Zero MLP]  (conditioning c = embed(t))
        --adaLN final layer, unpatchify--> F [P, 48, 16, 16]
        --preconditioning around y0--> ε̂ or v̂ (``prediction``) for the DDIM update

Every residual branch is multiplied by a gate regressed from ``c`` whose weights
start at zero (adaLN-Zero, Peebles & Xie 2023), so each block is the identity at
initialisation and the output layer gives F = 0: training starts from a stable,
exactly known function. Attention is `F.scaled_dot_product_attention` (flash /
memory-efficient kernels on GPU). Patches are independent samples: nothing in the
model mixes information across the batch, so patches of different groups, images and
timesteps batch together freely.

Preconditioning around y0 (``anchor_sigma`` = σ, the typical size of ``x0 − y0``).
The GRM's ``y0`` is already a good estimate of ``x0``; the DiT should only add the
missing detail. Model ``x0 = y0 + r`` with ``r ~ N(0, σ²)``; then the best linear
estimate from ``y_t`` and its error std are (with ``a = ᾱ_t``, ``D = aσ² + 1 − a``)::

    anchor = y0 + (σ²·√a / D)·(y_t − √a·y0),      c_out = σ·√((1 − a)/D)

and the network only predicts the normalised remainder: ``x̂0 = anchor + c_out·F``
(EDM-style preconditioning, Karras et al. 2022, centred on y0 with σ_data = σ). The
training target ``F* = (x0 − anchor)/c_out`` has unit scale at every t, and an
untrained or undertrained network (F ≈ 0) already returns the Gaussian-optimal blend
of y0 and y_t instead of garbage, which matters because the 1-step simple group
returns essentially this x̂0. ε̂ and v̂ are then the exact conversions of x̂0, written
in closed forms that stay well-conditioned as t → 0 (see `_output_coefficients`).
With the preconditioning, ε and v are only the transport format to the DDIM kernel
(both give the same DDIM update); ``anchor_sigma=None`` gives a plain DiT whose
output F *is* ε̂ or v̂.

The texture prompt (`SimilarityAwareTextureEncoder`, owned by the DiT because it is
trained with it) is computed once per patch with `encode_prompt` and reused at every
denoising step.
"""

from __future__ import annotations

import functools
import math
import os
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from patchscaler.checkpoints import read_safetensors, require, save_safetensors
from patchscaler.diffusion.schedule import NUM_TRAIN_TIMESTEPS, make_alphas_cumprod
from patchscaler.models.texture import SimilarityAwareTextureEncoder

__all__ = ["PatchDiTConfig", "PatchDiT", "DiTBlock", "load_dit", "save_dit"]


@dataclass
class PatchDiTConfig:
    """Architecture and output settings, stored with the weights.

    ``prediction``: "v" (default) or "eps", what `PatchDiT.forward` returns for the DDIM
    kernel. ``anchor_sigma``: σ of the preconditioning around y0 (module docstring;
    the training script measures it as the RMS of x0 − y0); None: plain DiT, F is the
    prediction. For a plain DiT v is the better choice: the x̂0 it implies,
    ``√a·y_t − √(1−a)·v̂``, has an error no larger than the v error at every t, whereas
    from ε the x̂0 error is the ε error times ``√((1−a)/a)``.
    ``value_dim``/``value_tokens``/``top_k`` must match the RTM the model is used with.
    """

    latent_channels: int = 48
    # Size: chosen by scripts/dit_cpu_budget.py (benchmarks/results/dit-cpu-budget.md) to fit the
    # CPU time bars. A 4×4 token is 16×16 HR pixels (the footprint of a DiT/2 token on an
    # 8× VAE latent); at equal CPU time it buys ~1.3× the FLOPs and ~4× the params of 2×2 tokens.
    patch_size: int = 4
    width: int = 256
    depth: int = 6
    heads: int = 8
    mlp_ratio: float = 4.0
    value_dim: int = 128
    value_tokens: int = 4
    top_k: int = 4
    prediction: str = "v"
    anchor_sigma: float | None = 0.1
    schedule: str = "cosine"
    num_train_timesteps: int = NUM_TRAIN_TIMESTEPS

    def __post_init__(self):
        if self.prediction not in ("eps", "v"):
            raise ValueError(f"prediction must be 'eps' or 'v', got {self.prediction!r}")
        if self.anchor_sigma is not None and not self.anchor_sigma > 0:
            raise ValueError(f"anchor_sigma must be > 0 or None, got {self.anchor_sigma}")
        if self.width % self.heads:
            raise ValueError(f"width {self.width} is not divisible by heads {self.heads}")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "PatchDiTConfig":
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})


# Batch invariance on the CPU: a Linear layer over a handful of rows (up to 10 with this
# PyTorch's CPU BLAS) takes another GEMM kernel, whose sums round differently, so a row's
# result would depend on how many rows share the call. Calls with fewer rows than this are
# padded (`pad_rows`) and the padding dropped after: the inference path's per-timestep
# conditioning and small chunks here, the texture and prompt encoders in `sampling.denoiser`.
MIN_GEMM_ROWS = 16


def pad_rows(v: Tensor, rows: int = MIN_GEMM_ROWS) -> Tensor:
    """``v`` with copies of its first row appended up to ``rows`` rows (``v`` itself if it has as many)."""
    n = v.shape[0]
    return v if n >= rows else torch.cat([v, v[:1].expand(rows - n, *v.shape[1:])])


def timestep_embedding(t: Tensor, dim: int, max_period: float = 10000.0) -> Tensor:
    """Timesteps ``[P]`` (int or float, in [0, T)) → sinusoidal features ``[P, dim]`` float32."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    ang = t.float()[:, None] * freqs[None]
    return torch.cat([torch.cos(ang), torch.sin(ang)], dim=-1)


def _sincos_pos_embed(dim: int, gh: int, gw: int) -> Tensor:
    """Fixed 2-D sin-cos position embedding ``[gh·gw, dim]`` (row-major grid), float32."""
    def one_axis(n: int, d: int) -> Tensor:
        omega = 1.0 / 10000 ** (torch.arange(d // 2, dtype=torch.float64) / (d / 2))
        ang = torch.arange(n, dtype=torch.float64)[:, None] * omega[None]
        return torch.cat([torch.sin(ang), torch.cos(ang)], dim=1)

    eh = one_axis(gh, dim // 2)[:, None, :].expand(gh, gw, dim // 2)
    ew = one_axis(gw, dim // 2)[None, :, :].expand(gh, gw, dim // 2)
    return torch.cat([eh, ew], dim=-1).reshape(gh * gw, dim).float()


def _modulate(x: Tensor, shift: Tensor, scale: Tensor) -> Tensor:
    return x * (1 + scale[:, None]) + shift[:, None]


@functools.cache
def _fused_linear_gelu_available(dtype: torch.dtype = torch.float32) -> bool:
    """Whether oneDNN's fused linear + tanh-GELU (``torch.ops.mkldnn._linear_pointwise``, the
    op PyTorch's own compiler emits for this pattern) exists in this PyTorch build for
    ``dtype`` on the CPU and matches the unfused layers on a probe. It is not public API:
    any failure means the unfused path, which computes the same function."""
    try:
        g = torch.Generator().manual_seed(0)
        x, w, b = (torch.randn(s, generator=g).to(dtype) for s in ((3, 5, 16), (24, 16), (24,)))
        fused = torch.ops.mkldnn._linear_pointwise(x, w, b, "gelu", [], "tanh")
        unfused = F.gelu(F.linear(x.float(), w.float(), b.float()), approximate="tanh")
        tol = 1e-5 if dtype == torch.float32 else 3e-2  # bf16 rounds the product's output
        return fused.dtype == dtype and bool(torch.allclose(fused.float(), unfused, atol=tol, rtol=tol))
    except Exception:  # op missing (no mkldnn, no bf16 support) or a changed signature
        return False


class _Attention(nn.Module):
    """Multi-head attention of ``x [P,N,d]`` over ``ctx [P,L,d]`` (``ctx=None``: self-attention)."""

    def __init__(self, dim: int, heads: int, cross: bool):
        super().__init__()
        self.heads = heads
        self.cross = cross
        if cross:
            self.q = nn.Linear(dim, dim)
            self.kv = nn.Linear(dim, 2 * dim)
        else:
            self.qkv = nn.Linear(dim, 3 * dim)
        self.out = nn.Linear(dim, dim)

    def forward(self, x: Tensor, ctx: Tensor | None = None) -> Tensor:
        P, N, d = x.shape
        hd = d // self.heads
        if self.cross:
            q = self.q(x).view(P, N, self.heads, hd).transpose(1, 2)
            k, v = self.kv(ctx).view(P, ctx.shape[1], 2, self.heads, hd).permute(2, 0, 3, 1, 4)
        else:
            q, k, v = self.qkv(x).view(P, N, 3, self.heads, hd).permute(2, 0, 3, 1, 4)
        a = F.scaled_dot_product_attention(q, k, v)
        return self.out(a.transpose(1, 2).reshape(P, N, d))


class DiTBlock(nn.Module):
    """adaLN-Zero transformer block: ``x [P,N,d]``, ``c [P,d]``, ``ctx [P,L,d]`` → ``[P,N,d]``.

    Three residual branches (self-attention, cross-attention to the prompt, MLP), each
    with its LayerNorm shifted/scaled and its output gated by vectors regressed from
    ``c``. The regression layer is zero-initialised, so every gate is 0 and the block
    is exactly the identity at initialisation.
    """

    def __init__(self, dim: int, heads: int, mlp_ratio: float = 4.0):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.attn = _Attention(dim, heads, cross=False)
        self.norm2 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.cross = _Attention(dim, heads, cross=True)
        self.norm3 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        hidden = int(dim * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(approximate="tanh"), nn.Linear(hidden, dim))
        self.ada = nn.Sequential(nn.SiLU(), nn.Linear(dim, 9 * dim))
        nn.init.zeros_(self.ada[1].weight)
        nn.init.zeros_(self.ada[1].bias)

    def forward(self, x: Tensor, c: Tensor, ctx: Tensor) -> Tensor:
        s1, m1, g1, s2, m2, g2, s3, m3, g3 = self.ada(c).chunk(9, dim=1)
        x = x + g1[:, None] * self.attn(_modulate(self.norm1(x), s1, m1))
        x = x + g2[:, None] * self.cross(_modulate(self.norm2(x), s2, m2), ctx)
        x = x + g3[:, None] * self.mlp(_modulate(self.norm3(x), s3, m3))
        return x

    def forward_inference(self, x: Tensor, mod: Tensor, ctx: Tensor) -> Tensor:
        """`forward` without autograd, given the modulation ``mod [P, 9, 1, d]`` already
        laid out by `PatchDiT` (rows shift, 1 + scale, gate per branch; see `_inference_mods`).

        Same math as `forward`; the residual updates ``x`` in place with one fused
        ``addcmul_`` per branch, and each modulation is one ``addcmul`` (x·(1+scale) +
        shift in one pass instead of three). ``x`` must be a tensor the caller owns.
        """
        d = x.shape[-1]
        x.addcmul_(mod[:, 2], self.attn(torch.addcmul(mod[:, 0], F.layer_norm(x, (d,), eps=1e-6), mod[:, 1])))
        x.addcmul_(mod[:, 5], self.cross(torch.addcmul(mod[:, 3], F.layer_norm(x, (d,), eps=1e-6), mod[:, 4]), ctx))
        x.addcmul_(mod[:, 8], self._mlp_inference(torch.addcmul(mod[:, 6], F.layer_norm(x, (d,), eps=1e-6), mod[:, 7])))
        return x

    def _mlp_inference(self, x: Tensor) -> Tensor:
        """`self.mlp(x)`, on the CPU in float32 with the first linear layer, its bias and the
        tanh GELU fused in one oneDNN call (`_fused_linear_gelu`): ATen's tanh GELU alone
        took 15 % of a DiT forward at 1 thread, and the unfused bias add copies the
        4×-wide activation once more. bf16 too (2× faster there: the GELU reads the fp32
        accumulator instead of a bf16-rounded copy)."""
        fc1, fc2 = self.mlp[0], self.mlp[2]
        if x.device.type == "cpu" and x.dtype in (torch.float32, torch.bfloat16) and _fused_linear_gelu_available(x.dtype):
            h = torch.ops.mkldnn._linear_pointwise(x, fc1.weight, fc1.bias, "gelu", [], "tanh")
        else:
            h = F.gelu(fc1(x), approximate="tanh")
        return fc2(h)


class PatchDiT(nn.Module):
    """The Patch-DiT denoiser with its texture-prompt encoder.

    ``forward(y_t, t, y0, prompt)``:
      * ``y_t``, ``y0``: ``[P, C, h, w]`` latent patches (C = latent_channels = 48, h and w
        multiples of patch_size; 16×16 by default), any float dtype;
      * ``t``: ``[P]`` integer timesteps in [0, num_train_timesteps);
      * ``prompt``: ``[P, L, width]`` from `encode_prompt` (L = top_k·value_tokens).
    Returns ``[P, C, h, w]`` float32: ε̂ or v̂ according to ``config.prediction``.
    `net` is the raw network (F); `net_target` its training target; `predict_x0` the x̂0.
    """

    def __init__(self, config: PatchDiTConfig | None = None):
        super().__init__()
        self.config = cfg = config or PatchDiTConfig()
        d, p, C = cfg.width, cfg.patch_size, cfg.latent_channels
        self.patch_embed = nn.Conv2d(2 * C, d, kernel_size=p, stride=p)
        self.t_embed = nn.Sequential(nn.Linear(256, d), nn.SiLU(), nn.Linear(d, d))
        self.prompt_encoder = SimilarityAwareTextureEncoder(
            cfg.value_dim, d, top_k=cfg.top_k, n_tok=cfg.value_tokens, heads=cfg.heads
        )
        self.blocks = nn.ModuleList(DiTBlock(d, cfg.heads, cfg.mlp_ratio) for _ in range(cfg.depth))
        self.final_norm = nn.LayerNorm(d, elementwise_affine=False, eps=1e-6)
        self.final_ada = nn.Sequential(nn.SiLU(), nn.Linear(d, 2 * d))
        self.final = nn.Linear(d, p * p * C)
        self._pos_cache: dict[tuple[int, int], Tensor] = {}
        # The ᾱ table is not a buffer: `model.to(torch.float16)` would round it, and
        # 1 − ᾱ near t = 0 (4e-5) does not survive fp16. It stays float64, per device.
        self._alphas_cumprod = make_alphas_cumprod(cfg.schedule, cfg.num_train_timesteps, torch.float64)
        self._alphas_by_device: dict[torch.device, Tensor] = {}
        self._init_weights()

    def _init_weights(self) -> None:
        # As DiT: xavier for the transformer's linear layers, the patch embedding like a
        # linear layer, small normal for the timestep MLP, zeros for every adaLN regression
        # and the output layer (the "Zero" in adaLN-Zero).
        for m in self.blocks.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)
        w = self.patch_embed.weight
        nn.init.xavier_uniform_(w.view(w.shape[0], -1))
        nn.init.zeros_(self.patch_embed.bias)
        for m in self.t_embed:
            if isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)
        for blk in self.blocks:
            nn.init.zeros_(blk.ada[1].weight)
            nn.init.zeros_(blk.ada[1].bias)
        for m in (self.final_ada[1], self.final):
            nn.init.zeros_(m.weight)
            nn.init.zeros_(m.bias)

    @property
    def prediction(self) -> str:
        return self.config.prediction

    def _pos_embed(self, gh: int, gw: int, device: torch.device, dtype: torch.dtype) -> Tensor:
        table = self._pos_cache.get((gh, gw))
        if table is None:
            # setdefault: threads sharing the model that race here all use the first table stored.
            table = self._pos_cache.setdefault((gh, gw), _sincos_pos_embed(self.config.width, gh, gw))
        return table.to(device=device, dtype=dtype)

    def encode_prompt(
        self, values: Tensor | None, scores: Tensor | None, batch: int | None = None, drop: Tensor | None = None
    ) -> Tensor:
        """RTM ``values [P,K,n_tok,value_dim]`` + ``scores [P,K]`` → prompt ``[P, L, width]``.

        ``values=None`` (no memory) needs ``batch=P`` and gives the learned "no reference"
        prompt; ``drop [P]`` bool gives it to selected rows (retrieval dropout in training).
        """
        return self.prompt_encoder(values, scores, batch=batch, drop=drop)

    def _patchify(self, y: Tensor) -> Tensor:
        """``[P, C, h, w]`` → ``[P, gh·gw, C·p·p]`` (parameter dtype): the inputs of the
        patch embedding's stride-p convolution as rows, in its weight's (C, p, p) order."""
        P, C, h, w = y.shape
        p = self.config.patch_size
        y = y.to(self.patch_embed.weight.dtype).view(P, C, h // p, p, w // p, p)
        return y.permute(0, 2, 4, 1, 3, 5).reshape(P, (h // p) * (w // p), C * p * p)

    def _embed_weights(self) -> tuple[Tensor, Tensor]:
        """The patch embedding as two matrices ``[d, C·p·p]``: the y0 half and the y_t half."""
        w = self.patch_embed.weight  # [d, 2C, p, p]; input channels are cat([y0, y_t])
        C = self.config.latent_channels
        return w[:, :C].reshape(w.shape[0], -1), w[:, C:].reshape(w.shape[0], -1)

    def embed_y0(self, y0: Tensor) -> Tensor:
        """The part of the token embedding that depends on ``y0 [P, C, h, w]`` only: y0's half
        of the patch embedding, its bias and the position embedding, ``[P, gh·gw, width]``
        (parameter dtype). ``net(..., y0_embed=embed_y0(y0))`` then skips it at every step;
        a sampler computes it once per patch (`patchscaler.sampling.DiTDenoiser.condition`)."""
        p = self.config.patch_size
        w0, _ = self._embed_weights()
        x = F.linear(self._patchify(y0), w0, self.patch_embed.bias)
        return x.add_(self._pos_embed(y0.shape[2] // p, y0.shape[3] // p, x.device, x.dtype))

    def _inference_mods(self, t: Tensor, dtype: torch.dtype) -> tuple[Tensor, list[Tensor], Tensor]:
        """Timestep conditioning for `_net_inference`: ``(c [U, d], per-block mods [P, 9, 1, d],
        final (shift, 1 + scale) [P, 2, 1, d])``.

        c depends on t alone, and a chunk holds patches of a few timesteps (one per group
        at a loop iteration), so on the CPU the timestep MLP and every adaLN regression run
        once per distinct t (U rows) and are then gathered per patch. On other devices
        ``torch.unique`` would read back from the device, so there U = P.
        """
        if t.device.type == "cpu":
            t_u, inverse = torch.unique(t, return_inverse=True)
        else:
            t_u, inverse = t, None
        U = t_u.shape[0]
        t_u = pad_rows(t_u)  # MIN_GEMM_ROWS: not depending on which timesteps share the chunk
        c = self.t_embed(timestep_embedding(t_u, 256).to(dtype))
        c_act = F.silu(c)  # each ada is Sequential(SiLU, Linear): the SiLU is shared

        def per_patch(lin: nn.Linear, n: int) -> Tensor:
            # Rows (shift, scale, gate) per branch, or (shift, scale) for the final layer.
            m = F.linear(c_act, lin.weight, lin.bias).view(-1, n, 1, c.shape[1])  # [U, n, 1, d]
            m[:, 1 :: (3 if n == 9 else 2)].add_(1)  # scale → 1 + scale
            return m[:U] if inverse is None else m[inverse]

        mods = [per_patch(blk.ada[1], 9) for blk in self.blocks]
        return c[:U], mods, per_patch(self.final_ada[1], 2)

    def _net_inference(self, y_t: Tensor, t: Tensor, y0: Tensor, prompt: Tensor, y0_embed: Tensor | None) -> Tensor:
        """`net` without autograd: the same math arranged for speed (see `net`)."""
        P = y_t.shape[0]
        if P < MIN_GEMM_ROWS:
            # Per-patch rows (the prompt's keys/values: a few tokens a patch) would take the
            # small-row GEMM kernel: pad the chunk, so a patch's output does not depend on it.
            out = self._net_inference(
                pad_rows(y_t), pad_rows(t), pad_rows(y0), pad_rows(prompt),
                None if y0_embed is None else pad_rows(y0_embed),
            )
            return out[:P]
        cfg = self.config
        P, C, h, w = y_t.shape
        p = cfg.patch_size
        gh, gw = h // p, w // p
        dtype = self.patch_embed.weight.dtype
        if y0_embed is None:
            y0_embed = self.embed_y0(y0)
        _, w_t = self._embed_weights()
        # x = W_t·patches(y_t) + (W_0·patches(y0) + b + pos): the stride-p convolution as
        # one matmul, with y0's half added as the addmm's bias term.
        n_tok, d = gh * gw, cfg.width
        x = torch.addmm(y0_embed.to(dtype).reshape(P * n_tok, d), self._patchify(y_t).view(P * n_tok, -1), w_t.t())
        x = x.view(P, n_tok, d)
        _, mods, final = self._inference_mods(t.to(x.device), dtype)
        prompt = prompt.to(dtype)
        for blk, mod in zip(self.blocks, mods):
            x = blk.forward_inference(x, mod, prompt)
        x = torch.addcmul(final[:, 0], F.layer_norm(x, (cfg.width,), eps=1e-6), final[:, 1])
        x = self.final(x)  # [P, gh·gw, p·p·C]
        x = x.view(P, gh, gw, p, p, C).permute(0, 5, 1, 3, 2, 4)
        return x.reshape(P, C, h, w)

    def net(self, y_t: Tensor, t: Tensor, y0: Tensor, prompt: Tensor, y0_embed: Tensor | None = None) -> Tensor:
        """The raw network output F ``[P, C, h, w]`` (parameter dtype); see the class docstring.

        ``y0_embed``: `embed_y0` of ``y0``, if the caller has it (inference only; it is
        computed here otherwise). Without autograd this runs `_net_inference`, the same
        function with the patch embedding as matmuls, the timestep conditioning once per
        distinct t and fused in-place residual updates (equal to the autograd path up to
        float rounding, ~1e-6; tests/test_dit.py).
        """
        cfg = self.config
        P, C, h, w = y_t.shape
        p = cfg.patch_size
        if y0.shape != y_t.shape or C != cfg.latent_channels or h % p or w % p:
            raise ValueError(f"y_t {tuple(y_t.shape)} / y0 {tuple(y0.shape)} do not fit {cfg}")
        if not torch.is_grad_enabled():
            return self._net_inference(y_t, t, y0, prompt, y0_embed)
        gh, gw = h // p, w // p
        dtype = self.patch_embed.weight.dtype
        x = self.patch_embed(torch.cat([y0, y_t], dim=1).to(dtype))  # [P,d,gh,gw]
        x = x.flatten(2).transpose(1, 2) + self._pos_embed(gh, gw, x.device, dtype)
        # (Batch invariance, `MIN_GEMM_ROWS`, is the inference path's: training batches
        # need no padding.)
        c = self.t_embed(timestep_embedding(t.to(x.device), 256).to(dtype))
        prompt = prompt.to(dtype)
        for blk in self.blocks:
            x = blk(x, c, prompt)
        shift, scale = self.final_ada(c).chunk(2, dim=1)
        x = self.final(_modulate(self.final_norm(x), shift, scale))  # [P, gh·gw, p·p·C]
        x = x.view(P, gh, gw, p, p, C).permute(0, 5, 1, 3, 2, 4)
        return x.reshape(P, C, h, w)

    @property
    def alphas_cumprod(self) -> Tensor:
        """The schedule's ᾱ table ``[num_train_timesteps]`` float64 (CPU)."""
        return self._alphas_cumprod

    def _abar(self, t: Tensor) -> Tensor:
        """ᾱ at timesteps ``t [P]`` → ``[P,1,1,1]`` float64 on t's device."""
        table = self._alphas_by_device.get(t.device)
        if table is None:  # setdefault: safe when threads sharing the model race here
            table = self._alphas_by_device.setdefault(t.device, self._alphas_cumprod.to(t.device))
        return table[t.long()].view(-1, 1, 1, 1)

    def _output_coefficients(self, t: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Per-patch ``(cy, c0, cf)`` ``[P,1,1,1]`` float32 with prediction = cy·y_t + c0·y0 + cf·F.

        Derived by substituting x̂0 = anchor + c_out·F into ε = (y_t − √a·x̂0)/√(1−a) and
        v = √a·ε − √(1−a)·x̂0 and cancelling √(1−a) by hand, so no coefficient divides by
        a vanishing quantity (computed in float64).
        """
        a = self._abar(t)
        s2 = self.config.anchor_sigma**2
        D = a * s2 + 1 - a
        r = (1 - a).sqrt() / D
        if self.config.prediction == "eps":
            cy, c0, cf = r, -a.sqrt() * r, -(a * s2 / D).sqrt()
        else:
            cy, c0, cf = a.sqrt() * (1 - s2) * r, -r, -(s2 / D).sqrt()
        return cy.float(), c0.float(), cf.float()

    def anchor(self, y_t: Tensor, t: Tensor, y0: Tensor) -> tuple[Tensor, Tensor]:
        """``(anchor [P,C,h,w], c_out [P,1,1,1])`` float32 of the preconditioning (needs anchor_sigma)."""
        a = self._abar(t)
        s2 = self.config.anchor_sigma**2
        D = a * s2 + 1 - a
        k = (s2 * a.sqrt() / D).float()
        c_out = (s2 * (1 - a) / D).sqrt().float()
        y0f = y0.float()
        return y0f + k * (y_t.float() - a.sqrt().float() * y0f), c_out

    def net_target(self, x0: Tensor, eps: Tensor, y_t: Tensor, t: Tensor, y0: Tensor) -> Tensor:
        """What `net` is trained to output for ``y_t = √a·x0 + √(1−a)·eps``: F* = (x0 − anchor)/c_out,
        or ε / v for a plain DiT. float32 ``[P,C,h,w]``."""
        if self.config.anchor_sigma is None:
            a = self._abar(t).float()
            return eps.float() if self.config.prediction == "eps" else a.sqrt() * eps - (1 - a).sqrt() * x0
        anchor, c_out = self.anchor(y_t, t, y0)
        return (x0.float() - anchor) / c_out

    def output_from_net(self, f: Tensor, y_t: Tensor, t: Tensor, y0: Tensor) -> Tensor:
        """Network output F → ε̂ or v̂ (float32)."""
        if self.config.anchor_sigma is None:
            return f.float()
        cy, c0, cf = self._output_coefficients(t)
        # (cy·y_t + c0·y0) + cf·F, each "+ c·a" one fused pass over the fresh result.
        return (cy * y_t.float()).addcmul_(c0, y0.float()).addcmul_(cf, f.float())

    def predict_x0(self, y_t: Tensor, t: Tensor, y0: Tensor, prompt: Tensor) -> Tensor:
        """x̂0 ``[P,C,h,w]`` float32 (for evaluation; sampling goes through `forward`)."""
        f = self.net(y_t, t, y0, prompt)
        if self.config.anchor_sigma is not None:
            anchor, c_out = self.anchor(y_t, t, y0)
            return anchor + c_out * f.float()
        a = self._abar(t).float()
        m = f.float()
        if self.config.prediction == "eps":
            return (y_t.float() - (1 - a).sqrt() * m) / a.sqrt()
        return a.sqrt() * y_t.float() - (1 - a).sqrt() * m

    def forward(self, y_t: Tensor, t: Tensor, y0: Tensor, prompt: Tensor, y0_embed: Tensor | None = None) -> Tensor:
        return self.output_from_net(self.net(y_t, t, y0, prompt, y0_embed), y_t, t, y0)


def save_dit(model: PatchDiT, path: str | os.PathLike, extra_metadata: dict | None = None, half: bool = True) -> None:
    """Write the model's weights (fp16 if ``half``) and config (JSON in the metadata) as safetensors."""
    sd = {k: (v.half() if half and v.is_floating_point() else v) for k, v in model.state_dict().items()}
    save_safetensors(path, sd, format="patchscaler.PatchDiT", config=model.config.to_dict(), metadata=extra_metadata)


def load_dit(
    path: str | os.PathLike | None = None,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
    *,
    model: str | None = None,
) -> PatchDiT:
    """Load a `PatchDiT` saved by `save_dit` (default: model set ``model``'s ``dit_x4.safetensors``), in eval mode."""
    path = Path(path) if path is not None else require("dit", model)
    if not path.is_file():
        raise FileNotFoundError(
            f"Patch-DiT weights not found at {path}; train them with `python -m patchscaler.train.dit`"
        )
    state, config, _ = read_safetensors(path, format="patchscaler.PatchDiT")
    dit = PatchDiT(PatchDiTConfig.from_dict(config))
    dit.load_state_dict({k: v.float() for k, v in state.items()})
    return dit.to(device=device, dtype=dtype).eval()
