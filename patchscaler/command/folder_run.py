"""A folder of images through one per-image function: sharded, resumable, with a manifest.

Used by the ``patchscaler`` command for folder inputs, alone or under ``torchrun``:

* **Sharding.** Every rank sees the same sorted job list. By default the ranks pull
  images one at a time from a shared counter, largest first (`distributed.WorkQueue`:
  PGS's cost depends on the content, which no static split can see); ``shard="static"``
  takes the fixed share :func:`patchscaler.command.distributed.shard_by_cost` gives each rank
  (balanced by pixel count from the file headers). Either way every image has the same
  seed as in one process, so the outputs are the same.
* **Resume.** A job whose output already exists is skipped (outputs are written to a
  temporary name and renamed, so an existing file is a complete one); ``overwrite``
  redoes it.
* **Manifest.** One JSON line per finished job (input, output, status, seconds,
  evaluations, error) is appended as it finishes, so a killed job loses at most the
  files in flight and the manifest says what was done.
* **Progress.** Rank 0 draws one bar for the whole job from a shared counter.
* **Failures** of every rank are gathered and returned to every rank, in input order.
"""

from __future__ import annotations

import itertools
import json
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Sequence

if TYPE_CHECKING:
    from patchscaler.command.distributed import Context

__all__ = ["FolderResult", "pixel_cost", "run_jobs"]

_RUNS = itertools.count()

# The errors one image can cause without stopping the others (the CLI's folder contract).
IMAGE_ERRORS = (OSError, ValueError, TypeError, RuntimeError)


@dataclass
class FolderResult:
    """What the whole job did (identical on every rank)."""

    records: list[dict] = field(default_factory=list)  # per written image, in input order
    failures: list[tuple[str, str]] = field(default_factory=list)  # (input, one-line message)
    skipped: list[str] = field(default_factory=list)  # inputs whose output already existed


def pixel_cost(path: str | os.PathLike) -> int:
    """Pixels of an image from its header only (1 if unreadable: it will fail and be reported)."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            return max(1, im.size[0] * im.size[1])
    except Exception:  # any decoder error: the per-image call reports it properly
        return 1


def _append_line(path: Path, entry: dict) -> None:
    # One write() of one line on an O_APPEND descriptor: lines from several ranks never interleave.
    data = (json.dumps(entry) + "\n").encode()
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, data)
    finally:
        os.close(fd)


def one_line(exc: BaseException) -> str:
    """The first line of an error's message (its type when it has none): what the user is shown."""
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


def image_error(src, exc: BaseException) -> str:
    """One line for a failed image, naming its file."""
    msg = one_line(exc)
    return msg if str(src) in msg else f"{src}: {msg}"


def run_jobs(
    jobs: Sequence[Any],
    process: Callable[[Any], dict],
    *,
    ctx: Context | None = None,
    overwrite: bool = False,
    manifest: str | os.PathLike | None = None,
    progress: bool = True,
    on_error: Callable[[str], None] | None = None,
    fatal: tuple[type[BaseException], ...] = (),
    shard: str = "dynamic",
) -> FolderResult:
    """Run ``process(job)`` for this rank's share of ``jobs`` (objects with ``.src``, ``.dst``).

    ``process`` writes the job's output and returns its record (a JSON-able dict; an
    ``"evaluations"`` entry goes into the manifest). An error from :data:`IMAGE_ERRORS`
    fails that job only; anything else propagates (it would fail every image).
    ``on_error(message)`` is told about each failure as it happens (this rank's only).
    ``shard``: "dynamic" (ranks pull the next image, largest first: best throughput) or
    "static" (a fixed split balanced by pixels: each rank's files known in advance).
    ``fatal`` exceptions propagate even when they are :data:`IMAGE_ERRORS` (e.g. missing weights).
    """
    from tqdm.auto import tqdm

    # Here, not at the top: `distributed` imports torch, and the command imports this
    # module before it parses its arguments (--help must not wait for torch).
    from patchscaler.command.distributed import ProgressCounter, WorkQueue, gather, shard_by_cost

    rank, world = (ctx.rank, ctx.world_size) if ctx is not None else (0, 1)
    costs = [pixel_cost(j.src) for j in jobs] if world > 1 else [1] * len(jobs)
    if world == 1:
        mine = range(len(jobs))
    elif shard == "dynamic":
        # A fresh key per call (every rank calls in the same order), so a second folder
        # run in the same process group starts its own queue.
        mine = WorkQueue(ctx, costs, key=f"patchscaler/next/{next(_RUNS)}")
    else:
        mine = shard_by_cost(costs, world, rank)
    manifest = Path(manifest) if manifest is not None else None
    if manifest is not None:
        manifest.parent.mkdir(parents=True, exist_ok=True)
    counter = ProgressCounter(ctx)
    bar = tqdm(total=len(jobs), desc="images", unit="image", disable=not progress or rank != 0, file=sys.stderr)

    records: list[tuple[int, dict]] = []
    failures: list[tuple[int, str, str]] = []
    skipped: list[tuple[int, str]] = []
    for i in mine:
        job = jobs[i]
        entry = {"input": str(job.src), "output": str(job.dst), "rank": rank}
        start = time.perf_counter()
        if not overwrite and Path(job.dst).is_file():
            skipped.append((i, str(job.src)))
            entry |= {"status": "skipped", "seconds": 0.0}
        else:
            try:
                record = process(job)
            except fatal:
                raise
            except IMAGE_ERRORS as exc:
                msg = image_error(job.src, exc)
                failures.append((i, str(job.src), msg))
                entry |= {"status": "failed", "error": msg, "seconds": round(time.perf_counter() - start, 4)}
                if on_error is not None:
                    on_error(msg)
            else:
                records.append((i, record))
                entry |= {
                    "status": "done",
                    "seconds": round(time.perf_counter() - start, 4),
                    "evaluations": record.get("evaluations"),
                }
        if manifest is not None:
            _append_line(manifest, entry)
        counter.add(1)
        bar.n = counter.value()
        bar.refresh()
    if rank == 0:
        # The others may still be working: keep the bar moving until the whole job is done.
        def update(done: int) -> None:
            bar.n = done
            bar.refresh()

        counter.wait_for(len(jobs), update)
    bar.close()

    parts = gather(ctx, (records, failures, skipped))
    result = FolderResult()
    result.records = [r for _, r in sorted((x for p in parts for x in p[0]), key=lambda t: t[0])]
    result.failures = [(s, m) for _, s, m in sorted((x for p in parts for x in p[1]), key=lambda t: t[0])]
    result.skipped = [s for _, s in sorted((x for p in parts for x in p[2]), key=lambda t: t[0])]
    return result
