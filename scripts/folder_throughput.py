"""Folder throughput: ``torchrun --nproc-per-node N -m patchscaler`` vs one process, same threads per process.

    python scripts/folder_throughput.py --images 16 --ranks 2      # -> benchmarks/results/folder-torchrun-cpu.md

The inputs are the first ``--images`` B100 photos, bicubic-downscaled (``--downscale``, default 2) into a temporary
folder (read from ../shared/data, never copied into the repository). Both runs use
``OMP_NUM_THREADS=1 --threads 1`` per process, the same seed and sampler, and their
outputs are compared byte for byte. Wall time includes process start and model loading,
as a user sees it. Run it on a quiet machine: it measures the cores.
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
B100 = REPO.parent / "shared" / "data" / "benchmark" / "B100" / "HR"


def _cpu_name() -> str:
    try:
        for line in subprocess.run(["lscpu"], capture_output=True, text=True).stdout.splitlines():
            if line.startswith("Model name:"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--images", type=int, default=16)
    p.add_argument("--ranks", type=int, default=2)
    p.add_argument("--sampler", default="pgs")
    p.add_argument("--downscale", type=int, default=2, help="LR = B100 photo bicubic-downscaled by this factor")
    p.add_argument("-o", "--output", type=Path, default=REPO / "benchmarks" / "results" / "folder-torchrun-cpu.md")
    a = p.parse_args()

    from patchscaler.data.images import list_images, load_image, modcrop, save_image
    from patchscaler.data.resize import bicubic_downscale

    tmp = Path(tempfile.mkdtemp(prefix="patchscaler-throughput-"))
    src = tmp / "in"
    src.mkdir()
    paths = list_images(B100)[: a.images]
    for path in paths:
        hr = modcrop(load_image(path), a.downscale)[None]
        save_image(bicubic_downscale(hr, a.downscale)[0], src / path.name)
    env = dict(os.environ, OMP_NUM_THREADS="1")
    common = [str(src), "--sampler", a.sampler, "--threads", "1", "--seed", "0", "-q"]
    runs = {
        "1 process": [sys.executable, "-m", "patchscaler", *common, "-o", str(tmp / "one")],
        f"torchrun, {a.ranks} ranks": [sys.executable, "-m", "torch.distributed.run", "--standalone",
                                       "--nproc-per-node", str(a.ranks), "-m", "patchscaler", *common,
                                       "-o", str(tmp / "many")],
    }
    seconds = {}
    for name, cmd in runs.items():
        t0 = time.perf_counter()
        r = subprocess.run(cmd, env=env, capture_output=True, text=True)
        seconds[name] = time.perf_counter() - t0
        if r.returncode != 0:
            print(r.stderr, file=sys.stderr)
            return 1
        print(f"{name}: {seconds[name]:.1f} s", file=sys.stderr)
    one = sorted((tmp / "one").glob("*.png"))
    same = all((tmp / "one" / f.name).read_bytes() == (tmp / "many" / f.name).read_bytes() for f in one)
    base, many = seconds["1 process"], seconds[f"torchrun, {a.ranks} ranks"]
    # Time spent on images (from the manifests): the busiest rank decides when the job ends.
    import json

    def busy(folder: Path) -> float:
        per_rank: dict[int, float] = {}
        for line in (folder / "manifest.jsonl").read_text().splitlines():
            e = json.loads(line)
            per_rank[e["rank"]] = per_rank.get(e["rank"], 0.0) + e["seconds"]
        return max(per_rank.values())

    busy_one, busy_many = busy(tmp / "one"), busy(tmp / "many")
    size = load_image(src / paths[0].name).shape
    lines = [
        f"# Folder throughput: torchrun {a.ranks} ranks vs 1 process ({a.images} images)",
        "",
        f"- command: `python scripts/folder_throughput.py --images {a.images} --ranks {a.ranks} --sampler {a.sampler} --downscale {a.downscale}`",
        f"- date: {time.strftime('%Y-%m-%dT%H:%M:%S%z')}; machine: {_cpu_name()}, {os.cpu_count()} cores; "
        f"1 torch thread per process (`OMP_NUM_THREADS=1 --threads 1`); load average at the end "
        f"{' '.join(f'{v:.2f}' for v in os.getloadavg())}",
        f"- inputs: the first {a.images} B100 photos, bicubic ×1/{a.downscale} (about {size[2]}×{size[1]} LR), sampler "
        f"`{a.sampler}`, seed 0; wall time of the whole command (start, model loading, all images)",
        "",
        "| run | wall seconds | images / s | speed-up (wall) | busiest rank's image seconds | speed-up (images) |",
        "|---|---|---|---|---|---|",
        f"| 1 process × 1 thread | {base:.1f} | {a.images / base:.2f} | 1.00× | {busy_one:.1f} | 1.00× |",
        f"| torchrun {a.ranks} ranks × 1 thread | {many:.1f} | {a.images / many:.2f} | **{base / many:.2f}×** | "
        f"{busy_many:.1f} | **{busy_one / busy_many:.2f}×** |",
        "",
        "Wall time includes what does not split: torchrun's start and every rank importing torch and",
        "loading the models (the difference between the two columns).",
        "",
        f"Outputs byte-identical between the two runs: {'yes' if same else 'NO'} ({len(one)} files).",
        "",
    ]
    a.output.parent.mkdir(parents=True, exist_ok=True)
    a.output.write_text("\n".join(lines))
    print("\n".join(lines))
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
