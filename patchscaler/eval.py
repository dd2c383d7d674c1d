"""Benchmark super-resolution methods on folders of HR images (SPEC §5).

    python -m patchscaler.eval --data ../shared/data/benchmark/Set5 \
        --data ../shared/data/benchmark/Set14 --scale 4 \
        --method bicubic --method grm --json results.json

Protocol, per HR image (``--degradation bicubic``, the standard benchmark):

* HR is cropped (bottom/right) to a multiple of the scale (`modcrop`);
* LR = MATLAB-compatible bicubic 1/scale downscaling (antialiased), quantised to
  uint8 levels like the published LR files (`data.resize.bicubic_downscale`);
  with ``--degradation real`` the LR is made by the real-world pipeline instead
  (`data.degradations.degrade_image`: blur, resize, noise, JPEG twice, then sinc +
  JPEG), seeded by the image's file name and ``--degradation-seed``, so every run
  and every method sees the same LR;
* SR = method(LR), clamped to [0, 1] and quantised to uint8 levels;
* PSNR and SSIM on the BT.601 Y channel (on the grey values for single-channel
  HR files such as Set14 bridge.png, as the published MATLAB scripts do), NIQE of SR and the high-frequency energy
  ratio SR/HR (`metrics/`), all after cropping `scale` pixels from every border;
* seconds = wall time of the method calls only (data loading, LR synthesis and
  metrics excluded; CUDA synchronised), summed over the dataset's images. Each
  method first runs once untimed on a tiny input so lazy set-up is not counted.

With ``--degradation none`` the files are themselves the LR inputs (real photos
without ground truth, e.g. RealSRSet): only NIQE of SR and the HF ratio of SR
against the bicubic ×scale upsampling of the input (how much high-frequency
energy a method adds; 1 = as much as bicubic) are reported.

Scores are means of per-image values. NIQE needs ≥ 96×96 pixels; smaller images
get no NIQE and are left out of that mean. Non-finite means (PSNR of identical
images is +inf) are written to JSON as null.

Output JSON: ``{dataset: {method: {"psnr", "ssim", "niqe" (standard), "niqe_project", "hf_ratio", "seconds",
"images", ...method stats}}}``. A method may report extra per-image counters
(e.g. DiT patch evaluations); they are summed over the dataset and stored
under their own key.

A --data folder may be the HR folder itself or a dataset folder with an ``HR``
subfolder (``benchmark/Set5`` or ``benchmark/Set5/HR``); either way the dataset is
named after the dataset folder (``Set5``). A bad folder, an empty folder or an
image that cannot be decoded stops the run before any result is written, with a
one-line message naming the path and exit code 2 — silently skipping an image
would give numbers that are not comparable with published ones.

Adding a method: decorate a factory ``(scale, device, model) -> method`` with
``@register_method("name")`` in this module; ``method(lr [1,3,h,w] float [0,1] on
device)`` returns ``sr [1,3,s·h,s·w]`` or ``(sr, {"counter": number, ...})``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor

from patchscaler.data.images import list_images, load_image, modcrop, save_image
from patchscaler.data.resize import bicubic_downscale, bicubic_upscale, quantize
from patchscaler.metrics.confidence import patch_confidence_and_mse, spearman
from patchscaler.metrics.hf_ratio import hf_ratio
from patchscaler.metrics.niqe import BLOCK as NIQE_MIN_SIZE
from patchscaler.metrics.niqe import niqe_scores
from patchscaler.metrics.psnr import psnr_y
from patchscaler.metrics.ssim import ssim_y
from patchscaler.sampling.registry import DEFAULT_MODEL, EVAL_METHODS, MODEL_SETS, check_model

__all__ = [
    "EvalError",
    "Dataset",
    "register_method",
    "available_methods",
    "make_method",
    "model_for",
    "find_dataset",
    "load_pair",
    "is_single_channel_file",
    "scoring_references",
    "image_metrics",
    "evaluate",
    "confidence_spearman",
    "main",
]

MethodResult = Tensor | tuple[Tensor, dict[str, float]]
Method = Callable[[Tensor], MethodResult]
MethodFactory = Callable[[int, torch.device, str], Method]  # (scale, device, model set)

_METHODS: dict[str, MethodFactory] = {}

# Metrics computed for every (image, method); seconds/images and method stats are added.
# niqe: standard NIQE (MATLAB's pristine parameters); niqe_project: the project's own pristine
# fit, the NIQE of results before 2026-12-05, kept as a second column.
METRICS = ("psnr", "ssim", "niqe", "niqe_project", "hf_ratio")


class EvalError(Exception):
    """A user-facing problem (bad path, unreadable image, missing weights): one line, exit 2."""


def register_method(name: str) -> Callable[[MethodFactory], MethodFactory]:
    """Register `factory(scale, device, model) -> method` under `name` for `--method name`."""

    def deco(factory: MethodFactory) -> MethodFactory:
        if name in _METHODS:
            raise ValueError(f"method {name!r} is already registered")
        _METHODS[name] = factory
        return factory

    return deco


def available_methods() -> list[str]:
    """Names accepted by `--method`, sorted."""
    return sorted(_METHODS)


def model_for(degradation: str) -> str:
    """The model set a protocol evaluates when none is named: the set trained for its
    degradation (the sets are named after theirs), else `DEFAULT_MODEL` (``none``: photos).
    Why not `DEFAULT_MODEL` always: the classic bicubic protocol measures the `bicubic` set,
    whatever `upscale()` defaults to, so its commands keep measuring what they measured."""
    return degradation if degradation in MODEL_SETS else DEFAULT_MODEL


def make_method(name: str, scale: int, device: str | torch.device = "cpu", model: str = DEFAULT_MODEL) -> Method:
    """Instantiate a registered method with model set ``model``'s weights; raises EvalError
    if unknown/unavailable (a missing set or file included)."""
    if name not in _METHODS:
        raise EvalError(f"unknown method {name!r} (available: {', '.join(available_methods())})")
    try:
        return _METHODS[name](scale, torch.device(device), check_model(model))
    except FileNotFoundError as e:
        raise EvalError(f"method {name!r}: {e}") from e


@register_method("bicubic")
def _bicubic(scale: int, device: torch.device, model: str) -> Method:
    """MATLAB-compatible bicubic upscaling: the classic baseline."""
    return lambda lr: bicubic_upscale(lr, scale)


@register_method("grm")
def _grm(scale: int, device: torch.device, model: str) -> Method:
    """The Global Restoration Module alone: its coarse latent y0 decoded by the codec."""
    from patchscaler.models.grm import load_grm

    return load_grm(scale, device=device, model=model).upscale


def _diffusion_method(sampler: str, quality: str) -> MethodFactory:
    """The whole pipeline with `sampler` and `quality`; reports DiT patch-evaluations and patches per image."""

    def factory(scale: int, device: torch.device, model: str) -> Method:
        from patchscaler.api import get_pipeline

        pipe = get_pipeline(sampler, scale, device, torch.float32, quality, model)

        def run(lr: Tensor) -> tuple[Tensor, dict[str, float]]:
            (sr, groups), = pipe.upscale_images([lr[0]], seed=0)
            return sr[None], {"dit_evaluations": groups.evaluations, "patches": int(groups.group.numel())}

        return run

    factory.__doc__ = f"The pipeline with sampler {sampler!r}, preset {quality!r}."
    return factory


for _name, (_sampler, _quality) in EVAL_METHODS.items():  # pgs, pgs-fast, pgs-detail, uniform
    register_method(_name)(_diffusion_method(_sampler, _quality))
del _name, _sampler, _quality


@dataclass
class Dataset:
    """A named list of HR image files."""

    name: str
    folder: Path
    paths: list[Path] = field(default_factory=list)


def find_dataset(path: str | os.PathLike, limit: int | None = None) -> Dataset:
    """Resolve a --data argument to its HR images (see module docstring); EvalError if unusable."""
    folder = Path(path)
    if not folder.exists():
        raise EvalError(f"{path}: no such folder")
    if not folder.is_dir():
        raise EvalError(f"{path}: not a folder")
    if (folder / "HR").is_dir():
        name, folder = folder.resolve().name, folder / "HR"
    elif folder.name == "HR":
        name = folder.resolve().parent.name
    else:
        name = folder.resolve().name
    paths = list_images(folder)
    if not paths:
        raise EvalError(f"{folder}: no images found")
    if limit is not None:
        paths = paths[:limit]
    for p in paths:
        _check_readable(p)
    return Dataset(name, folder, paths)


def _check_readable(path: Path) -> None:
    """Cheap header check before a long run; truncated data is still caught when decoding."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            im.verify()
    except Exception as e:  # PIL raises many types for broken files
        raise EvalError(f"{path}: cannot read image ({type(e).__name__}: {e})") from e


