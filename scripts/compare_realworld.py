"""One run: Real-ESRGAN x4plus (ncnn, CPU) beside PatchScaler on real-world inputs (SPEC §5).

    python scripts/compare_realworld.py --threads 2 --limit-realworld 8 --limit-b100 10

Datasets (each optional, ``--datasets``):

* ``RealSRSet`` (``../shared/data/realworld/RealSRSet``): real LR photos, no ground
  truth. NIQE of SR, and the HF ratio of SR against the bicubic ×4 upsampling of the
  input (how much high-frequency energy a method adds; 1 = as much as bicubic), both
  with a 4-px border crop: the ``--degradation none`` protocol of ``patchscaler.eval``.
* ``B100`` (``../shared/data/benchmark/B100``) under the seeded real-degradation
  protocol: HR cropped (bottom/right) to a multiple of 4, LR =
  ``patchscaler.data.degradations.degrade_image(hr, name)`` with the HR file name (seed
  0, default pipeline) — the LR of ``python -m patchscaler.eval --degradation real``.
  PSNR / SSIM on BT.601 Y (full-range grey for single-channel files), NIQE and the HF ratio
  SR/HR, 4-px border crop: every score comes from ``patchscaler.eval.image_metrics``, so the
  two tools give the same digits for the same method. (Before 2026-12-05 this script took
  Y of grey files as of RGB, 0.1 dB above eval on Set14, whose bridge is grey.)

Methods (``--methods``): ``realesrgan`` (x4plus through ncnn, ``patchscaler/train/teacher.py``,
same thread count), ``grm`` (``patchscaler.upscale(sampler="none")``), ``pgs``
(``sampler="pgs"``), ``bicubic`` (the reference point). ``--model`` is passed to
``patchscaler.upscale`` only when its signature has a ``model`` parameter; the report
records which model set ran. seconds = wall time of the method call alone, per image,
after one untimed warm-up call per method on a small input. Metrics run with one torch
thread (as in eval.py).

Writes ``<out>.md`` and ``<out>.json`` (default ``benchmarks/results/realworld-compare-x4``,
the subset size in the title and the file), with the exact command, the CPU model, core
count, thread count and the machine's load average at the start.
"""

from __future__ import annotations

import argparse
import datetime
import inspect
import json
import math
import os
import platform
import shlex
import subprocess
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))

import patchscaler  # noqa: E402
from patchscaler.data.resize import bicubic_upscale, quantize  # noqa: E402
from patchscaler.eval import image_metrics, scoring_references  # noqa: E402
from patchscaler.eval import load_pair as eval_load_pair  # noqa: E402

SCALE, BORDER = 4, 4
DATA = REPO.parent / "shared" / "data"
DATASETS = {"RealSRSet": DATA / "realworld" / "RealSRSet", "B100": DATA / "benchmark" / "B100" / "HR",
            "Set14": DATA / "benchmark" / "Set14" / "HR"}
METHODS = ("realesrgan", "grm", "pgs", "bicubic")  # grm and pgs take a model set: grm:real, pgs:bicubic
IMAGE_EXT = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp"}
LABELS = {
    "realesrgan": "Real-ESRGAN x4plus (ncnn, CPU)",
    "grm": "PatchScaler GRM alone (`sampler=\"none\"`)",
    "pgs": "PatchScaler PGS (`sampler=\"pgs\"`)",
    "bicubic": "bicubic",
}


def label(method: str) -> str:
    """Table label of ``grm``, ``grm:real``, ...: the set is named where the method names one."""
    name, _, model = method.partition(":")
    return LABELS[name] + (f", `{model}` set" if model else "")


def cpu_model() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
        for line in out.splitlines():
            if line.startswith("Model name:"):
                return line.split(":", 1)[1].strip()
    except (OSError, subprocess.CalledProcessError):
        pass
    return platform.processor() or platform.machine()


