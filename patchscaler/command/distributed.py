"""Running under ``torchrun``: one process per device, the work split between them.

``torchrun`` (torch.distributed.elastic) starts the processes and sets ``RANK``,
``WORLD_SIZE``, ``LOCAL_RANK`` and the rendezvous address; this module turns those into a
:class:`Context` (process group with NCCL on GPUs, gloo on CPUs, the rank's device) and
gives the few collective helpers the folder run and the trainers need. A plain
``python`` process (no ``WORLD_SIZE`` or ``WORLD_SIZE=1``) gets ``None`` and runs alone.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from typing import Any, Sequence

import torch
import torch.distributed as dist

__all__ = ["Context", "from_env", "shard_by_cost", "gather", "ProgressCounter", "WorkQueue"]


@dataclass
class Context:
    """This process's place in the job."""

    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        dist.barrier()

    def close(self) -> None:
        if dist.is_initialized():
            dist.destroy_process_group()


def from_env(device: str | torch.device | None = None) -> Context | None:
    """Join the process group torchrun set up; None when not launched by torchrun (or alone).

    The device is ``device`` if given, else ``cuda:LOCAL_RANK`` when CUDA is available,
    else the CPU. The backend follows the device: NCCL for CUDA, gloo for the CPU.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return None
    rank, local = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if device is None:
        dev = torch.device(f"cuda:{local}") if torch.cuda.is_available() else torch.device("cpu")
    else:
        dev = torch.device(device)
        if dev.type == "cuda" and dev.index is None:
            dev = torch.device(f"cuda:{local}")
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if dev.type == "cuda" else "gloo")
    return Context(rank, world, local, dev)


def shard_by_cost(costs: Sequence[float], world_size: int, rank: int) -> list[int]:
    """Indices of the items rank ``rank`` takes: greedy balancing of ``costs`` (e.g. pixels).

    Deterministic on every rank: items by decreasing cost (ties by index) each go to the
    least-loaded rank so far (ties by lowest rank). Returned in increasing index order, so
    a rank processes its share in the input's (sorted) order.
    """
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} is not in a world of {world_size}")
    load = [0.0] * world_size
    mine = []
    for i in sorted(range(len(costs)), key=lambda j: (-float(costs[j]), j)):
        r = min(range(world_size), key=lambda q: (load[q], q))
        load[r] += float(costs[i])
        if r == rank:
            mine.append(i)
    return sorted(mine)


def gather(ctx: Context | None, obj: Any) -> list[Any]:
    """Every rank's ``obj`` (picklable), in rank order, on every rank; ``[obj]`` when alone."""
    if ctx is None:
        return [obj]
    out: list[Any] = [None] * ctx.world_size
    dist.all_gather_object(out, obj)
    return out


def _default_store():
    # The default group's store is the one torchrun's rendezvous made; c10d exposes it
    # only privately (None if that ever changes: callers then fall back to static work).
    from torch.distributed import distributed_c10d

    getter = getattr(distributed_c10d, "_get_default_store", None)
    return getter() if getter is not None and dist.is_initialized() else None


class WorkQueue:
    """Items handed out one at a time to whichever rank asks first, largest first.

    A static split by pixels cannot see that PGS spends more steps on textured photos than
    on smooth ones, so ranks finish at different times; pulling the next item from one
    shared counter (an atomic add on the rendezvous store) keeps every rank busy to the
    end. Which rank takes which item then varies between runs; what each item's result
    is does not (every image has its own seed). Alone, or without a store, it yields
    this rank's static share (:func:`shard_by_cost`).
    """

    def __init__(self, ctx: Context | None, costs: Sequence[float], key: str = "patchscaler/next"):
        self.ctx, self.key = ctx, key
        self.order = sorted(range(len(costs)), key=lambda j: (-float(costs[j]), j))
        self.costs = costs
        self._store = _default_store() if ctx is not None else None

    def __iter__(self):
        if self.ctx is None:
            yield from range(len(self.costs))
            return
        if self._store is None:
            yield from shard_by_cost(self.costs, self.ctx.world_size, self.ctx.rank)
            return
        while True:
            k = self._store.add(self.key, 1) - 1
            if k >= len(self.order):
                return
            yield self.order[k]


class ProgressCounter:
    """A job-wide count of finished items, kept in the rendezvous store.

    Ranks finish files at their own pace, so no collective can run per file; instead each
    rank adds to one key of the process group's store, and rank 0 reads it to draw a
    single progress bar for the whole job. Alone, it is a plain counter.
    """

    def __init__(self, ctx: Context | None, key: str = "patchscaler/done"):
        self.ctx, self.key, self._local = ctx, key, 0
        self._store = _default_store() if ctx is not None else None  # None: an all-local count

    def add(self, n: int = 1) -> None:
        self._local += n
        if self._store is not None:
            self._store.add(self.key, n)

    def value(self) -> int:
        return self._store.add(self.key, 0) if self._store is not None else self._local

    def wait_for(self, total: int, on_update=None, poll_s: float = 0.2) -> None:
        """Block until ``total`` items are done job-wide, calling ``on_update(done)`` as it grows."""
        last = -1
        while True:
            done = self.value()
            if done != last and on_update is not None:
                on_update(done)
            last = done
            if done >= total or self._store is None:
                return
            time.sleep(poll_s)