def is_single_channel_file(path: Path) -> bool:
    """Whether the file stores one grey channel (MATLAB `imread` gives H×W): see `metrics.ycbcr`."""
    from PIL import Image

    with Image.open(path) as im:
        return im.mode in ("1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "F")


DEGRADATIONS = ("bicubic", "real", "none")


def load_pair(path: Path, scale: int, degradation: str = "bicubic", seed: int = 0) -> tuple[Tensor | None, Tensor]:
    """(HR [1,3,H,W] modcropped, LR [1,3,H/s,W/s] with uint8 levels), fp32 CPU.

    ``degradation``: "bicubic" (MATLAB bicubic), "real" (the seeded real-world
    pipeline), or "none" (the file is the LR; HR is None).
    """
    if degradation not in DEGRADATIONS:
        raise EvalError(f"unknown degradation {degradation!r}; choose from {', '.join(DEGRADATIONS)}")
    try:
        img = load_image(path)
    except OSError as e:
        raise EvalError(f"{path}: cannot read image ({e})") from e
    if degradation == "none":
        return None, img[None]
    hr = modcrop(img, scale)[None]
    # PSNR/SSIM crop `scale` px per side and SSIM needs an 11×11 window after that.
    if min(hr.shape[-2:]) < 2 * scale + 11:
        raise EvalError(f"{path}: image {tuple(hr.shape[-2:])} is too small for the x{scale} protocol "
                        f"(needs >= {2 * scale + 11} px per side)")
    if degradation == "real":
        from patchscaler.data.degradations import DegradationConfig, degrade_image

        return hr, degrade_image(hr[0], path.name, seed, DegradationConfig(scale=scale))[None]
    return hr, bicubic_downscale(hr, scale)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _run_timed(method: Method, lr: Tensor, device: torch.device) -> tuple[Tensor, dict[str, float], float]:
    """Run `method` on lr (moved to `device`); return (sr on CPU, stats, seconds)."""
    lr = lr.to(device)
    _sync(device)
    t0 = time.perf_counter()
    with torch.inference_mode():
        out = method(lr)
    _sync(device)
    seconds = time.perf_counter() - t0
    sr, stats = out if isinstance(out, tuple) else (out, {})
    return sr.detach().float().cpu(), dict(stats), seconds


def scoring_references(path: Path, hr: Tensor | None, lr: Tensor, scale: int) -> tuple[bool, Tensor]:
    """(grey, hf_reference) of one image, made once for all the methods scored on it by
    `image_metrics`: whether its file is single-channel grey (scored on full-range grey,
    as MATLAB does), and what the HF ratio is taken against (HR; without ground truth the
    quantised bicubic ×scale of ``lr``, ``[..., 3, h, w]``)."""
    grey = hr is not None and is_single_channel_file(path)
    return grey, hr if hr is not None else quantize(bicubic_upscale(lr, scale).clamp(0, 1))


def image_metrics(sr: Tensor, hr: Tensor | None, border: int, grey: bool = False, hf_reference: Tensor | None = None) -> dict[str, float]:
    """All per-image metrics of a quantised SR against HR, on Y (`grey`: full-range grey) with `border` crop.

    Without HR (no ground truth) PSNR/SSIM are NaN. The HF ratio is against ``hf_reference``
    (default HR; without HR, the bicubic upsampling of the input, made once per image).
    The one scoring path of the project's reports (`evaluate`, scripts/compare_realworld.py).

    Runs with torch limited to one CPU thread: the metrics are many small float64 ops that
    gain nothing from intra-op threads, and on a busy machine the OpenMP threads only
    contend (B100 bicubic: 8 s with one thread, 2 min with two while a training job ran on
    the 2 cores).
    """
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        h, w = sr.shape[-2] - 2 * border, sr.shape[-1] - 2 * border
        nq = niqe_scores(sr, border) if min(h, w) >= NIQE_MIN_SIZE else {"matlab": math.nan, "project": math.nan}
        return {
            "psnr": psnr_y(sr, hr, border, grey) if hr is not None else math.nan,
            "ssim": ssim_y(sr, hr, border, grey) if hr is not None else math.nan,
            "niqe": nq["matlab"],
            "niqe_project": nq["project"],
            "hf_ratio": hf_ratio(sr, hr if hf_reference is None else hf_reference, border),
        }
    finally:
        torch.set_num_threads(n)


def _mean(values: list[float]) -> float:
    """Mean ignoring NaN (metric undefined for that image); NaN if nothing is left."""
    vals = [v for v in values if not math.isnan(v)]
    return sum(vals) / len(vals) if vals else math.nan


def evaluate(
    datasets: list[Dataset],
    methods: list[str],
    scale: int = 4,
    device: str | torch.device = "cpu",
    save_dir: str | os.PathLike | None = None,
    progress: bool = True,
    degradation: str = "bicubic",
    degradation_seed: int = 0,
    model: str | None = None,
) -> dict[str, dict[str, dict[str, float]]]:
    """Run `methods` on every image of `datasets`; returns {dataset: {method: scores}}.

    `degradation` / `degradation_seed`: how the LR is made (see the module docstring).
    `model`: the model set whose weights the trained methods use (default `model_for(degradation)`).

    scores: psnr (dB), ssim, niqe, hf_ratio (means over images), seconds (summed wall
    time of the method calls), images (count) and any method counters (summed).
    With `save_dir`, SR images go to ``save_dir/<dataset>/<method>/<name>.png`` (subfolders kept).
    """
    from tqdm import tqdm

    device = torch.device(device)
    model = model or model_for(degradation)
    runners = {}
    for name in methods:
        runners[name] = make_method(name, scale, device, model)
        _run_timed(runners[name], torch.full((1, 3, 8, 8), 0.5), device)  # untimed warm-up

    results: dict[str, dict[str, dict[str, float]]] = {}
    for ds in datasets:
        per_image: dict[str, dict[str, list[float]]] = {m: {k: [] for k in METRICS} for m in methods}
        counters: dict[str, dict[str, float]] = {m: {} for m in methods}
        seconds = dict.fromkeys(methods, 0.0)
        for path in tqdm(ds.paths, desc=ds.name, unit="img", disable=not progress, file=sys.stderr):
            hr, lr = load_pair(path, scale, degradation, degradation_seed)
            grey, hf_reference = scoring_references(path, hr, lr, scale)
            expected = (*lr.shape[:-2], lr.shape[-2] * scale, lr.shape[-1] * scale)
            for m in methods:
                sr, stats, secs = _run_timed(runners[m], lr, device)
                if tuple(sr.shape) != expected:
                    raise EvalError(f"method {m!r} returned {tuple(sr.shape)} for {path}, expected {expected}")
                sr = quantize(sr.clamp(0, 1))
                seconds[m] += secs
                for k, v in image_metrics(sr, hr, scale, grey, hf_reference).items():
                    per_image[m][k].append(v)
                for k, v in stats.items():
                    counters[m][k] = counters[m].get(k, 0.0) + float(v)
                if save_dir is not None:
                    rel = path.relative_to(ds.folder).with_suffix(".png")
                    save_image(sr, Path(save_dir) / ds.name / m / rel)
        results[ds.name] = {
            m: {
                **{k: _mean(per_image[m][k]) for k in METRICS},
                "seconds": seconds[m],
                "images": len(ds.paths),
                **counters[m],
            }
            for m in methods
        }
    return results


def confidence_spearman(
    ds: Dataset,
    scale: int = 4,
    device: str | torch.device = "cpu",
    patch: int = 16,
    progress: bool = True,
    degradation: str = "bicubic",
    degradation_seed: int = 0,
    model: str | None = None,
) -> tuple[float, int]:
    """Spearman ρ between GRM tile confidence and tile latent MSE over a dataset.

    Tiles: non-overlapping `patch`×`patch` latent tiles (see `metrics.confidence`),
    pooled over all images; MSE of y0 against the codec latent of the modcropped HR.
    Returns (ρ, number of tiles) for the GRM of model set `model` (default `model_for(degradation)`). Project bar: ρ ≤ −0.6 on B100.
    """
    from tqdm import tqdm

    from patchscaler.models.grm import load_grm

    device = torch.device(device)
    try:
        grm = load_grm(scale, device=device, model=model or model_for(degradation))
    except FileNotFoundError as e:
        raise EvalError(f"confidence check: {e}") from e
    cs, es = [], []
    for path in tqdm(ds.paths, desc=f"{ds.name} confidence", unit="img", disable=not progress, file=sys.stderr):
        hr, lr = load_pair(path, scale, degradation, degradation_seed)
        with torch.inference_mode():
            y0, conf = grm(lr.to(device))
        x0 = grm.codec.encode(hr)
        c, e = patch_confidence_and_mse(conf.float().cpu(), y0.float().cpu(), x0, patch)
        cs.append(c)
        es.append(e)
    c_all, e_all = torch.cat(cs), torch.cat(es)
    return spearman(c_all, e_all), c_all.numel()


def _fmt(v: float, digits: int) -> str:
    return "-" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.{digits}f}"


