"""GRM network, its loss, and the shipped-weights loader."""

from __future__ import annotations

import math

import pytest
import torch

from patchscaler.inference.codec import PixelUnshuffleCodec
from patchscaler.data.resize import bicubic_upscale
from patchscaler.checkpoints import weights_file
from patchscaler.models.grm import GRM, GRMConfig, load_grm
from patchscaler.models.losses import grm_loss
from helpers import noise_photos, run_gloo_ranks

TINY = GRMConfig(channels=8, blocks=2, expand=2, conf_channels=4)


@pytest.mark.parametrize("hw", [(1, 1), (1, 5), (7, 3), (16, 16), (13, 29)])
def test_shapes_and_confidence_range(hw):
    torch.manual_seed(0)
    model = GRM(TINY).eval()
    lr = torch.rand(2, 3, *hw)
    with torch.no_grad():
        y0, conf = model(lr)
    assert y0.shape == (2, 48, *hw) and y0.dtype == torch.float32
    assert conf.shape == (2, 1, *hw)
    assert torch.all(conf > 0) and torch.all(conf < 1)
    assert model.upscale(lr).shape == (2, 3, 4 * hw[0], 4 * hw[1])


def test_initial_model_is_bicubic():
    # The residual head starts at zero, so the untrained GRM is MATLAB bicubic.
    model = GRM(TINY).eval()
    lr = torch.rand(1, 3, 9, 11)
    with torch.no_grad():
        y0, _ = model(lr)
    expect = PixelUnshuffleCodec(4).encode(bicubic_upscale(lr, 4))
    torch.testing.assert_close(y0, expect, atol=1e-6, rtol=0)


def test_loss_hand_computed():
    # One latent pixel with 2 channels: errors (0.1, -0.3) -> L1 = 0.2, e² = (0.01 + 0.09)/2 = 0.05.
    y0 = torch.tensor([0.1, -0.3]).view(1, 2, 1, 1)
    x0 = torch.zeros(1, 2, 1, 1)
    conf = torch.tensor(0.25).view(1, 1, 1, 1)
    lam, eta = 2.0, 0.01
    loss, parts = grm_loss(y0, x0, conf, lam=lam, eta=eta)
    expect = 0.2 + lam * (0.25 * 0.05 - eta * math.log(0.25))
    assert loss.item() == pytest.approx(expect, rel=1e-6)
    assert parts["l1"] == pytest.approx(0.2, rel=1e-6)
    assert parts["mse"] == pytest.approx(0.05, rel=1e-6)


def test_loss_optimum_confidence_is_eta_over_mse():
    # d/dC (C e² − η log C) = 0 at C = η / e²: the confidence is an inverse-MSE predictor.
    e2, eta = 0.04, 0.002
    logit = torch.zeros(1, 1, 1, 1, requires_grad=True)
    y0 = torch.full((1, 4, 1, 1), math.sqrt(e2))
    opt = torch.optim.Adam([logit], lr=0.05)
    for _ in range(2000):
        loss, _ = grm_loss(y0, torch.zeros_like(y0), torch.sigmoid(logit), lam=1.0, eta=eta)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert torch.sigmoid(logit).item() == pytest.approx(eta / e2, rel=1e-2)


def test_loss_gradient_finite():
    torch.manual_seed(0)
    model = GRM(TINY)
    lr = torch.rand(2, 3, 8, 8)
    x0 = PixelUnshuffleCodec(4).encode(torch.rand(2, 3, 32, 32))
    y0, conf = model(lr)
    loss, _ = grm_loss(y0, x0, conf)
    loss.backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
    # Confidence never trains the trunk (detached features), L1 trains it.
    assert model.conf[0].weight.grad.abs().sum() > 0


def test_bf16_autocast_forward():
    model = GRM(TINY)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y0, conf = model(torch.rand(1, 3, 6, 6))
    assert y0.dtype == torch.float32 and conf.dtype == torch.float32


def _random_grm(dtype=torch.float32) -> GRM:
    """A GRM whose every weight is random (the initial tail is zero, which would hide the body)."""
    torch.manual_seed(1)
    model = GRM(GRMConfig(channels=16, blocks=2, expand=4, conf_channels=8))
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.15)
    return model.to(dtype).eval()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("shape", [(1, 67, 45), (3, 9, 13), (1, 1, 1)])
