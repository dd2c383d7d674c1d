"""What the tests share: devices to parametrise over and tolerances per dtype, the
Triton-interpreter runner, the oracle schedule, tiny models and tiny weight files.

A plain module (not conftest.py) so test files can import it by name; `tests/` and
`benchmarks/` each have a conftest.py, and `from conftest import ...` would pick
whichever was imported first when both folders are collected in one run. Test files
import from here, never from each other.
"""

from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from patchscaler.checkpoints import DEFAULT_MODEL, MODEL_SETS
from patchscaler.kernels import TRITON_AVAILABLE

SHARED_DATA = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data"))
# A model set that is not `DEFAULT_MODEL`: tests of "a set named by the caller" use it, so they
# hold whichever set is the default.
OTHER_SET = next(m for m in MODEL_SETS if m != DEFAULT_MODEL)

# (atol, rtol) per dtype for kernels that accumulate in fp32 and store in `dtype`.
TOLERANCES = {
    torch.float32: (1e-5, 1e-5),
    torch.float16: (1e-3, 1e-3),
    torch.bfloat16: (1e-2, 1e-2),
}

# CUDA cases carry the `cuda` mark; tests/conftest.py skips them without a GPU.
DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.cuda)]

# Triton kernels on CPU tensors need TRITON_INTERPRET=1 set before the kernels are
# defined, so a test file runs its `test_interp_*` cases again in a child pytest with it
# set; in the parent those cases are marked `needs_interpreter` and skip.
INTERPRETED = os.environ.get("TRITON_INTERPRET") == "1"

needs_interpreter = pytest.mark.skipif(
    not (INTERPRETED and TRITON_AVAILABLE), reason="runs in the child process of test_triton_interpreted"
)
runs_interpreter_child = pytest.mark.skipif(
    INTERPRETED or not TRITON_AVAILABLE, reason="needs triton; runs the interpreted tests"
)


def run_interpreted_tests(test_file: str) -> None:
    """Runs `test_interp_*` of `test_file` in a child pytest under TRITON_INTERPRET=1; asserts all passed."""
    env = dict(os.environ, TRITON_INTERPRET="1")
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-k", "test_interp_", test_file]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=os.path.dirname(test_file))
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    assert " passed" in proc.stdout and "skipped" not in proc.stdout.splitlines()[-1], proc.stdout[-2000:]


# ----------------------------------------------------------------- the oracle schedule


def cosine_alphas_cumprod(T: int = 1000) -> torch.Tensor:
    """The cosine ᾱ table written out independently of `patchscaler.diffusion.schedule`, float32."""
    s = 0.008
    f = lambda t: torch.cos((t / T + s) / (1 + s) * math.pi / 2) ** 2  # noqa: E731
    i = torch.arange(T, dtype=torch.float64)
    return torch.cumprod(1 - (1 - f(i + 1) / f(i)).clamp(max=0.999), 0).float()


# ------------------------------------------------------------------------ tiny models


def _pgs_test_config():
    from patchscaler.sampling import PGSConfig

    return PGSConfig(gammas=(0.6, 0.4), groups=((150, 1), (350, 2), (600, 3)))


PGS_TEST_CONFIG = _pgs_test_config()  # the thresholds for `tiny_grm`'s brightness confidence


def tiny_grm(seed: int = 0):
    """A small random GRM whose confidence is the local brightness (clamped), so test
    images with dark and bright regions get all three PGS groups, deterministically."""
    from patchscaler.models.grm import GRM, GRMConfig

    class BrightnessGRM(GRM):
        def forward(self, lr):
            y0, _ = super().forward(lr)
            return y0, lr.float().mean(1, keepdim=True).clamp(0.01, 0.99)

    torch.manual_seed(seed)
    grm = BrightnessGRM(GRMConfig(channels=8, blocks=1, expand=2, conf_channels=4))
    torch.nn.init.normal_(grm.tail.weight, std=0.02)  # a non-zero residual over bicubic
    return grm.eval()


def tiny_dit(seed: int = 0):
    from patchscaler.models.dit import PatchDiT, PatchDiTConfig

    torch.manual_seed(seed)
    return PatchDiT(PatchDiTConfig(width=32, depth=1, heads=2, value_dim=16)).eval()


def tiny_sampler(kind: str = "pgs", seed: int = 0):
    from patchscaler.sampling import DiTDenoiser, PGSSampler, UniformSampler

    cls = PGSSampler if kind == "pgs" else UniformSampler
    return cls(DiTDenoiser(tiny_dit(seed)), _pgs_test_config())


