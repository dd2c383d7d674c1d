"""Diffusion-side trainers end to end on a tiny generated photo folder: the DiT's run,
exact `--resume`, `--export` and `--init`; PGS calibration with that DiT; the texture
encoder's run, export and `--report`."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from patchscaler.models.dit import load_dit
from patchscaler.train import dit as train_dit


@pytest.fixture
def photos(tmp_path):
    folder = tmp_path / "photos"
    folder.mkdir()
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:200, 0:208]
    for i in range(3):
        base = 127 + 100 * np.sin(xx / (7 + i) + yy / (11 + 2 * i))
        img = np.clip(base[..., None] + rng.normal(0, 12, (200, 208, 3)), 0, 255).astype(np.uint8)
        Image.fromarray(img).save(folder / f"p{i}.png")
    return folder


def _args(photos, out, *extra):
    return [
        "--data", str(photos), "--out", str(out), "--cache", str(out / "pool.pt"), "--grm-checkpoint", "bicubic",
        "--rtm", "none", "--width", "32", "--depth", "1", "--heads", "2", "--crops", "2", "--val-patches", "8",
        "--threads", "1", "--log-every", "1", *extra,
    ]


@pytest.mark.filterwarnings("ignore:using an untrained GRM")
def test_train_resume_export_init(photos, tmp_path):
    out = tmp_path / "run"
    assert train_dit.main(_args(photos, out, "--steps", "2")) == 0
    two = torch.load(out / "last.pt", weights_only=False)
    assert two["step"] == 2

    # Resuming to step 3 equals... a run straight to step 3.
    assert train_dit.main(_args(photos, out, "--steps", "3", "--resume")) == 0
    resumed = torch.load(out / "last.pt", weights_only=False)
    straight = tmp_path / "straight"
    assert train_dit.main(_args(photos, straight, "--steps", "3")) == 0
    ref = torch.load(straight / "last.pt", weights_only=False)
    assert resumed["step"] == ref["step"] == 3
    for k in ref["model"]:
        torch.testing.assert_close(resumed["model"][k], ref["model"][k], rtol=0, atol=1e-6)

    exported = tmp_path / "dit.safetensors"
    assert train_dit.main(["--out", str(out), "--export", "--export-to", str(exported)]) == 0
    model = load_dit(exported)
    assert model.config.width == 32
    for k, v in model.state_dict().items():
        torch.testing.assert_close(v, resumed["ema"][k].half().float())

    # PGS calibration with that (tiny) model writes a loadable config with both presets.
    from patchscaler.sampling.pgs import PGSConfig
    from patchscaler.train import calibrate_pgs

    cfg_path = tmp_path / "pgs.json"
    assert calibrate_pgs.main([
        "--data", str(photos), "--out", str(tmp_path / "cal"), "--cache", str(out / "pool.pt"), "--grm-checkpoint",
        "bicubic", "--rtm", "none", "--dit", str(exported), "--crops", "4", "--threads", "1",
        "--grid-simple", "100:1", "--grid-medium", "250:2", "--grid-hard", "450:3,600:4", "--budget", "1.0",
        "--export-to", str(cfg_path),
    ]) == 0
    cfg = PGSConfig.load(cfg_path)
    assert cfg.groups[0] == (100, 1) and cfg.groups[1] == (250, 2) and cfg.groups[2] in ((450, 3), (600, 4))
    assert set(cfg.presets) == {"fast", "detail"} and cfg.preset("fast").groups == cfg.groups
    assert cfg.calibration["results"]["pgs"]["evaluations"] <= cfg.calibration["results"]["uniform"]["evaluations"]

    # --init starts a new run from those weights.
    fresh = tmp_path / "fresh"
    assert train_dit.main(_args(photos, fresh, "--steps", "1", "--init", str(exported), "--width", "64")) == 0
    ck = torch.load(fresh / "last.pt", weights_only=False)
    assert ck["step"] == 1 and ck["config"]["width"] == 32  # the weights' config wins over --width
    moved = sum(float((ck["model"][k] - v).abs().sum()) for k, v in model.state_dict().items())
    assert 0 < moved < 1e3  # one small optimiser step away from the initial weights, not a new model
    assert ck["config"]["anchor_sigma"] == model.config.anchor_sigma  # σ of the init model by default

    # --init with --anchor-sigma (a new degradation): the weights carry over, σ is replaced.
    resig = tmp_path / "resig"
    assert train_dit.main(_args(photos, resig, "--steps", "1", "--init", str(exported), "--anchor-sigma", "0.321")) == 0
    ck = torch.load(resig / "last.pt", weights_only=False)
    assert ck["config"]["anchor_sigma"] == 0.321 and ck["config"]["width"] == 32


@pytest.mark.filterwarnings("ignore:using an untrained GRM")
def test_texture_report_dense_pairs(photos, tmp_path, capsys):
    """The texture trainer's --report: the dense same-photo grid pairs are the right crops."""
    from patchscaler.inference.codec import PixelUnshuffleCodec
    from patchscaler.data.dataset import PairPool
    from patchscaler.train.patch_pairs import load_frozen_grm
    from patchscaler.train import texture

    pool = PairPool(photos, scale=4, min_hr_side=64)
    grm = load_frozen_grm("bicubic")
    d = texture.dense_held_out_pairs(pool, [0], grm, stride=8)
    h, w = pool.entries[0].lr.shape[1:]
    ny, nx = len(range(8, h - 8 - 16 + 1, 8)), len(range(8, w - 8 - 16 + 1, 8))
    assert d["y0"].shape == (ny * nx, 48, 16, 16) == d["x0"].shape
    x0 = PixelUnshuffleCodec(4).encode(pool.entries[0].hr[None].float() / 255.0)
    torch.testing.assert_close(d["x0"][nx + 1], x0[0, :, 16:32, 16:32])  # second row, second column

    out = tmp_path / "tex"
    assert texture.main(["--data", str(photos), "--out", str(out), "--cache", str(out / "pool.pt"), "--grm-checkpoint",
                         "bicubic", "--steps", "1", "--crops", "2", "--val-pairs", "8", "--threads", "1"]) == 0
    assert texture.main(["--out", str(out), "--export", "--export-to", str(out / "enc.safetensors")]) == 0
    assert texture.main(["--data", str(photos), "--out", str(out), "--cache", str(out / "pool.pt"), "--grm-checkpoint",
                         "bicubic", "--report", "--export-to", str(out / "enc.safetensors"), "--val-pairs", "8",
                         "--threads", "1"]) == 0
    lines = [ln for ln in capsys.readouterr().out.splitlines() if "encoder," in ln]
    assert len(lines) == 4 and all("top1=" in ln for ln in lines)

    # --init: a fresh run starts from the given encoder (an exported one, or a memory's
    # bundled one), so its step-0 EMA equals that encoder, not a random initialisation.
    from patchscaler.models.rtm import ReferenceTextureMemory
    from patchscaler.models.texture import load_texture_encoder

    enc = load_texture_encoder(out / "enc.safetensors")
    ReferenceTextureMemory(torch.randn(4, enc.config.key_dim), torch.randn(4, enc.config.value_tokens, enc.config.value_dim),
                           torch.arange(4), enc).save(out / "mem.safetensors")
    for src in (out / "enc.safetensors", out / "mem.safetensors"):
        run = tmp_path / f"init_{src.stem}"
        assert texture.main(["--data", str(photos), "--out", str(run), "--cache", str(out / "pool.pt"), "--grm-checkpoint",
                             "bicubic", "--steps", "0", "--val-pairs", "8", "--threads", "1", "--init", str(src)]) == 0
        ema = torch.load(run / "last.pt", weights_only=False)["ema"]
        for k, v in enc.state_dict().items():
            torch.testing.assert_close(ema[k].float(), v.float(), rtol=0, atol=1e-3, msg=k)
    with pytest.raises(Exception, match="no bundled encoder"):
        ReferenceTextureMemory(torch.randn(4, enc.config.key_dim), torch.randn(4, 1, enc.config.value_dim)).save(out / "bare.safetensors")
        texture.initial_encoder(str(out / "bare.safetensors"))