def test_inference_strip_path_equals_the_training_path(shape, threads, dtype, monkeypatch):
    # CPU inference (no grad) runs channels-last with the 1×1 convolutions as strip
    # matmuls (`WideBlock._forward_strips`); with grad on, the plain module path runs.
    # Same math: equal up to float rounding. 67·45 pixels is more than one 2048 strip
    # and not a multiple of it; a batch of 3 puts strips across image boundaries.
    import patchscaler.models.grm as grm_mod

    model = _random_grm(dtype)
    lr = torch.rand(shape[0], 3, *shape[1:]).to(dtype)
    calls = []
    real = grm_mod.WideBlock._forward_strips
    monkeypatch.setattr(grm_mod.WideBlock, "_forward_strips", lambda self, x: calls.append(1) or real(self, x))
    old_threads = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        y_ref, c_ref = model(lr)  # grad enabled: the module path
        assert not calls
        with torch.no_grad():
            y, c = model(lr)
    finally:
        torch.set_num_threads(old_threads)
    assert len(calls) == 2  # both blocks took the strip path
    tol = dict(atol=1e-5, rtol=1e-5) if dtype == torch.float32 else dict(atol=2e-2, rtol=2e-2)
    torch.testing.assert_close(y, y_ref.detach(), **tol)
    torch.testing.assert_close(c, c_ref.detach(), **tol)
    assert y.is_contiguous() and c.is_contiguous()


def test_load_grm_shipped_weights():
    if not weights_file("grm").is_file():
        pytest.skip(f"no exported GRM weights at {weights_file('grm')}")
    model = load_grm(4)
    assert load_grm(4) is model  # cached
    assert not model.training
    lr = torch.rand(1, 3, 5, 7)
    with torch.no_grad():
        y0, conf = model(lr)
    assert y0.shape == (1, 48, 5, 7) and torch.all((conf > 0) & (conf < 1))
    sr = model.upscale(lr)
    assert sr.shape == (1, 3, 20, 28) and sr.min() >= 0 and sr.max() <= 1


def _train_args(data, out, *extra):
    from patchscaler.train.grm import parse_args

    return parse_args(
        ["--data", str(data), "--out", str(out), "--val-sets", "", "--channels", "8", "--blocks", "1",
         "--expand", "2", "--batch", "2", "--lr-patch", "8", "--warmup", "2", "--total-steps", "6",
         "--threads", "1", "--log-every", "1", "--cache", str(out / "pool.pt"), *extra]
    )


def test_training_resume_is_exact(tmp_path):
    from patchscaler.train.grm import train

    data = noise_photos(tmp_path / "data", 2, seed=0)
    straight, split = tmp_path / "straight", tmp_path / "split"
    straight.mkdir()
    split.mkdir()
    train(_train_args(data, straight, "--stop-at", "4"))
    train(_train_args(data, split, "--stop-at", "2"))
    train(_train_args(data, split, "--stop-at", "4", "--resume"))
    a = torch.load(straight / "last.pt", weights_only=False)
    b = torch.load(split / "last.pt", weights_only=False)
    assert a["step"] == b["step"] == 4
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k
        assert torch.equal(a["ema"][k], b["ema"][k]), k


def test_resume_keeps_the_runs_schedule_unless_given_again(tmp_path):
    """A plain --resume continues with the run's learning rate, not the parser's default;
    a value given again (even one equal to the default) replaces it."""
    from patchscaler.train.grm import parse_args, train

    data = noise_photos(tmp_path / "data", 2, seed=0)
    out = tmp_path / "run"
    out.mkdir()
    train(_train_args(data, out, "--stop-at", "2", "--lr", "1e-4", "--feat-weight", "0"))
    default_lr = parse_args([]).lr
    assert default_lr != 1e-4
    train(_train_args(data, out, "--stop-at", "3", "--resume"))
    assert torch.load(out / "last.pt", weights_only=False)["args"]["lr"] == 1e-4
    train(_train_args(data, out, "--stop-at", "4", "--resume", "--lr", str(default_lr)))
    assert torch.load(out / "last.pt", weights_only=False)["args"]["lr"] == default_lr
    assert "resume" in parse_args(["--resume"]).given and "lr" not in parse_args(["--resume"]).given


