"""The `real` GRM's distillation pieces: labelled-crop batches, the sharpened target, the loss, the trainer.

The teacher itself (Real-ESRGAN through ncnn) is a training extra and is not needed here:
the shards are written by hand with the layout `train.teacher_labels` writes.
"""

from __future__ import annotations

import re

import pytest
import torch

from patchscaler.models.losses import DistillLoss, flat_mask, grm_loss, usm_sharpen, with_tone_of
from patchscaler.train.teacher_labels import LabelledBatches, list_shards


def _write_shards(folder, n: int, tiles: int = 3, lr_tile: int = 20, seed: int = 0) -> None:
    g = torch.Generator().manual_seed(seed)
    for k in range(n):
        lr = torch.randint(0, 256, (tiles, 3, lr_tile, lr_tile), dtype=torch.uint8, generator=g)
        # teacher/HR are the LR repeated 4x4 (plus an offset for the teacher), so an aligned
        # crop of them is recognisable from the LR crop alone.
        up = lr.repeat_interleave(4, -1).repeat_interleave(4, -2)
        torch.save({"lr": lr, "teacher": (up // 2).to(torch.uint8), "hr": up}, folder / f"shard_{k:06d}.pt")


def test_batches_are_aligned_deterministic_and_cover_flips(tmp_path):
    _write_shards(tmp_path, 2)
    ds = LabelledBatches(tmp_path, lr_patch=8, batch=16, seed=3)
    assert ds.shards == 2 and len(ds) == 6
    lr, t, hr = ds.batch_at(5)
    assert lr.shape == (16, 3, 8, 8) and t.shape == hr.shape == (16, 3, 32, 32)
    up = lr.repeat_interleave(4, -1).repeat_interleave(4, -2)
    torch.testing.assert_close(hr, up)  # same crop and same flip/rotation in all three
    torch.testing.assert_close(t, torch.floor(up * 255 / 2) / 255)
    again = LabelledBatches(tmp_path, lr_patch=8, batch=16, seed=3).batch_at(5)
    assert all(torch.equal(a, b) for a, b in zip((lr, t, hr), again))
    assert not torch.equal(lr, ds.batch_at(6)[0])


def test_grow_takes_in_new_shards_and_a_run_can_pin_its_count(tmp_path):
    _write_shards(tmp_path, 2)
    ds = LabelledBatches(tmp_path, lr_patch=8, batch=4)
    _write_shards(tmp_path, 3, seed=1)  # rewrites 0, 1 and adds shard 2
    assert ds.grow() == 1 and ds.shards == 3 and len(ds) == 9
    assert ds.grow() == 0
    pinned = LabelledBatches(tmp_path, lr_patch=8, batch=4, shards=2)
    assert pinned.shards == 2
    try:
        LabelledBatches(tmp_path, lr_patch=8, batch=4, shards=5)
    except ValueError as e:
        assert "3 shards" in str(e)
    else:
        raise AssertionError("asking for more shards than exist must fail")
    try:
        LabelledBatches(tmp_path / "none", lr_patch=8, batch=4)
    except FileNotFoundError as e:
        assert "teacher_labels" in str(e)
    else:
        raise AssertionError("an empty cache must fail")
    assert len(list_shards(tmp_path)) == 3


def test_usm_sharpens_edges_and_leaves_flat_regions():
    flat = torch.full((1, 3, 40, 40), 0.4)
    torch.testing.assert_close(usm_sharpen(flat), flat)
    edge = torch.zeros(1, 3, 40, 40)
    edge[..., 20:] = 0.8
    sharp = usm_sharpen(edge)
    assert sharp[..., 21].mean() > 0.8 - 1e-6 and sharp[..., 22].mean() > 0.8  # overshoot on the bright side
    assert sharp.min() >= 0 and sharp.max() <= 1
    assert (sharp - edge).abs()[..., :5].max() < 0.02  # far from the edge: almost untouched


def test_distill_loss_parts_and_confidence_against_the_truth():
    g = torch.Generator().manual_seed(0)
    y0, t0, xs, x0 = (torch.randn(2, 48, 5, 5, generator=g) for _ in range(4))
    conf = torch.rand(2, 1, 5, 5, generator=g) * 0.9 + 0.05
    loss, parts = DistillLoss(w_teacher=1.0, w_gt=0.5)(y0, t0, xs, x0, conf)
    assert parts["l1_teacher"] == (y0 - t0).abs().mean().item()
    assert parts["l1_usm"] == (y0 - xs).abs().mean().item()
    _, ref = grm_loss(y0, x0, conf)
    assert abs(parts["conf"] - ref["conf"]) < 1e-3 and abs(parts["l1"] - ref["l1"]) < 1e-6
    # With the teacher equal to the truth and no GT weight, only the teacher term moves y0.
    loss_t, _ = DistillLoss(w_teacher=1.0, w_gt=0.0)(y0, x0, xs, x0, conf)
    loss_g, _ = grm_loss(y0, x0, conf)
    torch.testing.assert_close(loss_t, loss_g)


def test_lowpass_distill_leaves_fine_strokes_to_the_texture_terms():
    """--l1-lowpass: a fine checkerboard the student paints where the teacher has none (or the
    teacher's strokes shifted) costs almost nothing; a tone error costs what plain L1 charges."""
    from patchscaler.inference.codec import PixelUnshuffleCodec

    codec = PixelUnshuffleCodec(4)
    hr = torch.full((1, 3, 40, 44), 0.5)  # odd multiples of the scale: no power-of-two luck
    yy, xx = torch.meshgrid(torch.arange(40), torch.arange(44), indexing="ij")
    strokes = 0.2 * ((yy + xx) % 2 * 2 - 1).float()  # period-2 pattern
    conf = torch.full((1, 1, 10, 11), 0.5)
    plain, low = DistillLoss(1.0, 0.0), DistillLoss(1.0, 0.0, lowpass_sigma=1.5, scale=4)
    t0 = codec.encode(hr)
    fine = codec.encode(hr + strokes)
    _, p_plain = plain(fine, t0, t0, t0, conf)
    _, p_low = low(fine, t0, t0, t0, conf)
    assert p_plain["l1_teacher"] > 0.39 and p_low["l1_teacher"] < 0.02 * p_plain["l1_teacher"]
    tone = codec.encode(hr + 0.1)
    _, t_plain = plain(tone, t0, t0, t0, conf)
    _, t_low = low(tone, t0, t0, t0, conf)
    assert abs(t_low["l1_teacher"] - t_plain["l1_teacher"]) < 1e-5
    # The confidence term still sees the full-band error against the truth.
    assert p_low["conf"] == p_plain["conf"] and p_low["l1"] == p_plain["l1"]


def test_flat_mask_is_one_on_smooth_regions_and_zero_on_fine_detail():
    yy, xx = torch.meshgrid(torch.arange(45.0), torch.arange(54.0), indexing="ij")
    smooth = 0.5 + 0.2 * torch.sin(yy / 9) * torch.cos(xx / 11)  # tone and shading, no strokes
    img = torch.stack([smooth, smooth * 0.9, 1 - smooth])[None]
    img[..., :, 30:] += 0.08 * ((torch.arange(24) % 2).float() - 0.5)  # 1-px stripes of 20 levels on the right
    m = flat_mask(img)
    assert m.shape == (1, 1, 45, 54) and m.min() > 0 and m.max() <= 1
    assert m[..., 10:35, :15].min() > 0.85  # smooth shading: flat
    assert m[..., 10:35, 40:].max() < 0.01  # fine stripes: detail
    assert torch.equal(flat_mask(img.double()), flat_mask(img.double()))  # any float dtype, deterministic


def test_flat_term_charges_speckle_on_the_teachers_flat_regions_only():
    """--flat-weight: speckle the low-pass L1 hardly sees costs full price where the teacher
    is flat, and nothing where the teacher has detail of its own."""
    from patchscaler.inference.codec import PixelUnshuffleCodec

    codec = PixelUnshuffleCodec(4)
    teacher = torch.full((1, 3, 40, 44), 0.5)
    yy, xx = torch.meshgrid(torch.arange(40), torch.arange(44), indexing="ij")
    teacher[..., 20:, :] += 0.1 * ((yy[20:] + xx[20:]) % 2 * 2 - 1).float()  # the bottom half textured
    speckle = 0.1 * (((yy * 7 + xx * 3) % 5) / 2 - 1).float()  # the student's own fine pattern
    conf = torch.full((1, 1, 10, 11), 0.5)
    t0 = codec.encode(teacher)
    low, flat = DistillLoss(1.0, 0.0, lowpass_sigma=1.5, scale=4), DistillLoss(1.0, 0.0, lowpass_sigma=1.5, scale=4, w_flat=2.0)
    top = teacher.clone()
    top[..., :10, :] += speckle[:10]  # 2.5 window sigmas from the textured half
    bottom = teacher.clone()
    bottom[..., 24:, :] += speckle[24:]
    loss_top_low, _ = low(codec.encode(top), t0, t0, t0, conf)
    loss_top, p_top = flat(codec.encode(top), t0, t0, t0, conf)
    loss_bottom_low, _ = low(codec.encode(bottom), t0, t0, t0, conf)
    loss_bottom, p_bottom = flat(codec.encode(bottom), t0, t0, t0, conf)
    full = 2 * speckle[:10].abs().sum().item() * 3 / (40 * 44 * 3)  # latent units: 2x the HR difference
    assert p_top["flat"] > 0.8 * full and torch.isclose(loss_top, loss_top_low + 2.0 * p_top["flat"])
    assert p_bottom["flat"] < 0.05 * p_top["flat"] and loss_bottom - loss_bottom_low < 0.05 * (loss_top - loss_top_low)
    _, p_none = low(codec.encode(top), t0, t0, t0, conf)
    assert "flat" not in p_none  # off by default


def test_teacher_tone_takes_the_truths_low_pass_and_keeps_the_teachers_strokes():
    g = torch.Generator().manual_seed(0)
    truth = torch.nn.functional.interpolate(torch.rand(2, 3, 6, 7, generator=g), size=(48, 56), mode="bilinear")
    strokes = 0.1 * ((torch.arange(56) % 2).float() - 0.5).expand(2, 3, 48, 56)  # zero-mean 1-px stripes
    dark = truth + strokes - 0.05  # a teacher that draws the strokes and darkens
    out = with_tone_of(dark, truth, 6.0)
    assert out.dtype == dark.dtype and out.shape == dark.shape
    # the darkening is gone (its mean is back to the truth's), the strokes are still there
    assert (out - truth - strokes).mean().abs() < 1e-3 < (dark - truth - strokes).mean().abs()
    assert (out - truth - strokes).abs().max() < 0.02
    assert torch.allclose(with_tone_of(truth, truth, 6.0), truth, atol=1e-6)  # no change where the tones agree


def test_clean_share_swaps_in_bicubic_lr_with_the_truth_as_target():
    from patchscaler.data.resize import bicubic_downscale
    from patchscaler.train.grm import mix_clean

    g = torch.Generator().manual_seed(1)
    hr = torch.rand(8, 3, 36, 28, generator=g)
    lr, t = torch.rand(8, 3, 9, 7, generator=g), torch.rand(8, 3, 36, 28, generator=g)
    lr0 = lr.clone()
    lr2, t2, hr2 = mix_clean(lr, t, hr, 0.25, 4, seed=5)
    clean = [i for i in range(8) if torch.equal(t2[i], hr[i])]
    assert len(clean) == 2 and hr2 is hr
    for i in range(8):
        if i in clean:
            assert torch.equal(lr2[i], bicubic_downscale(hr[i], 4))
        else:
            assert torch.equal(lr2[i], lr[i]) and torch.equal(t2[i], t[i])
    assert torch.equal(lr, lr0)  # the input batch is not modified
    again = mix_clean(lr, t, hr, 0.25, 4, seed=5)
    assert all(torch.equal(x, y) for x, y in zip(again, (lr2, t2, hr2)))  # a function of the seed: --resume repeats it
    assert mix_clean(lr, t, hr, 0.0, 4, seed=5)[0] is lr


def test_clean_share_can_carry_mild_noise_and_jpeg_on_the_clean_lr_only():
    from patchscaler.train.grm import mix_clean

    g = torch.Generator().manual_seed(2)
    hr = torch.rand(16, 3, 64, 48, generator=g)
    lr, t = torch.rand(16, 3, 16, 12, generator=g), torch.rand(16, 3, 64, 48, generator=g)
    plain = mix_clean(lr, t, hr, 0.5, 4, seed=7)
    clean = [i for i in range(16) if torch.equal(plain[1][i], hr[i])]
    noisy = mix_clean(lr, t, hr, 0.5, 4, seed=7, noise=10)
    # Same samples chosen, same targets; only the clean LR changes, by noise no larger than asked.
    assert torch.equal(noisy[1], plain[1])
    for i in range(16):
        d = (noisy[0][i] - plain[0][i]).clamp_min(-plain[0][i]).clamp_max(1 - plain[0][i])  # clamped at [0, 1]
        if i in clean:
            assert 0 < d.std() < 10 / 255 * 1.2
        else:
            assert torch.equal(noisy[0][i], lr[i])
    assert 0 <= noisy[0].min() and noisy[0].max() <= 1
    stds = sorted(float((noisy[0][i] - plain[0][i]).std()) for i in clean)
    assert stds[-1] > 2 * stds[0]  # sigma is drawn per sample, not fixed
    coded = mix_clean(lr, t, hr, 0.5, 4, seed=7, jpeg_min=30)
    for i in clean:  # JPEG output is 8-bit and not the input
        assert torch.equal(coded[0][i], (coded[0][i] * 255).round() / 255)
        assert (coded[0][i] - plain[0][i]).abs().mean() > 1 / 255
    both = mix_clean(lr, t, hr, 0.5, 4, seed=7, noise=10, jpeg_min=30)
    assert torch.equal(both[0], mix_clean(lr, t, hr, 0.5, 4, seed=7, noise=10, jpeg_min=30)[0])  # seeded


def test_trainer_distils_from_labels_and_resumes(tmp_path):
    from patchscaler.train.grm import main

    labels = tmp_path / "labels"
    labels.mkdir()
    _write_shards(labels, 2, tiles=2, lr_tile=24)
    out = tmp_path / "run"
    common = ["--teacher-labels", str(labels), "--out", str(out), "--channels", "8", "--blocks", "1",
              "--batch", "2", "--lr-patch", "12", "--threads", "1", "--val-sets", "", "--warmup", "1",
              "--log-every", "1", "--no-bf16"]
    assert main(common + ["--total-steps", "3", "--clean-share", "0.5", "--clean-noise", "3", "--clean-jpeg", "80",
                          "--teacher-tone", "4", "--flat-weight", "0.5"]) == 0
    ck = torch.load(out / "last.pt", weights_only=False)
    assert ck["step"] == 3 and ck["args"]["degradation"] == "real" and ck["args"]["label_shards"] == 2
    log = (out / "metrics.log").read_text()
    assert "teacher labels: 2 shards" in log and "l1_teacher" in log
    _write_shards(labels, 3, tiles=2, lr_tile=24)
    # --resume keeps the labels folder and the loss weights of the run (not given again here)
    resume = [a for a in common if a not in ("--teacher-labels", str(labels))]
    assert main(resume + ["--resume", "--total-steps", "5"]) == 0
    ck = torch.load(out / "last.pt", weights_only=False)
    assert ck["step"] == 5 and ck["args"]["teacher_labels"] == str(labels) and ck["args"]["clean_share"] == 0.5
    assert ck["args"]["clean_noise"] == 3 and ck["args"]["clean_jpeg"] == 80 and ck["args"]["teacher_tone"] == 4
    assert ck["args"]["flat_weight"] == 0.5 and " flat " in log
    assert "(noise sigma <= 3.0 levels) (JPEG quality >= 80)" in log
    assert "low-pass of sigma 4.0 HR px replaced by the ground truth's" in log


def test_discriminator_gives_a_logit_per_pixel_and_rejects_bad_sizes():
    from patchscaler.models.discriminator import UNetDiscriminator

    d = UNetDiscriminator(8)
    assert d(torch.rand(2, 3, 24, 40)).shape == (2, 1, 24, 40)
    try:
        d(torch.rand(1, 3, 20, 20))
    except ValueError as e:
        assert "multiples of 8" in str(e)
    else:
        raise AssertionError("20x20 must be refused")
    # Every convolution after the stem is spectral-normalised.
    normed = [m for m in d.modules() if hasattr(m, "weight_orig")]
    assert len(normed) == 8


def test_artifact_map_loss_only_where_the_ema_is_better():
    from patchscaler.models.losses import artifact_map_loss

    g = torch.Generator().manual_seed(0)
    target = torch.rand(2, 3, 32, 32, generator=g)
    noisy = (target + 0.2 * torch.randn(target.shape, generator=g)).clamp(0, 1)
    # EMA worse than the model everywhere: no artefact to suppress.
    worse = target + 0.5  # off by more than the model anywhere
    assert artifact_map_loss(noisy, worse, target).item() == 0.0
    # EMA exact: every erratic residual of the model is penalised, and the gradient points back.
    sr = noisy.clone().requires_grad_(True)
    loss = artifact_map_loss(sr, target, target)
    assert loss.item() > 0
    loss.backward()
    step = sr.detach() - 1e3 * sr.grad
    assert (step - target).abs().mean() < (noisy - target).abs().mean()


def test_frequency_loss_sees_missing_detail():
    from patchscaler.models.losses import frequency_loss
    import torch.nn.functional as F

    g = torch.Generator().manual_seed(0)
    x = torch.rand(1, 3, 32, 32, generator=g)
    blurred = F.avg_pool2d(F.pad(x, (1, 1, 1, 1), mode="reflect"), 3, stride=1)
    assert frequency_loss(x, x).item() == 0.0
    assert frequency_loss(blurred, x).item() > 0.05


def test_texture_energy_loss_charges_missing_texture_not_its_placement():
    """Texture moved within a tile costs ~nothing in amplitude (it does in the complex
    spectrum and in L1); texture taken away costs in all three."""
    from patchscaler.models.losses import frequency_loss, texture_energy_loss
    import torch.nn.functional as F

    g = torch.Generator().manual_seed(0)
    x = torch.rand(2, 3, 64, 96, generator=g)
    # A circular shift inside each 32² tile keeps every tile's amplitude spectrum exactly.
    tiles = x.reshape(2, 3, 2, 32, 3, 32)
    moved = torch.roll(tiles, shifts=(5, 11), dims=(3, 5)).reshape_as(x)
    blurred = F.avg_pool2d(F.pad(x, (1, 1, 1, 1), mode="reflect"), 3, stride=1)
    assert texture_energy_loss(moved, x).item() < 1e-5
    assert frequency_loss(moved, x).item() > 0.1 and (moved - x).abs().mean().item() > 0.2
    assert texture_energy_loss(blurred, x).item() > 0.05
    # Gradient descent on it puts back energy that a blur removed.
    sr = blurred.clone().requires_grad_(True)
    texture_energy_loss(sr, x).backward()
    hf = lambda img: (img - F.avg_pool2d(F.pad(img, (1, 1, 1, 1), mode="reflect"), 3, stride=1)).pow(2).mean()
    assert hf(blurred - 10 * sr.grad) > hf(blurred)
    try:
        texture_energy_loss(x[..., :40], x[..., :40])
    except ValueError as e:
        assert "32" in str(e)
    else:
        raise AssertionError("a size that is not a multiple of the tile must be refused")


def test_adversarial_fine_tune_trains_and_resumes_its_discriminator(tmp_path):
    from patchscaler.train.grm import main

    labels = tmp_path / "labels"
    labels.mkdir()
    _write_shards(labels, 1, tiles=2, lr_tile=24)
    out = tmp_path / "run"
    common = ["--out", str(out), "--channels", "8", "--blocks", "1", "--batch", "2", "--lr-patch", "16",
              "--threads", "1", "--val-sets", "", "--warmup", "1", "--log-every", "1", "--no-bf16"]
    adv = ["--teacher-labels", str(labels), "--gan-weight", "0.1", "--ldl-weight", "1", "--fft-weight", "0.1",
           "--energy-weight", "0.5", "--d-channels", "4"]
    assert main(common + adv + ["--total-steps", "2"]) == 0
    ck = torch.load(out / "last.pt", weights_only=False)
    assert "disc" in ck and "disc_opt" in ck
    d_before = {k: v.clone() for k, v in ck["disc"].items()}
    log = (out / "metrics.log").read_text()
    for term in ("gan", "ldl", "fft", "energy", "d_loss", "discriminator fresh"):
        assert term in log, term
    assert main(common + ["--resume", "--total-steps", "3"]) == 0
    assert "discriminator restored" in (out / "metrics.log").read_text()
    ck = torch.load(out / "last.pt", weights_only=False)
    assert ck["step"] == 3 and any(not torch.equal(d_before[k], ck["disc"][k]) for k in d_before)
    try:
        main(common[:2] + ["--out", str(tmp_path / "other"), "--gan-weight", "0.1"])
    except SystemExit as e:
        assert "--teacher-labels" in str(e)
    else:
        raise AssertionError("an adversarial term without labels must be refused")
    for bad, why in ((["--clean-share", "0.25"], "--teacher-labels"), (["--l1-lowpass", "1.5"], "--teacher-labels"),
                     (["--teacher-tone", "6"], "--teacher-labels"),
                     (["--teacher-labels", str(labels), "--teacher-tone", "-1"], ">= 0"),
                     (["--flat-weight", "1"], "--teacher-labels"),
                     (["--teacher-labels", str(labels), "--flat-weight", "-1"], ">= 0"),
                     (["--teacher-labels", str(labels), "--clean-share", "1.5"], "[0, 1]"),
                     (["--teacher-labels", str(labels), "--l1-lowpass", "-1"], ">= 0"),
                     (["--teacher-labels", str(labels), "--clean-noise", "3"], "need --clean-share"),
                     (["--teacher-labels", str(labels), "--clean-share", "0.2", "--clean-jpeg", "99"], "[1, 95]"),
                     (["--teacher-labels", str(labels), "--clean-share", "0.2", "--clean-noise", "-2"], "[0, 50]")):
        with pytest.raises(SystemExit, match=re.escape(why)):
            main(bad + ["--out", str(tmp_path / "refused"), "--threads", "1"])
