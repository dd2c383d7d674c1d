"""Run plumbing every trainer shares: the run-folder arguments, a timestamped log,
atomic checkpoints that resume exactly (weights, EMA, optimiser, step, RNG states),
the EMA update, and `RunControl` (wall-clock budget, periodic checkpoints, clean stop
on SIGINT/SIGTERM).
"""

from __future__ import annotations

import argparse
import copy
import os
import signal
import time
from pathlib import Path

import torch

DATA_ROOT = Path(__file__).resolve().parents[2].parent / "shared" / "data"
DEFAULT_DATA = DATA_ROOT / "train"


def add_run_args(p, out_default: str, ckpt_minutes: float = 5.0) -> None:
    """Arguments every trainer takes: data, run folder, resume, time budget, threads."""
    p.add_argument("--data", default=str(DEFAULT_DATA), help="folder of HR training photos (recursive)")
    p.add_argument("--out", default=out_default, help="run folder (log, checkpoints)")
    p.add_argument("--resume", action="store_true", help="continue from OUT/last.pt when it exists")
    p.add_argument("--minutes", type=float, default=None, help="wall-clock budget; checkpoints and stops when spent")
    p.add_argument("--ckpt-minutes", type=float, default=ckpt_minutes, help="checkpoint interval")
    p.add_argument("--threads", type=int, default=2, help="torch CPU threads")


def parse_run_args(p: argparse.ArgumentParser, argv=None) -> argparse.Namespace:
    """``p.parse_args(argv)``, plus ``given``: the sorted dests the command line set itself.

    argparse fills in defaults without saying so, and a resumed run must tell "not
    given" from "given as the default": it keeps its own value for the first, not the second.
    """
    a = p.parse_args(argv)
    probe = copy.deepcopy(p)
    for action in probe._actions:
        action.default = argparse.SUPPRESS
    a.given = sorted(vars(probe.parse_args(argv)))
    return a


def keep_run_args(a: argparse.Namespace, saved: dict, keys, log) -> None:
    """A resumed run continues with the settings it was started with: each of ``keys`` takes
    the checkpoint's value unless the command line gave it again (``--total-steps`` to
    lengthen the schedule, say). Without this a plain ``--resume`` would restart the
    learning-rate schedule from the parser's defaults."""
    for key in keys:
        if key not in saved:
            continue
        if key in getattr(a, "given", ()):
            if getattr(a, key) != saved[key]:
                log(f"--{key.replace('_', '-')} {getattr(a, key)} given: the run had {saved[key]}")
        else:
            setattr(a, key, saved[key])


class RunLog:
    """Prints timestamped lines and appends them to ``path``."""

    def __init__(self, path: str | os.PathLike):
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        self.f = open(path, "a", buffering=1)

    def __call__(self, msg: str) -> None:
        line = f"{time.strftime('%Y-%m-%d %H:%M:%S')} {msg}"
        print(line, flush=True)
        self.f.write(line + "\n")