@pytest.mark.filterwarnings("ignore:using an untrained GRM")
def test_latent_pairs_real_degradation(photos):
    """degradation="real": same crops and x0 as bicubic, y0 from a degraded LR, seeded."""
    from patchscaler.data.dataset import PairPool
    from patchscaler.train.patch_pairs import LatentPatchPairs, load_frozen_grm
    from patchscaler.train import texture

    pool = PairPool(photos, scale=4, min_hr_side=64)
    grm = load_frozen_grm("bicubic")
    clean = LatentPatchPairs(pool, [0, 1], grm, lr_crop=32).sample(2, torch.Generator().manual_seed(1))
    real = LatentPatchPairs(pool, [0, 1], grm, lr_crop=32, degradation="real")
    a = real.sample(2, torch.Generator().manual_seed(1))
    b = real.sample(2, torch.Generator().manual_seed(1))
    assert torch.equal(a["x0"], clean["x0"]) and torch.equal(a["y0"], b["y0"])
    assert (a["y0"] - clean["y0"]).abs().mean() > 0.01
    with pytest.raises(ValueError, match="degradation"):
        LatentPatchPairs(pool, [0], grm, lr_crop=32, degradation="jpeg")
    d_clean = texture.dense_held_out_pairs(pool, [0], grm)
    d_real = texture.dense_held_out_pairs(pool, [0], grm, degradation="real")
    assert torch.equal(d_clean["x0"], d_real["x0"]) and not torch.equal(d_clean["y0"], d_real["y0"])