def format_table(results: dict) -> str:
    """Human-readable table of `evaluate` results (plus total seconds per method)."""
    head = f"{'dataset':<10} {'method':<10} {'PSNR':>7} {'SSIM':>7} {'NIQE':>7} {'NIQEown':>7} {'HF':>6} {'seconds':>9} {'images':>6}"
    lines = [head, "-" * len(head)]
    totals: dict[str, float] = {}
    for ds, per_method in results.items():
        for m, r in per_method.items():
            if "psnr" not in r:
                continue
            lines.append(
                f"{ds:<10} {m:<10} {_fmt(r['psnr'], 2):>7} {_fmt(r['ssim'], 4):>7} {_fmt(r['niqe'], 3):>7} "
                f"{_fmt(r.get('niqe_project'), 3):>7} {_fmt(r['hf_ratio'], 3):>6} {r['seconds']:>9.2f} {r['images']:>6}"
            )
            # Counters summed over images; the confidence check has its own line below the table.
            extra = {k: v for k, v in r.items() if k not in (*METRICS, "seconds", "images") and not k.startswith("confidence_")}
            if extra:
                n = max(1, r["images"])
                lines.append(" " * 22 + "  ".join(f"{k}={float(v):.0f} ({float(v) / n:.1f}/image)" for k, v in extra.items()))
            totals[m] = totals.get(m, 0.0) + r["seconds"]
        lines += _pgs_vs_uniform(ds, per_method)
    for m, s in totals.items():
        lines.append(f"{'total':<10} {m:<10} {'':>7} {'':>7} {'':>7} {'':>6} {s:>9.2f}")
    return "\n".join(lines)