def upscale_model_kw(model: str | None) -> tuple[dict, str]:
    """({"model": ...} or {}, a description of the model set that runs)."""
    params = inspect.signature(patchscaler.upscale).parameters
    if "model" not in params:
        if model is not None:
            raise SystemExit(f"--model {model!r}: this patchscaler.upscale has no `model` parameter")
        return {}, "shipped weights (this `patchscaler.upscale` has no `model` parameter)"
    if model is None:
        return {}, f"model={params['model'].default!r} (upscale's default)"
    return {"model": model}, f"model={model!r}"


def make_methods(names: list[str], threads: int, tile: int, overlap: int, model_kw: dict) -> dict:
    methods = {}
    for method in names:
        name, _, model = method.partition(":")
        kw = {"model": model} if model else model_kw
        if name == "realesrgan":
            from patchscaler.train.teacher import RealESRGAN

            net = RealESRGAN(threads=threads, tile=tile, overlap=overlap)
            methods[method] = lambda lr, net=net: (net(lr), {})
        elif name in ("grm", "pgs"):
            sampler = "none" if name == "grm" else "pgs"

            def run(lr, sampler=sampler, kw=kw):
                hr, groups = patchscaler.upscale(lr, sampler=sampler, seed=0, device="cpu", return_groups=True, **kw)
                return hr, ({"dit_evaluations": int(groups.evaluations)} if sampler == "pgs" else {})

            methods[method] = run
        elif name == "bicubic":
            methods[method] = lambda lr: (bicubic_upscale(lr[None], SCALE)[0], {})
        else:
            raise SystemExit(f"unknown method {method!r}; choose from {', '.join(METHODS)} (grm/pgs may name a set: grm:real)")
    return methods


def list_images(folder: Path, limit: int | None) -> list[Path]:
    if not folder.is_dir():
        raise SystemExit(f"{folder}: not a folder")
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_EXT)
    return files[:limit] if limit else files


def load_pair(path: Path, dataset: str) -> tuple[torch.Tensor | None, torch.Tensor]:
    """(HR [3,H,W] or None, LR [3,h,w]): `patchscaler.eval.load_pair` under the dataset's protocol."""
    hr, lr = eval_load_pair(path, SCALE, "none" if dataset == "RealSRSet" else "real")
    return (None if hr is None else hr[0]), lr[0]


def metrics(sr: torch.Tensor, hr: torch.Tensor | None, refs: tuple[bool, torch.Tensor]) -> dict[str, float]:
    """`patchscaler.eval.image_metrics`, the scoring of ``python -m patchscaler.eval``, against
    the image's ``refs`` (`patchscaler.eval.scoring_references`: the same luma rule for grey
    files and the same HF reference); the PSNR/SSIM keys are left out where there is no
    ground truth."""
    scores = image_metrics(sr, hr, BORDER, *refs)
    return {k: v for k, v in scores.items() if not (hr is None and k in ("psnr", "ssim"))}


def _mean(vals: list[float]) -> float | None:
    vals = [v for v in vals if v is not None and math.isfinite(v)]
    return sum(vals) / len(vals) if vals else None