def test_real_crop_batches_in_workers_come_in_order(photos):
    """RealCropBatches: batch k is a function of (seed, k); two DataLoader workers deliver
    exactly start, start+1, ... (what one process would), and the LR is really degraded."""
    from patchscaler.data.dataset import PairPool
    from patchscaler.data.resize import bicubic_downscale
    from patchscaler.train.patch_pairs import LatentPatchPairs, RealCropBatches

    pool = PairPool(photos, scale=4, min_hr_side=64)
    pairs = LatentPatchPairs(pool, [0, 1, 2], None, lr_crop=16)
    stream = RealCropBatches(pairs, n_crops=2, seed=3, start=5)
    loader = iter(torch.utils.data.DataLoader(stream, batch_size=None, num_workers=2))
    got = [next(loader) for _ in range(4)]
    for k, (lr, hr, ids) in enumerate(got, start=5):
        want = stream.batch_at(k)
        assert all(torch.equal(x, y) for x, y in zip((lr, hr, ids), want)), k
        assert lr.dtype == torch.uint8 and lr.shape[-1] * 4 == hr.shape[-1]
    assert not torch.equal(got[0][1], got[1][1])  # different batches
    lr, hr, _ = got[0]
    clean = (bicubic_downscale(hr.float() / 255, 4) * 255).round()
    assert (lr.float() - clean).abs().mean() > 2  # degraded, not the bicubic LR


@pytest.mark.filterwarnings("ignore:using an untrained GRM")
def test_train_real_with_workers_resumes_exactly(photos, tmp_path):
    """--degradation real --workers 1: crops degraded in a worker; a run split by --resume
    ends with the same weights as a straight one."""
    runs = {}
    for name, legs in {"straight": [["--steps", "3"]], "split": [["--steps", "2"], ["--steps", "3", "--resume"]]}.items():
        out = tmp_path / name
        for leg in legs:
            assert train_dit.main(_args(photos, out, "--degradation", "real", "--workers", "1", "--lr-crop", "32", *leg)) == 0
        runs[name] = torch.load(out / "last.pt", weights_only=False)
    a, b = runs["straight"], runs["split"]
    assert a["step"] == b["step"] == 3
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k


def test_grm_export_writes_a_model_set_file_with_its_metadata(photos, tmp_path, weights_dir):
    """`python -m patchscaler.train.grm --export --export-to <root>/real/grm_x4.safetensors`:
    config, step and protocol in the file (no sidecar JSON); the set then runs."""
    import patchscaler
    from patchscaler.checkpoints import read_metadata, weights_file
    from patchscaler.models.grm import load_grm
    from patchscaler.train.grm import parse_args, train

    out = tmp_path / "grm"
    common = ["--data", str(photos), "--out", str(out), "--val-sets", "", "--channels", "8", "--blocks", "1",
              "--expand", "2", "--batch", "2", "--lr-patch", "8", "--warmup", "2", "--total-steps", "2",
              "--threads", "1", "--cache", str(out / "pool.pt")]
    train(parse_args(common + ["--stop-at", "2"]))
    dst = weights_file("grm", "real")
    train(parse_args(common + ["--export", "--export-to", str(dst)]))
    meta = read_metadata(dst)
    assert meta["format"] == "patchscaler.GRM" and '"channels": 8' in meta["config"] and meta["step"] == "2"
    assert "PSNR on Y" in meta["protocol"] and not dst.with_suffix(".json").exists()
    assert load_grm(model="real").config.channels == 8
    assert patchscaler.upscale(torch.rand(3, 5, 6), model="real", sampler="none").shape == (3, 20, 24)