def test_training_on_real_degradations_from_init(tmp_path):
    """--degradation real --init: starts from given weights, trains on the degraded stream, resumes exactly."""
    from patchscaler.train.grm import train

    data = noise_photos(tmp_path / "data", 2, seed=1)
    base = tmp_path / "base"
    base.mkdir()
    train(_train_args(data, base, "--stop-at", "2"))
    init = base / "last.pt"
    runs = {}
    for name, legs in {"straight": [["--stop-at", "3"]], "split": [["--stop-at", "2"], ["--stop-at", "3", "--resume"]]}.items():
        out = tmp_path / name
        out.mkdir()
        for leg in legs:
            train(_train_args(data, out, "--degradation", "real", "--init", str(init), "--workers", "0", *leg))
        runs[name] = torch.load(out / "last.pt", weights_only=False)
    a, b = runs["straight"], runs["split"]
    assert a["step"] == b["step"] == 3 and a["args"]["degradation"] == "real"
    start = torch.load(init, weights_only=False)["ema"]
    assert any(not torch.equal(a["model"][k], start[k]) for k in a["model"])
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k


def _ddp_rank(rank, data, out):
    from pathlib import Path

    from patchscaler.train.grm import train

    model = train(_train_args(Path(data), Path(out), "--stop-at", "3", "--batch", "4", "--no-bf16"))
    torch.save(model.state_dict(), Path(out) / f"rank{rank}.pt")


def test_ddp_two_gloo_ranks_match_one_process_on_the_global_batch(tmp_path):
    """torchrun-style 2 ranks: parameters equal on both ranks and equal to 1 process on the same global batch."""
    from patchscaler.train.grm import train

    data = noise_photos(tmp_path / "data", 3, seed=2)
    single, multi = tmp_path / "single", tmp_path / "multi"
    single.mkdir()
    multi.mkdir()
    ref = train(_train_args(data, single, "--stop-at", "3", "--batch", "4", "--no-bf16")).state_dict()
    run_gloo_ranks(_ddp_rank, 2, str(data), str(multi))
    states = [torch.load(multi / f"rank{r}.pt", weights_only=True) for r in (0, 1)]
    for k in ref:
        assert torch.equal(states[0][k], states[1][k]), k
        torch.testing.assert_close(states[0][k], ref[k], atol=1e-5, rtol=1e-4)
    ck = torch.load(multi / "last.pt", weights_only=False)
    assert ck["step"] == 3
    assert all(torch.equal(states[0][k], v) for k, v in ck["model"].items())  # rank 0 checkpointed the trained weights


def test_grow_blocks_keeps_the_function_and_then_trains():
    """--grow-blocks: the deeper GRM starts as the exact function of the shallower one,
    and its new blocks get gradients (they are not dead: their 1×1 weights are random)."""
    from patchscaler.train.grm import grow_blocks

    torch.manual_seed(0)
    cfg = GRMConfig(channels=8, blocks=2, expand=2, conf_channels=4)
    small = GRM(cfg)
    torch.nn.init.normal_(small.tail.weight, std=0.1)  # a non-trivial function (the fresh tail is 0)
    state, grown = grow_blocks(small.state_dict(), cfg, 4)
    assert grown.blocks == 4 and cfg.blocks == 2
    deep = GRM(grown)
    deep.load_state_dict(state)
    lr = torch.rand(2, 3, 11, 13)
    y_small, c_small = small(lr)
    y_deep, c_deep = deep(lr)
    torch.testing.assert_close(y_deep, y_small, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(c_deep, c_small, rtol=1e-6, atol=1e-6)
    assert not torch.equal(y_small, GRM(cfg)(lr)[0])  # the check above could fail
    y_deep.square().mean().backward()
    assert deep.body[3].spatial.weight.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="fewer"):
        grow_blocks(small.state_dict(), cfg, 1)


def test_receptive_radius_is_exact():
    """`GRMConfig.receptive_radius` (the pipeline's default tile context): an input pixel
    that far from an output pixel changes it, one farther does not."""
    torch.manual_seed(0)
    cfg = GRMConfig(channels=8, blocks=3, expand=2, conf_channels=4)
    grm = GRM(cfg).eval()
    torch.nn.init.normal_(grm.tail.weight, std=0.2)
    r, c = cfg.receptive_radius, 30
    lr = torch.rand(1, 3, 61, 61)
    with torch.no_grad():
        y, conf = grm(lr)
        changed = []
        for d in (r, r + 1):
            moved = lr.clone()
            moved[0, :, c, c + d] += 0.5
            y2, conf2 = grm(moved)
            changed.append(bool((y2[..., c, c] != y[..., c, c]).any() or (conf2[..., c, c] != conf[..., c, c]).any()))
    assert changed == [True, False]