def banded_image(h: int, w: int, seed: int = 0) -> torch.Tensor:
    """``[3,h,w]`` noise in dark / mid / bright vertical bands (hard / medium / simple patches)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(3, h, w, generator=g) * 0.2
    level = torch.linspace(0.1, 0.8, w)[None, None, :]
    return (x + level).clamp(0, 1)


# ------------------------------------------------------------------ tiny weight files


def _brightness_grm_state():
    """A tiny plain `GRM` whose confidence is sigmoid(8·brightness − 1.44), a monotone
    function of `tiny_grm`'s, so a weights file gives the same PGS groups (center taps only,
    no border effects). Returns (state_dict, config)."""
    from patchscaler.models.grm import GRM, GRMConfig

    torch.manual_seed(0)
    cfg = GRMConfig(channels=8, blocks=1, expand=2, conf_channels=4)
    grm = GRM(cfg)
    with torch.no_grad():
        for p in grm.parameters():
            p.zero_()
        grm.head.weight[0, :, 1, 1] = 1 / 3  # feature 0 = brightness − mean(rgb_mean); the body adds it again
        grm.conf[0].weight[0, 0, 1, 1] = 1.0
        grm.conf[0].bias[0] = 1.0
        grm.conf[2].weight[0, 0, 1, 1] = 1.0
        grm.conf[4].weight[0, 0, 1, 1] = 4.0
        grm.conf[4].bias[0] = -2.0
        torch.nn.init.normal_(grm.tail.weight, std=0.02)  # a non-zero residual over bicubic
    return grm.state_dict(), cfg


def _brightness_gammas(b1: float, b2: float) -> list[float]:
    """Thresholds on `_brightness_grm_state`'s confidence at brightness b1 > b2."""
    return [1 / (1 + math.exp(-(8 * b - 1.44))) for b in (b1, b2)]


def write_model_set(root, model: str | None = None, grm: bool = True, dit: bool = True) -> Path:
    """Tiny weight files for model set ``model`` (default: `DEFAULT_MODEL`) under ``root``: a GRM
    (brightness confidence), and with ``dit`` a tiny Patch-DiT and a PGS config with presets (no texture memory).
    Returns the set's folder. Point the package at it with the PATCHSCALER_WEIGHTS variable."""
    from patchscaler.checkpoints import weights_file
    from patchscaler.models.dit import save_dit
    from patchscaler.models.grm import save_grm
    from patchscaler.sampling import PGSConfig

    model = model or DEFAULT_MODEL

    if grm:
        state, cfg = _brightness_grm_state()
        save_grm(state, cfg, weights_file("grm", model, root))
    for component in ("dit", "pgs"):
        weights_file(component, model, root).unlink(missing_ok=True)
    if dit:
        save_dit(tiny_dit(), weights_file("dit", model, root), half=False)
        PGSConfig(
            gammas=_brightness_gammas(0.6, 0.4),
            groups=((150, 1), (350, 2), (600, 3)),
            presets={"fast": {"gammas": _brightness_gammas(0.5, 0.3)}, "detail": {"gammas": _brightness_gammas(0.7, 0.5)}},
        ).save(weights_file("pgs", model, root))
    Path(root, model).mkdir(parents=True, exist_ok=True)
    return Path(root, model)


# --------------------------------------------------------------------------- training and ranks


def noise_photos(folder, n: int, h: int = 48, w: int = 40, seed: int = 0):
    """``n`` uniform-noise RGB PNGs ``{i}.png`` in a new ``folder`` (tiny training sets)."""
    import numpy as np
    from PIL import Image

    folder = Path(folder)
    folder.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    for i in range(n):
        Image.fromarray((rng.random((h, w, 3)) * 255).astype(np.uint8)).save(folder / f"{i}.png")
    return folder


def _rank_entry(rank, world, port, target, args, queue):
    import os

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank))
    target(rank, *args)
    queue.put(rank)


def run_gloo_ranks(target, world: int, *args, timeout: float = 240) -> None:
    """Run ``target(rank, *args)`` in ``world`` spawned processes set up as torchrun would (env://).

    ``target`` must be importable (a module-level function); it passes results back through
    files, since tensors sent over a queue die with the process that shared them.
    """
    import socket

    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    procs = [ctx.Process(target=_rank_entry, args=(r, world, port, target, args, queue)) for r in range(world)]
    for p in procs:
        p.start()
    done = sorted(queue.get(timeout=timeout) for _ in procs)
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    assert done == list(range(world))