def _dit_ddp_rank(rank, photos, out):
    import warnings
    from pathlib import Path

    warnings.filterwarnings("ignore", "using an untrained GRM")
    model = train_dit.train(train_dit.parse_args(_args(Path(photos), Path(out), "--steps", "2", "--crops", "4")))
    torch.save(model.state_dict(), Path(out) / f"rank{rank}.pt")


@pytest.mark.filterwarnings("ignore:using an untrained GRM")
def test_dit_ddp_two_gloo_ranks_match_one_process(photos, tmp_path):
    from helpers import run_gloo_ranks

    single = train_dit.train(train_dit.parse_args(_args(photos, tmp_path / "one", "--steps", "2", "--crops", "4")))
    run_gloo_ranks(_dit_ddp_rank, 2, str(photos), str(tmp_path / "two"))
    states = [torch.load(tmp_path / "two" / f"rank{r}.pt", weights_only=True) for r in (0, 1)]
    ref = single.state_dict()
    for k in ref:
        assert torch.equal(states[0][k], states[1][k]), k
        torch.testing.assert_close(states[0][k], ref[k], atol=1e-5, rtol=1e-4)
    assert torch.load(tmp_path / "two" / "last.pt", weights_only=False)["step"] == 2


@pytest.mark.parametrize("degradation", ["bicubic", "real"])
def test_trainer_weights_defaults_follow_the_degradation(degradation):
    """Each diffusion-side trainer reads and writes the model set named by its
    --degradation (not `DEFAULT_MODEL`), and a path given on the command line wins."""
    from patchscaler.checkpoints import weights_file
    from patchscaler.train import calibrate_pgs, dit, rtm, texture

    set_file = {c: str(weights_file(c, degradation)) for c in ("grm", "rtm", "dit", "pgs")}
    a = dit.parse_args(["--degradation", degradation])
    assert (a.grm_checkpoint, a.rtm, a.export_to) == (set_file["grm"], set_file["rtm"], set_file["dit"])
    a = calibrate_pgs.parse_args(["--degradation", degradation])
    assert (a.grm_checkpoint, a.dit, a.rtm, a.export_to) == (
        set_file["grm"], set_file["dit"], set_file["rtm"], set_file["pgs"])
    assert texture.parse_args(["--degradation", degradation]).grm_checkpoint == set_file["grm"]
    assert rtm.parse_args(["--degradation", degradation]).export_to == set_file["rtm"]
    assert dit.parse_args(["--degradation", degradation, "--rtm", "none"]).rtm == "none"


def test_noised_input_shortcut_patches_start_from_y0():
    """--shortcut-prob: the chosen patches are noised from y0 (the sampler's start), the others from x0."""
    g = torch.Generator().manual_seed(0)
    x0, y0, eps = (torch.randn(5, 3, 4, 4, generator=g) for _ in range(3))
    a_t = torch.rand(5, 1, 1, 1, generator=g)
    shortcut = torch.tensor([True, False, True, False, False])
    y_t = train_dit.noised_input(x0, y0, eps, a_t, shortcut)
    start = torch.stack([y0[0], x0[1], y0[2], x0[3], x0[4]])
    torch.testing.assert_close(y_t, a_t.sqrt() * start + (1 - a_t).sqrt() * eps)
    torch.testing.assert_close(train_dit.noised_input(x0, y0, eps, a_t), a_t.sqrt() * x0 + (1 - a_t).sqrt() * eps)


@pytest.mark.filterwarnings("ignore:using an untrained GRM")
def test_train_with_shortcut_inputs_logs_the_shortcut_validation(photos, tmp_path):
    out = tmp_path / "sc"
    assert train_dit.main(_args(photos, out, "--steps", "2", "--shortcut-prob", "0.5")) == 0
    val = [line for line in (out / "train.log").read_text().splitlines() if "val step 2" in line]
    assert val and "shortcut_x0_mse_t600=" in val[0]