def _pgs_vs_uniform(ds: str, per_method: dict) -> list[str]:
    """One line comparing PGS with the uniform sampler when both ran (the method's claim)."""
    p, u = per_method.get("pgs"), per_method.get("uniform")
    if not (p and u and "psnr" in p and "psnr" in u):
        return []
    parts = []
    if u.get("dit_evaluations"):
        parts.append(f"evaluations {p.get('dit_evaluations', 0) / u['dit_evaluations']:.3f}x")
    if u["seconds"] > 0:
        parts.append(f"time {p['seconds'] / u['seconds']:.3f}x")
    parts.append(f"PSNR {p['psnr'] - u['psnr']:+.2f} dB")
    if p["niqe"] is not None and u["niqe"] is not None:
        parts.append(f"NIQE {p['niqe'] - u['niqe']:+.3f}")
    return [f"{ds:<10} pgs/uniform: " + ", ".join(parts)]


def _json_safe(obj):
    """NaN/inf → None so the output is strict JSON."""
    if isinstance(obj, dict):
        return {k: _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m patchscaler.eval",
        description="PSNR/SSIM (Y), NIQE, HF-energy ratio and speed of SR methods on HR image folders.",
    )
    parser.add_argument("--data", action="append", required=True, metavar="DIR",
                        help="folder of HR images, or a dataset folder with an HR/ subfolder (repeatable)")
    parser.add_argument("--method", action="append", metavar="M", choices=available_methods(),
                        help=f"method to evaluate (repeatable; default bicubic): {', '.join(available_methods())}")
    parser.add_argument("--scale", type=int, default=4, help="upscaling factor (default 4)")
    parser.add_argument("--model", default=None, choices=MODEL_SETS,
                        help="model set of the trained methods (grm, pgs, ...; default: the set trained for "
                             f"--degradation, {DEFAULT_MODEL} with --degradation none)")
    parser.add_argument("--json", metavar="OUT", help="write results here as JSON")
    parser.add_argument("--save", metavar="DIR", help="write SR images to DIR/<dataset>/<method>/")
    parser.add_argument("--limit", type=int, metavar="N", help="only the first N images (sorted) of each dataset")
    parser.add_argument("--device", default="cpu", help="torch device for the methods (default cpu)")
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--confidence-spearman", action="store_true",
                        help="also report Spearman(GRM tile confidence, tile MSE) per dataset, stored "
                             "in the 'grm' entry as confidence_spearman / confidence_tiles")
    parser.add_argument("--degradation", default="bicubic", choices=DEGRADATIONS,
                        help="how LR is made from HR: bicubic (MATLAB, the classic protocol), real (the "
                             "real-world pipeline, seeded per image), none (the files are LR photos "
                             "without ground truth: NIQE and HF ratio vs bicubic only)")
    parser.add_argument("--degradation-seed", type=int, default=0, metavar="S",
                        help="seed of the real-degradation protocol (default 0)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    args = parser.parse_args(argv)
    args.model = args.model or model_for(args.degradation)
    if args.scale < 1:
        parser.error("--scale must be >= 1")
    if args.limit is not None and args.limit < 1:
        parser.error("--limit must be >= 1")
    if args.threads:
        torch.set_num_threads(args.threads)
    methods = list(dict.fromkeys(args.method or ["bicubic"]))

    try:
        try:
            device = torch.device(args.device)
        except RuntimeError as e:
            raise EvalError(f"--device {args.device}: {e}") from e
        if device.type == "cuda" and not torch.cuda.is_available():
            raise EvalError(f"--device {args.device}: CUDA is not available")
        if args.confidence_spearman:  # fail before the long part if the GRM cannot load
            from patchscaler.models.grm import load_grm

            try:
                load_grm(args.scale, device=device, model=args.model)
            except FileNotFoundError as e:
                raise EvalError(f"confidence check: {e}") from e
        datasets = [find_dataset(d, args.limit) for d in args.data]
        names = [d.name for d in datasets]
        dup = {n for n in names if names.count(n) > 1}
        if dup:
            raise EvalError(f"two --data folders have the same dataset name {sorted(dup)[0]!r}")
        if args.degradation == "none" and args.confidence_spearman:
            raise EvalError("--confidence-spearman needs ground truth: not with --degradation none")
        results = evaluate(datasets, methods, args.scale, device, args.save, not args.no_progress,
                           args.degradation, args.degradation_seed, args.model)
        if args.confidence_spearman:
            for ds in datasets:
                rho, n = confidence_spearman(ds, args.scale, device, progress=not args.no_progress,
                                             degradation=args.degradation, degradation_seed=args.degradation_seed,
                                             model=args.model)
                results[ds.name].setdefault("grm", {}).update(confidence_spearman=rho, confidence_tiles=n)
    except EvalError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2

    print(format_table(results))
    if args.confidence_spearman:
        for ds, r in results.items():
            g = r["grm"]
            print(f"{ds}: Spearman(confidence, MSE) = {g['confidence_spearman']:.3f} over {g['confidence_tiles']} tiles")
    if args.json:
        out = Path(args.json)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(_json_safe(results), indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
