"""Patch-DiT: shapes, adaLN-Zero identity at initialisation, determinism, save/load."""

import pytest
import torch

from patchscaler.models.dit import DiTBlock, PatchDiT, PatchDiTConfig, load_dit, save_dit

TINY = dict(width=64, depth=2, heads=2, value_dim=16, value_tokens=2, top_k=2)


def _perturb(model: torch.nn.Module, seed: int = 0) -> None:
    """Give every parameter random values so outputs are non-trivial (zero-init would hide bugs)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.05)


def _inputs(P: int, cfg: PatchDiTConfig, size: int = 16, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    y_t = torch.randn(P, 48, size, size, generator=g)
    y0 = torch.randn(P, 48, size, size, generator=g)
    t = torch.randint(0, 600, (P,), generator=g)
    values = torch.randn(P, cfg.top_k, cfg.value_tokens, cfg.value_dim, generator=g)
    scores = torch.rand(P, cfg.top_k, generator=g)
    return y_t, t, y0, values, scores


def test_block_is_identity_at_init():
    torch.manual_seed(0)
    blk = DiTBlock(64, 4)
    x, c, ctx = torch.randn(3, 64, 64), torch.randn(3, 64), torch.randn(3, 8, 64)
    assert torch.equal(blk(x, c, ctx), x)


def test_network_output_is_zero_at_init_and_shaped():
    cfg = PatchDiTConfig(**TINY)
    model = PatchDiT(cfg).eval()
    y_t, t, y0, values, scores = _inputs(3, cfg)
    with torch.no_grad():
        prompt = model.encode_prompt(values, scores)
        f = model.net(y_t, t, y0, prompt)
        out = model(y_t, t, y0, prompt)
    assert prompt.shape == (3, cfg.top_k * cfg.value_tokens, cfg.width)
    assert f.shape == out.shape == (3, 48, 16, 16)
    assert torch.equal(f, torch.zeros_like(f))
    plain = PatchDiT(PatchDiTConfig(**TINY, anchor_sigma=None)).eval()
    with torch.no_grad():
        assert torch.equal(plain(y_t, t, y0, prompt), torch.zeros_like(f))


@pytest.mark.parametrize("prediction", ["eps", "v"])
def test_preconditioning_closed_forms_match_direct_conversion(prediction):
    """ε̂/v̂ from the well-conditioned closed form equal the textbook conversion of
    x̂0 = anchor + c_out·F (float64), at every t including the ends."""
    cfg = PatchDiTConfig(**TINY, prediction=prediction, anchor_sigma=0.07)
    model = PatchDiT(cfg)
    g = torch.Generator().manual_seed(0)
    t = torch.tensor([0, 1, 75, 150, 350, 600, 999])
    P = t.numel()
    y_t, y0, f = (torch.randn(P, 48, 4, 4, generator=g) for _ in range(3))
    out = model.output_from_net(f, y_t, t, y0).double()
    a = model.alphas_cumprod[t].view(-1, 1, 1, 1)
    s2 = 0.07**2
    D = a * s2 + 1 - a
    x0 = y0.double() + s2 * a.sqrt() / D * (y_t.double() - a.sqrt() * y0.double()) + (s2 * (1 - a) / D).sqrt() * f.double()
    eps = (y_t.double() - a.sqrt() * x0) / (1 - a).sqrt()
    ref = eps if prediction == "eps" else a.sqrt() * eps - (1 - a).sqrt() * x0
    # Relative to the output's scale; the direct formula itself loses digits at t = 0.
    torch.testing.assert_close(out[1:], ref[1:], atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(out[:1], ref[:1], atol=2e-2, rtol=1e-2)
    assert torch.isfinite(out).all()


def test_anchor_is_y0_at_high_noise_and_y_t_at_low_noise():
    model = PatchDiT(PatchDiTConfig(**TINY, anchor_sigma=0.1))
    g = torch.Generator().manual_seed(0)
    y_t, y0 = torch.randn(2, 48, 4, 4, generator=g), torch.randn(2, 48, 4, 4, generator=g)
    anchor, c_out = model.anchor(y_t, torch.tensor([999, 0]), y0)
    torch.testing.assert_close(anchor[0], y0[0], atol=1e-4, rtol=0)
    a0 = model.alphas_cumprod[0].float()
    # At t = 0, 1 − ᾱ = 4e-5 ≪ σ² = 0.01: the anchor is within 0.5 % of y_t/√ᾱ.
    torch.testing.assert_close(anchor[1], y_t[1] / a0.sqrt(), atol=0.005 * (y_t[1] - y0[1]).abs().max().item(), rtol=0)
    assert c_out[1].item() < 1e-2 and c_out[0].item() == pytest.approx(0.1, rel=1e-3)


@pytest.mark.parametrize("anchor_sigma", [0.1, None])
@pytest.mark.parametrize("prediction", ["eps", "v"])
def test_net_target_gives_back_x0(anchor_sigma, prediction):
    """A network that outputs exactly its training target makes predict_x0 return x0."""
    cfg = PatchDiTConfig(**TINY, prediction=prediction, anchor_sigma=anchor_sigma)
    model = PatchDiT(cfg)
    g = torch.Generator().manual_seed(1)
    t = torch.tensor([20, 150, 600])
    x0, eps, y0 = (torch.randn(3, 48, 4, 4, generator=g) for _ in range(3))
    a = model.alphas_cumprod[t].view(-1, 1, 1, 1).float()
    y_t = a.sqrt() * x0 + (1 - a).sqrt() * eps
    target = model.net_target(x0, eps, y_t, t, y0)
    model.net = lambda *args: target  # noqa: E731  (stand-in for a perfect network)
    torch.testing.assert_close(model.predict_x0(y_t, t, y0, None), x0, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("size", [16, 8, 12])
def test_shapes_and_batch_independence(size):
    cfg = PatchDiTConfig(**TINY)
    model = PatchDiT(cfg).eval()
    _perturb(model)
    y_t, t, y0, values, scores = _inputs(4, cfg, size)
    with torch.no_grad():
        prompt = model.encode_prompt(values, scores)
        out = model(y_t, t, y0, prompt)
        again = model(y_t, t, y0, prompt)
        alone = model(y_t[2:3], t[2:3], y0[2:3], model.encode_prompt(values[2:3], scores[2:3]))
    assert out.shape == (4, 48, size, size)
    assert out.abs().max() > 0
    assert torch.equal(out, again)
    torch.testing.assert_close(out[2:3], alone, atol=1e-5, rtol=1e-4)


def test_each_patch_uses_its_own_timestep():
    cfg = PatchDiTConfig(**TINY)
    model = PatchDiT(cfg).eval()
    _perturb(model)
    y_t, t, y0, values, scores = _inputs(2, cfg)
    with torch.no_grad():
        prompt = model.encode_prompt(values, scores)
        a = model(y_t, torch.tensor([10, 500]), y0, prompt)
        b = model(y_t, torch.tensor([10, 20]), y0, prompt)
    torch.testing.assert_close(a[0], b[0])
    assert not torch.allclose(a[1], b[1])


def test_prompt_without_memory_and_gradients():
    cfg = PatchDiTConfig(**TINY)
    model = PatchDiT(cfg)
    _perturb(model)
    y_t, t, y0, _, _ = _inputs(2, cfg)
    out = model(y_t, t, y0, model.encode_prompt(None, None, batch=2))
    out.square().mean().backward()
    assert model.blocks[0].cross.kv.weight.grad is not None


def test_config_validation():
    with pytest.raises(ValueError):
        PatchDiTConfig(prediction="x0")
    with pytest.raises(ValueError):
        PatchDiTConfig(width=100, heads=3)


def test_save_load_roundtrip(tmp_path):
    cfg = PatchDiTConfig(**TINY, prediction="eps")
    model = PatchDiT(cfg).eval()
    _perturb(model)
    path = tmp_path / "dit.safetensors"
    save_dit(model, path, half=False, extra_metadata={"note": {"steps": 3}})
    loaded = load_dit(path)
    assert loaded.config == cfg and loaded.prediction == "eps"
    y_t, t, y0, values, scores = _inputs(2, cfg)
    with torch.no_grad():
        torch.testing.assert_close(
            loaded(y_t, t, y0, loaded.encode_prompt(values, scores)), model(y_t, t, y0, model.encode_prompt(values, scores))
        )


def test_half_precision_weights_keep_the_schedule_exact():
    model = PatchDiT(PatchDiTConfig(**TINY)).to(torch.bfloat16)
    assert model.alphas_cumprod.dtype == torch.float64
    y_t, t, y0, values, scores = _inputs(2, model.config)
    with torch.no_grad():
        out = model(y_t, torch.tensor([0, 5]), y0, model.encode_prompt(values, scores))
    assert out.dtype == torch.float32 and torch.isfinite(out).all()


def test_output_does_not_depend_on_the_batch():
    """A patch's output is the same alone, in a small batch or a large one, bit for bit (the
    per-patch conditioning Linear layers would otherwise take another CPU GEMM kernel for a
    handful of rows); band streaming and max_batch_patches rely on it."""
    from patchscaler.models.dit import PatchDiT, PatchDiTConfig

    torch.manual_seed(0)
    dit = PatchDiT(PatchDiTConfig(width=256, depth=1, heads=8, value_dim=16)).eval()
    with torch.no_grad():
        for p in dit.parameters():  # adaLN-Zero starts at zero: make every branch count
            p.normal_(0, 0.05)
        g = torch.Generator().manual_seed(1)
        y_t, y0 = torch.randn(40, 48, 16, 16, generator=g), torch.randn(40, 48, 16, 16, generator=g)
        t = torch.randint(0, 1000, (40,), generator=g)
        prompt = dit.encode_prompt(None, None, batch=40)
        full = dit(y_t, t, y0, prompt)
        for m in (1, 2, 5, 9, 11, 17):
            assert torch.equal(dit(y_t[:m], t[:m], y0[:m], prompt[:m]), full[:m]), m


# ------------------------------------------------------------- the inference path
# Without autograd `PatchDiT.net` runs `_net_inference`: the patch embedding as matmuls
# (y0's half optionally precomputed), the timestep conditioning once per distinct t,
# fused in-place residual updates, oneDNN's fused linear + GELU. The autograd path is the
# plain module code, so comparing the two checks the rearrangement.


def _both_paths(model, y_t, t, y0, prompt, **kw):
    with torch.enable_grad():
        ref = model(y_t, t, y0, prompt).detach()
    with torch.no_grad():
        fast = model(y_t, t, y0, prompt, **kw)
    return ref, fast


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("size", [(16, 16), (8, 12), (4, 4)])
@pytest.mark.parametrize("precond", [dict(), dict(anchor_sigma=None), dict(prediction="eps", anchor_sigma=0.05)])
def test_inference_path_equals_the_autograd_path(size, precond, dtype):
    cfg = PatchDiTConfig(**TINY, **precond)
    model = PatchDiT(cfg).eval()
    _perturb(model)
    model.to(dtype)
    g = torch.Generator().manual_seed(3)
    P = 7
    y_t, y0 = torch.randn(P, 48, *size, generator=g), torch.randn(P, 48, *size, generator=g)
    t = torch.tensor([599, 0, 599, 349, 999, 349, 599])  # repeated and distinct timesteps
    with torch.no_grad():
        prompt = model.encode_prompt(torch.randn(P, cfg.top_k, cfg.value_tokens, cfg.value_dim, generator=g),
                                     torch.rand(P, cfg.top_k, generator=g))
    ref, fast = _both_paths(model, y_t, t, y0, prompt)
    with torch.no_grad():
        cached = model(y_t, t, y0, prompt, y0_embed=model.embed_y0(y0))
    assert ref.abs().max() > 1  # non-trivial output
    tol = dict(atol=1e-5, rtol=1e-5) if dtype == torch.float32 else dict(atol=2e-2, rtol=2e-2)
    torch.testing.assert_close(fast, ref, **tol)
    torch.testing.assert_close(cached, ref, **tol)
    assert fast.dtype == torch.float32 and fast.shape == (P, 48, *size)


def test_inference_path_single_patch_and_fused_gelu_fallback(monkeypatch):
    import patchscaler.models.dit as dit_mod

    cfg = PatchDiTConfig(**TINY)
    model = PatchDiT(cfg).eval()
    _perturb(model, seed=5)
    y_t, t, y0, values, scores = _inputs(1, cfg)
    with torch.no_grad():
        prompt = model.encode_prompt(values, scores)
        fused = model(y_t, t, y0, prompt)
    monkeypatch.setattr(dit_mod, "_fused_linear_gelu_available", lambda dtype=None: False)
    ref, unfused = _both_paths(model, y_t, t, y0, prompt)
    torch.testing.assert_close(unfused, ref, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(fused, ref, atol=1e-5, rtol=1e-5)


def test_fused_linear_gelu_is_available_on_this_build():
    # The speed of the default CPU path depends on it (15 % of a DiT forward); if a
    # PyTorch upgrade removes the op, this says so instead of silently getting slower.
    from patchscaler.models.dit import _fused_linear_gelu_available

    assert _fused_linear_gelu_available(torch.float32)
    assert _fused_linear_gelu_available(torch.bfloat16) in (True, False)  # probes without raising


def test_denoiser_cpu_chunks_and_y0_embed_do_not_change_the_output():
    from patchscaler.sampling import DiTDenoiser

    cfg = PatchDiTConfig(**TINY)
    model = PatchDiT(cfg).eval()
    _perturb(model, seed=2)
    y_t, t, y0, _, _ = _inputs(5, cfg)
    whole = DiTDenoiser(model, cpu_chunk=64)
    cond = whole.condition(y0)
    torch.testing.assert_close(cond["y0_embed"], model.embed_y0(y0), atol=0, rtol=0)
    out = whole(y_t, t, cond)
    split = DiTDenoiser(model, cpu_chunk=2)(y_t, t, cond)  # chunks of 2, 2, 1
    no_embed = whole(y_t, t, {k: v for k, v in cond.items() if k != "y0_embed"})
    with torch.enable_grad():
        ref = model(y_t, t, y0, cond["prompt"]).detach()
    torch.testing.assert_close(split, out, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(no_embed, out, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)