def summarise(per_image: list[dict], methods: list[str]) -> dict:
    out = {}
    for m in methods:
        rows = [r[m] for r in per_image if m in r]
        keys = sorted({k for r in rows for k in r})
        out[m] = {k: _mean([r.get(k) for r in rows]) for k in keys}
        hf = sorted(r["hf_ratio"] for r in rows if "hf_ratio" in r and math.isfinite(r["hf_ratio"]))
        if hf:  # the mean of ratios is led by images whose reference has almost no HF energy
            out[m]["hf_ratio_median"] = (hf[(len(hf) - 1) // 2] + hf[len(hf) // 2]) / 2
        out[m]["images"] = len(rows)
    return out


def _f(v, digits):
    return "–" if v is None else f"{v:.{digits}f}"


def markdown(report: dict) -> str:
    h = report["header"]
    lines = [
        f"# Real-world ×4: Real-ESRGAN x4plus vs PatchScaler ({h['subset']})",
        "",
        f"- command: `{h['command']}`",
        f"- date: {h['date']}; machine: {h['cpu']} ({h['cores']} cores), {h['threads']} thread{'s' if h['threads'] > 1 else ''} for every method "
        f"(torch and ncnn); load average at start {h['loadavg']} (a training job shared the cores)",
        f"- PatchScaler: {h['patchscaler_model']} where a method names no set, seed 0, quality \"balanced\"; "
        f"weights root {h.get('weights', 'the package')}; Real-ESRGAN: {h['realesrgan']}",
        "- seconds: wall time of the method call per image (after one untimed warm-up per method); "
        "metrics with a 4-px border crop; NIQE = standard NIQE (MATLAB's pristine parameters; lower is better), "
        "NIQE own = with this project's pristine fit (the NIQE of reports before 2026-12-05)",
        "",
    ]
    for ds, body in report["datasets"].items():
        s = body["summary"]
        if ds == "RealSRSet":
            lines += [f"## RealSRSet ({body['images']} of {body['available']} images, no reference)", "",
                      "HF = high-frequency energy of SR over that of the bicubic ×4 upsampling of the input "
                      "(bicubic leaves almost none above half Nyquist, so the ratios are large and the mean is "
                      "led by a few images; the median is steadier).", "",
                      "| method | NIQE | NIQE own | HF vs bicubic, mean / median | s / image |", "|---|---|---|---|---|"]
            for m, r in s.items():
                lines.append(f"| {label(m)} | {_f(r.get('niqe'), 3)} | {_f(r.get('niqe_project'), 3)} | {_f(r.get('hf_ratio'), 1)} / "
                             f"{_f(r.get('hf_ratio_median'), 1)} | {_f(r.get('seconds'), 2)} |")
        else:
            lines += [f"## {ds}, seeded real degradation ({body['images']} of {body['available']} images)", "",
                      "LR = `degrade_image(hr, name)` (as `python -m patchscaler.eval --degradation real`); "
                      "PSNR/SSIM on Y; HF = SR/HR.", "",
                      "| method | PSNR | SSIM | NIQE | NIQE own | HF | s / image |", "|---|---|---|---|---|---|---|"]
            for m, r in s.items():
                lines.append(f"| {label(m)} | {_f(r.get('psnr'), 2)} | {_f(r.get('ssim'), 4)} | {_f(r.get('niqe'), 3)} "
                             f"| {_f(r.get('niqe_project'), 3)} "
                             f"| {_f(r.get('hf_ratio'), 3)} | {_f(r.get('seconds'), 2)} |")
        for m, r in s.items():
            if r.get("dit_evaluations") is not None:
                lines += ["", f"{label(m)}: {r['dit_evaluations']:.0f} DiT patch-evaluations per image on average."]
        lines += ["", "Images: " + ", ".join(body["files"]), ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--datasets", default="RealSRSet,B100", help="comma list of RealSRSet, B100, Set14")
    p.add_argument("--methods", default=",".join(METHODS),
                   help=f"comma list of {', '.join(METHODS)}; grm and pgs may name a model set (grm:real,pgs:bicubic)")
    p.add_argument("--limit", type=int, default=None, help="first N images (sorted by name) of every dataset")
    p.add_argument("--limit-realworld", type=int, default=None, help="overrides --limit for RealSRSet")
    p.add_argument("--limit-b100", type=int, default=None, help="overrides --limit for B100")
    p.add_argument("--threads", type=int, default=2, help="torch and ncnn threads")
    p.add_argument("--model", default=None, help="patchscaler model set (passed only if upscale() takes `model`)")
    p.add_argument("--tile", type=int, default=512, help="Real-ESRGAN input tile side (0 = whole image)")
    p.add_argument("--overlap", type=int, default=16, help="Real-ESRGAN tile context, LR px per side")
    p.add_argument("--out", default=None, help="output stem (default benchmarks/results/realworld-compare-x4-<subset>-<threads>)")
    p.add_argument("--render", metavar="JSON", default=None, help="only rewrite the markdown of an existing report")
    a = p.parse_args(argv)
    if a.render:
        with open(a.render) as f:
            report = json.load(f)
        for body in report["datasets"].values():
            body["summary"] = summarise(body["per_image"], list(body["summary"]))
        with open(a.render, "w") as f:
            json.dump(report, f, indent=1)
        with open(a.render[: -len(".json")] + ".md", "w") as f:
            f.write(markdown(report))
        print(f"rewrote {a.render[: -len('.json')]}.md")
        return 0

    torch.set_num_threads(a.threads)
    names = [m for m in a.methods.split(",") if m]
    model_kw, model_desc = upscale_model_kw(a.model)
    methods = make_methods(names, a.threads, a.tile, a.overlap, model_kw)
    limits = {"RealSRSet": a.limit_realworld or a.limit, "B100": a.limit_b100 or a.limit, "Set14": a.limit}
    datasets = [d for d in a.datasets.split(",") if d]
    for d in datasets:
        if d not in DATASETS:
            raise SystemExit(f"unknown dataset {d!r}; choose from {', '.join(DATASETS)}")
    files = {d: list_images(DATASETS[d], limits[d]) for d in datasets}
    available = {d: len(list_images(DATASETS[d], None)) for d in datasets}
    subset = ", ".join(f"{d} {len(files[d])}/{available[d]}" for d in datasets)
    stem = a.out or str(REPO / "benchmarks" / "results" / ("realworld-compare-x4-"
                                                          + "-".join(f"{d.lower()}-{len(files[d])}" for d in datasets)
                                                          + f"-{a.threads}thread" + ("s" if a.threads > 1 else "")))

    warm = torch.rand(3, 24, 24, generator=torch.Generator().manual_seed(0))
    for fn in methods.values():
        with torch.inference_mode():
            fn(warm)

    report = {
        "header": {
            "command": "python " + " ".join(shlex.quote(x) for x in ([os.path.relpath(__file__, REPO)] + (argv if argv is not None else sys.argv[1:]))),
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "cpu": cpu_model(),
            "cores": os.cpu_count(),
            "threads": a.threads,
            "loadavg": " ".join(f"{x:.2f}" for x in os.getloadavg()),
            "torch": torch.__version__,
            "patchscaler_model": model_desc,
            "realesrgan": f"tile {a.tile}, overlap {a.overlap}",
            "weights": os.environ.get("PATCHSCALER_WEIGHTS", "the package's own"),
            "subset": subset,
        },
        "datasets": {},
    }
    try:
        import ncnn

        report["header"]["ncnn"] = getattr(ncnn, "__version__", "?")
    except ImportError:
        pass

    def write():
        Path(stem).parent.mkdir(parents=True, exist_ok=True)
        with open(stem + ".json", "w") as f:
            json.dump(report, f, indent=1)
        with open(stem + ".md", "w") as f:
            f.write(markdown(report))

    for d in datasets:
        per_image = []
        body = {"images": 0, "available": available[d], "files": [], "summary": {}, "per_image": per_image}
        report["datasets"][d] = body
        for path in files[d]:
            hr, lr = load_pair(path, d)
            refs = scoring_references(path, hr, lr, SCALE)  # once per image, for every method
            row = {"file": path.name, "lr_size": list(lr.shape[-2:])}
            for m, fn in methods.items():
                t0 = time.perf_counter()
                with torch.inference_mode():
                    sr, stats = fn(lr)
                sec = time.perf_counter() - t0
                sr = quantize(sr.float())  # uint8 levels by eval.py's rounding rule
                row[m] = {**metrics(sr, hr, refs), **stats, "seconds": sec}
            per_image.append(row)
            body["files"].append(path.name)
            body["images"] = len(per_image)
            body["summary"] = summarise(per_image, list(methods))
            print(f"{d} {path.name} {tuple(lr.shape[-2:])}: " + "; ".join(
                f"{m} {row[m]['seconds']:.1f}s NIQE {row[m]['niqe']:.2f}" + (f" PSNR {row[m]['psnr']:.2f}" if 'psnr' in row[m] else "")
                for m in methods), flush=True)
            write()
    write()
    print(f"wrote {stem}.md and .json")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
