"""Does the command's default thread count collapse when another process wants a core?

    python benchmarks/threads_under_load.py --reps 5 --out benchmarks/results/threads-under-load.md

Runs ``python -m patchscaler <example 128²> -q --json - --model bicubic`` (its PGS: the
measured work; named since the default set became `real`, the GRM alone) in
fresh processes, for each thread setting (the command's default; ``--threads 1``; more with
``--variant``) both quiet and beside a competing busy process (a pure-Python spin loop
started here and killed after, pinned to no CPU, so the scheduler puts it where it likes).
The conditions are interleaved, their order rotating per repetition, so slow drift of the
machine (another job, thermal state) lands on every condition alike; what is reported is
each condition's median and its ratio to the default-quiet median of the same run.

Two times per run: ``wall`` (the whole process, imports and weight loading included: what a
user waits for) and ``image`` (the command's own per-image ``seconds``: read, upscale, write).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = Path("patchscaler") / "examples" / "dandelions_lr.png"  # in the checkout that runs
# A competing CPU-bound process: pure Python, so it holds one core and nothing else.
SPIN = "while True: pass"


def _run(variant: dict, out: Path, repo: Path) -> tuple[float, float]:
    """One command run of the checkout ``repo``; (wall seconds, per-image seconds)."""
    cmd = [sys.executable, "-m", "patchscaler", str(EXAMPLE), "-o", str(out), "-q", "--json", "-", "--model", "bicubic",
           *variant["args"]]
    repo = variant.get("repo", repo)
    env = {**os.environ, "PYTHONPATH": str(repo), **variant.get("env", {})}
    start = time.perf_counter()
    res = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=repo, timeout=600)
    wall = time.perf_counter() - start
    if res.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed ({res.returncode}):\n{res.stderr}")
    return wall, json.loads(res.stdout)["images"][0]["seconds"]


def measure(variants: dict[str, dict], reps: int, out: Path, repo: Path) -> dict[tuple[str, bool], list[tuple[float, float]]]:
    conditions = [(name, busy) for name in variants for busy in (False, True)]
    times: dict[tuple[str, bool], list[tuple[float, float]]] = {c: [] for c in conditions}
    for rep in range(reps):
        order = conditions[rep % len(conditions):] + conditions[: rep % len(conditions)]
        for name, busy in order:
            spinner = subprocess.Popen([sys.executable, "-c", SPIN]) if busy else None
            try:
                if spinner is not None:
                    time.sleep(0.5)  # let it get scheduled before the measured process starts
                t = _run(variants[name], out, repo)
            finally:
                if spinner is not None:
                    spinner.kill()
                    spinner.wait()
            times[(name, busy)].append(t)
            print(f"rep {rep} {name:>12s} {'busy' if busy else 'quiet':5s} wall {t[0]:6.2f} s image {t[1]:6.2f} s",
                  file=sys.stderr, flush=True)
    return times


def _machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    import torch

    return (f"{cpu}; {os.cpu_count()} CPUs, {len(os.sched_getaffinity(0))} available to the process; "
            f"torch {torch.__version__}, torch.get_num_threads() = {torch.get_num_threads()} in a fresh process")


def report(times, variants, reps: int, argv: list[str], load_before: str, load_after: str) -> str:
    base = {k: statistics.median(t[k] for t in times[("default", False)]) for k in (0, 1)}
    lines = [
        "| threads | competing process | wall median (s) | wall / default quiet | image median (s) "
        "| image / default quiet | image min–max (s) |",
        "|---|---|---|---|---|---|---|",
    ]
    for (name, busy), t in times.items():
        wall, img = statistics.median(x[0] for x in t), statistics.median(x[1] for x in t)
        lo, hi = min(x[1] for x in t), max(x[1] for x in t)
        lines.append(f"| {name} | {'yes' if busy else 'no'} | {wall:.2f} | {wall / base[0]:.2f} | {img:.2f} "
                     f"| {img / base[1]:.2f} | {lo:.2f}–{hi:.2f} |")
    described = "; ".join(f"`{n}`: {v['describe']}" for n, v in variants.items())
    return "\n".join([
        f"Command: `python benchmarks/{Path(__file__).name} {' '.join(argv)}` "
        f"({reps} repetitions per condition, interleaved; medians).",
        "",
        f"Machine: {_machine()}.",
        f"Load (`uptime`) before: {load_before}; after: {load_after}.",
        "",
        f"Variants: {described}.",
        "",
        *lines,
        "",
    ])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--repo", type=Path, default=ROOT,
                   help="the checkout whose command runs (default this one)")
    p.add_argument("--out", type=Path, default=None, help="write the markdown table here (also printed)")
    p.add_argument("--variant", action="append", default=[], metavar="NAME=ARGS",
                   help="another setting to compare: 'passive=env:OMP_WAIT_POLICY=PASSIVE' (an environment variable), "
                   "'t2=--threads 2' (options), 'before=repo:/tmp/old' (another checkout's command, no options)")
    args = p.parse_args(argv)
    variants = {
        "default": {"args": [], "describe": "no --threads (the command's default)"},
        "1": {"args": ["--threads", "1"], "describe": "`--threads 1`"},
    }
    for spec in args.variant:
        name, _, rest = spec.partition("=")
        if rest.startswith("repo:"):
            repo = Path(rest[5:]).resolve()
            variants[name] = {"args": [], "repo": repo, "describe": f"no --threads, the checkout in `{repo}`"}
        elif rest.startswith("env:"):
            key, _, value = rest[4:].partition("=")
            variants[name] = {"args": [], "env": {key: value}, "describe": f"no --threads, `{key}={value}`"}
        else:
            variants[name] = {"args": rest.split(), "describe": f"`{rest}`"}
    out_png = Path(os.environ.get("TMPDIR", "/tmp")) / f"threads_under_load_{os.getpid()}.png"
    load_before = subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    try:
        times = measure(variants, args.reps, out_png, args.repo.resolve())
    finally:
        out_png.unlink(missing_ok=True)
    load_after = subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    text = report(times, variants, args.reps, argv if argv is not None else sys.argv[1:], load_before, load_after)
    print(text)
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
