"""Peak resident memory of the ``patchscaler`` command on an N×N photo, the `bicubic` set's PGS.

    python benchmarks/peak_rss.py 512 1024 --threads 1

The N×N input is made at run time by tiling the bundled example
(`patchscaler/examples/dandelions_lr.png`, 128×128) with reflection, in a temporary
folder; each size runs ``/usr/bin/time -v python -m patchscaler photo.png -o out.png -q
--model bicubic`` (the whole method, named since the default set became `real`, the GRM
alone; no other flags) and reports the "Maximum resident set size" and the wall time.
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

EXAMPLE = Path(__file__).resolve().parents[1] / "patchscaler" / "examples" / "dandelions_lr.png"


def reflected_photo(n: int) -> np.ndarray:
    """``[n, n, 3]`` uint8: the example tiled with reflection (no seams a patch would see as edges)."""
    src = np.asarray(Image.open(EXAMPLE).convert("RGB"))
    reps = -(-n // src.shape[0]) + 1
    return np.pad(src, ((0, reps * src.shape[0]), (0, reps * src.shape[1]), (0, 0)), mode="symmetric")[:n, :n]


def measure(n: int, threads: int, folder: Path) -> tuple[float, float]:
    """(peak RSS in GiB, wall seconds) of one run on an n×n photo."""
    src, dst = folder / f"photo_{n}.png", folder / f"photo_{n}_x4.png"
    Image.fromarray(reflected_photo(n)).save(src)
    cmd = ["/usr/bin/time", "-v", sys.executable, "-m", "patchscaler", str(src), "-o", str(dst), "-q", "--model", "bicubic",
           "--threads", str(threads)]
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{proc.stderr}")
    with Image.open(dst) as im:
        assert im.size == (4 * n, 4 * n), im.size
    kib = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", proc.stderr).group(1))
    return kib / 2**20, wall


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("sizes", type=int, nargs="+", help="LR side lengths")
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        for n in args.sizes:
            gib, wall = measure(n, args.threads, Path(tmp))
            print(f"{n}x{n} -> {4 * n}x{4 * n}: peak RSS {gib:.2f} GiB, {wall:.0f} s", flush=True)


if __name__ == "__main__":
    main()
