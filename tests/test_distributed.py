"""Sharding, the resumable folder run and its manifest, alone and on 2 gloo ranks (CPU)."""

from __future__ import annotations

import json
import os
import socket
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch.multiprocessing as mp

from patchscaler.command.distributed import shard_by_cost
from patchscaler.command.folder_run import run_jobs


@dataclass
class Job:
    src: Path
    dst: Path


def test_shard_by_cost_partitions_and_balances():
    costs = [5, 1, 1, 1, 1, 1, 9, 2, 2, 2, 3]
    shares = [shard_by_cost(costs, 3, r) for r in range(3)]
    assert sorted(sum(shares, [])) == list(range(len(costs)))  # every item exactly once
    loads = [sum(costs[i] for i in s) for s in shares]
    assert max(loads) - min(loads) <= max(costs) // 2
    assert shares == [shard_by_cost(costs, 3, r) for r in range(3)]  # deterministic
    assert all(s == sorted(s) for s in shares)
    assert shard_by_cost(costs, 1, 0) == list(range(len(costs)))
    with pytest.raises(ValueError, match="rank"):
        shard_by_cost(costs, 2, 2)


def _make_jobs(tmp: Path, n: int, bad: set[int] = frozenset()) -> list[Job]:
    from PIL import Image

    src, out = tmp / "in", tmp / "out"
    src.mkdir(exist_ok=True)
    out.mkdir(exist_ok=True)
    jobs = []
    for i in range(n):
        p = src / f"{i:02d}.png"
        if i in bad:
            p.write_bytes(b"not an image")
        else:
            Image.new("RGB", (4 + i, 5 + 2 * i), (i, 2 * i, 3 * i)).save(p)
        jobs.append(Job(p, out / f"{i:02d}.txt"))
    return jobs


def _process(job: Job) -> dict:
    from PIL import Image

    with Image.open(job.src) as im:
        size = im.size
    job.dst.write_text(f"{size}\n")
    return {"input": str(job.src), "evaluations": size[0]}


def test_run_alone_resumes_and_writes_a_manifest(tmp_path):
    jobs = _make_jobs(tmp_path, 5, bad={3})
    manifest = tmp_path / "out" / "manifest.jsonl"
    errors = []
    res = run_jobs(jobs, _process, manifest=manifest, progress=False, on_error=errors.append)
    assert [r["input"] for r in res.records] == [str(jobs[i].src) for i in (0, 1, 2, 4)]
    assert len(res.failures) == 1 and res.failures[0][0] == str(jobs[3].src) and errors == [res.failures[0][1]]
    lines = [json.loads(x) for x in manifest.read_text().splitlines()]
    assert [e["status"] for e in lines] == ["done", "done", "done", "failed", "done"]
    assert lines[1]["evaluations"] == 5 and "error" in lines[3]
    # A rerun skips what exists; the failed one is tried again; --overwrite redoes all.
    jobs[0].dst.write_text("kept\n")
    again = run_jobs(jobs, _process, manifest=manifest, progress=False)
    assert again.skipped == [str(jobs[i].src) for i in (0, 1, 2, 4)] and len(again.failures) == 1
    assert jobs[0].dst.read_text() == "kept\n"
    run_jobs(jobs, _process, overwrite=True, progress=False)
    assert jobs[0].dst.read_text() == "(4, 5)\n"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rank_main(rank: int, world: int, port: int, tmp: str, queue, shard: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank))
    from patchscaler.command.distributed import from_env

    ctx = from_env("cpu")
    jobs = [Job(Path(tmp) / "in" / f"{i:02d}.png", Path(tmp) / "out" / f"{i:02d}.txt") for i in range(7)]
    done = []

    def process(job):
        done.append(str(job.src))
        return _process(job)

    res = run_jobs(jobs, process, ctx=ctx, manifest=Path(tmp) / "out" / "manifest.jsonl", progress=False, shard=shard)
    queue.put((rank, done, [r["input"] for r in res.records], res.failures))
    ctx.close()


@pytest.mark.parametrize("shard", ["static", "dynamic"])
def test_two_gloo_ranks_split_the_folder_and_gather_failures(tmp_path, shard):
    jobs = _make_jobs(tmp_path, 7, bad={2})
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    port = _free_port()
    procs = [ctx.Process(target=_rank_main, args=(r, 2, port, str(tmp_path), queue, shard)) for r in range(2)]
    for p in procs:
        p.start()
    got = dict((r, (d, rec, f)) for r, d, rec, f in (queue.get(timeout=120) for _ in procs))
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    done0, done1 = got[0][0], got[1][0]
    assert not set(done0) & set(done1)
    if shard == "static":  # the fixed pixel-balanced split
        from patchscaler.command.folder_run import pixel_cost

        costs = [pixel_cost(j.src) for j in jobs]
        assert done0 == [str(jobs[i].src) for i in shard_by_cost(costs, 2, 0)]
        assert done1 == [str(jobs[i].src) for i in shard_by_cost(costs, 2, 1)]
    assert sorted(done0 + done1) == [str(j.src) for j in jobs]
    # Every rank returns the whole job's results, in input order, failures included.
    for r in (0, 1):
        assert got[r][1] == [str(jobs[i].src) for i in range(7) if i != 2]
        assert [s for s, _ in got[r][2]] == [str(jobs[2].src)]
    for i, j in enumerate(jobs):
        assert j.dst.is_file() == (i != 2)
    lines = [json.loads(x) for x in (tmp_path / "out" / "manifest.jsonl").read_text().splitlines()]
    assert sorted(e["input"] for e in lines) == sorted(str(j.src) for j in jobs)
    assert {e["rank"] for e in lines} <= {0, 1}