def atomic_save(obj, path: str | os.PathLike) -> None:
    """`torch.save` to a temporary name, then rename: a crash never leaves half a checkpoint."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def load_last(a, log) -> dict | None:
    """``OUT/last.pt`` (on the CPU) when ``--resume`` is given and it exists, else None."""
    path = Path(a.out) / "last.pt"
    if not (a.resume and path.is_file()):
        return None
    ck = torch.load(path, map_location="cpu", weights_only=False)
    log(f"resuming from {path} at step {ck['step']}")
    return ck


def trainer_state(model, ema, opt, gen: torch.Generator, step: int, torch_rng: bool = True) -> dict:
    """The part of a checkpoint that makes a resumed run continue exactly.

    ``torch_rng=False`` leaves out the global torch RNG, for trainers that draw only from ``gen``.
    """
    ck = {"model": model.state_dict(), "ema": ema.state_dict(), "opt": opt.state_dict(), "step": step,
          "gen": gen.get_state()}
    if torch_rng:
        ck["torch_rng"] = torch.get_rng_state()
    return ck


def restore_trainer_state(ck: dict, model, ema, opt, gen: torch.Generator) -> int:
    """Load what `trainer_state` saved into the objects; returns the step."""
    model.load_state_dict(ck["model"])
    ema.load_state_dict(ck["ema"])
    opt.load_state_dict(ck["opt"])
    gen.set_state(ck["gen"])
    if "torch_rng" in ck:
        torch.set_rng_state(ck["torch_rng"])
    return ck["step"]


@torch.no_grad()
def update_ema(ema: torch.nn.Module, model: torch.nn.Module, decay: float, step: int) -> None:
    """Move ``ema``'s parameters towards ``model``'s and copy its buffers.

    The decay warms up, ``min(decay, (1 + step) / (10 + step))``: a short average early,
    so that early validations of the EMA weights are meaningful.
    """
    d = min(decay, (1 + step) / (10 + step))
    for pe, pm in zip(ema.parameters(), model.parameters()):
        pe.lerp_(pm, 1 - d)
    for be, bm in zip(ema.buffers(), model.buffers()):
        be.copy_(bm)


class RunControl:
    """Wall-clock budget (``minutes``, None = none), periodic checkpoints, SIGINT/SIGTERM → stop cleanly."""

    def __init__(self, minutes: float | None, ckpt_minutes: float = 5.0):
        self.t0 = time.time()
        self.minutes = minutes
        self.ckpt_seconds = ckpt_minutes * 60
        self.last_ckpt = time.time()
        self.signalled = False
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, self._on_signal)

    def _on_signal(self, signum, frame) -> None:
        self.signalled = True  # finish the current step, checkpoint, exit

    def elapsed(self) -> float:
        return time.time() - self.t0

    def time_up(self) -> bool:
        return self.minutes is not None and self.elapsed() >= self.minutes * 60

    def out_of_time(self) -> bool:
        return self.signalled or self.time_up()

    def checkpoint_due(self) -> bool:
        if time.time() - self.last_ckpt >= self.ckpt_seconds:
            self.last_ckpt = time.time()
            return True
        return False


# --------------------------------------------------------------------------- torchrun / DDP
#
# Under ``torchrun`` every rank draws the SAME global batch (same seed, same generator
# state) and trains on its own slice of it (`rank_slice`); DistributedDataParallel
# averages the gradients, which for per-sample-mean losses and equal slices is exactly
# the gradient of the global batch, so a run's numbers do not depend on the world size
# and a checkpoint resumes under any world size that divides the batch. Decisions that
# depend on the clock or on signals (stop, validate, checkpoint) are made by rank 0
# and broadcast (`agree`), so every rank leaves the loop at the same step.


def rank_slice(x: torch.Tensor, ctx) -> torch.Tensor:
    """This rank's rows of a global batch (all of it when not distributed)."""
    if ctx is None:
        return x
    n = x.shape[0] // ctx.world_size
    return x[ctx.rank * n : (ctx.rank + 1) * n]


def check_batch_divides(batch: int, ctx) -> None:
    if ctx is not None and batch % ctx.world_size:
        raise SystemExit(f"--batch {batch} is not divisible by the {ctx.world_size} ranks")


def agree(ctx, *flags: bool) -> list[bool]:
    """Rank 0's values of ``flags`` on every rank (the flags themselves when alone)."""
    if ctx is None:
        return list(flags)
    import torch.distributed as dist

    t = torch.tensor([int(f) for f in flags], dtype=torch.int32)
    if ctx.device.type == "cuda":
        t = t.to(ctx.device)
    dist.broadcast(t, 0)
    return [bool(v) for v in t.tolist()]


class SilentLog:
    """The log of ranks other than 0: says nothing (rank 0 speaks for the job)."""

    def __call__(self, msg: str) -> None:
        pass
