"""The ``patchscaler`` command: ×4 super-resolution of an image file or a folder of them.

    patchscaler photo.jpg -o photo_x4.png
    patchscaler photos/ -o photos_x4/ --save-groups groups/ --json stats.json
    patchscaler photo.png --sampler none --device cuda --bf16

A file in gives a file out (default ``<name>_x4.png`` beside the input; ``-o`` naming
an existing folder puts ``<name>.png`` in it). A folder in gives a folder out
(default ``<folder>_x4``) that mirrors the input's subfolders and file names, with
the extension ``--format`` (``png`` by default). Greyscale stays greyscale, an alpha
channel is upscaled separately (bicubic) and kept, 16-bit PNGs give 16-bit PNGs.

Exit status: 0 all written; 1 a folder run where some images failed (the others are
still written; the failures are listed at the end); 2 the run could not start, or
the single input file could not be read, upscaled or written.

The command parses its arguments, has `patchscaler.api.check_options` check the rest
(the API's errors are respelled for the command line by `cli_spelling`), calls
`upscale()` per image and reports. torch is imported only after argparse has accepted the
arguments, so --help, --version and usage errors answer at once.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

# Only modules that do not import torch (nor numpy) at the top: --help, --version and
# argument errors answer before torch is loaded (tests/test_cli_startup.py checks it).
import patchscaler
from patchscaler.checkpoints import DEFAULT_MODEL, MODEL_SETS, WeightsNotAvailableError
from patchscaler.command.folder_run import IMAGE_ERRORS, image_error, one_line, run_jobs
from patchscaler.command.progress_bars import ImageBar

__all__ = ["main"]

PROG = "patchscaler"
MANIFEST_NAME = "manifest.jsonl"
OUTPUT_FORMATS = ("png", "jpg", "webp", "tif", "bmp", "same")
# `upscale()` parameter → the option that sets it: how the API's errors are spelled here.
API_OPTIONS = {
    "sampler": "--sampler",
    "model": "--model",
    "quality": "--quality",
    "device": "--device",
    "max_batch_patches": "--max-batch-patches",
    "max_output_megapixels": "--max-megapixels",
    "memory_budget": "--max-memory",
    "outscale": "--outscale",
    "width": "--width",
    "height": "--height",
}


class CLIError(Exception):
    """An error to report as one line (no traceback)."""


def cli_spelling(message: str) -> str:
    """An API error message as the command's user knows the options: ``device='cpu'`` →
    ``--device cpu``, ``sampler must be`` → ``--sampler must be``; ``or None`` dropped (an
    option left out is the None). The one place the API's spelling is translated."""
    for name, opt in API_OPTIONS.items():
        message = re.sub(rf"(?<![\w-]){name}=(?:'([^']*)'|([^\s,;)]+))", rf"{opt} \1\2", message)
        # The bare name where it names the option ("width must", "either outscale or",
        # "width/height)"); as a word of prose ("model set 'real'", "torch device:") it stays.
        message = re.sub(rf"(?<![\w'-]){name}(?= must\b|/|\)|,| or |$)|^{name}(?= ')", opt, message)
    return message.replace(" or None,", ",").replace(" (or None)", "")


# ------------------------------------------------------------------------ arguments


def _positive_int(text: str) -> int:
    value = int(text)  # argparse turns the ValueError into "invalid _positive_int value"
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def _set_line(model: str) -> str:
    """One model set for --help: its name and what its set.json says it is for (read without torch)."""
    from patchscaler.checkpoints import set_manifest

    try:
        about = set_manifest(model)
    except (OSError, ValueError):
        about = {}
    desc = about.get("description", "no set.json in this install")
    return f"{model}: {desc}".replace("%", "%%")  # argparse formats help with %


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=PROG,
        description="×4 diffusion super-resolution (PatchScaler) of an image file or a folder of images.",
        epilog="Exit status: 0 ok, 1 some images of a folder failed, 2 the run could not start "
        "or the single input failed.",
    )
    p.add_argument("--version", action="version", version=f"%(prog)s {patchscaler.__version__}")
    p.add_argument("input", type=Path, help="image file, or folder of images (searched recursively)")
    p.add_argument(
        "-o", "--output", type=Path, default=None,
        help="output file, or folder (default: INPUT_x4.png next to a file, INPUT_x4/ for a folder)",
    )
    # Sampler and preset names are checked by upscale() (the registry behind it imports
    # torch; listing them here would make --help wait for it).
    p.add_argument(
        "--sampler", default=None, metavar="NAME",
        help="pgs: patch-adaptive group sampling with the Patch-DiT (the method); none: the GRM alone, one "
        "network pass; or another registered sampler (uniform, ddim, ...: `python -m patchscaler.info` lists "
        "what each model set of this install runs). Default: the model set's own (its set.json), else pgs "
        "when the set has its weights, else none",
    )
    p.add_argument(
        "--model", choices=MODEL_SETS, default=DEFAULT_MODEL,
        help=f"model set (default {DEFAULT_MODEL}): " + "; ".join(_set_line(m) for m in MODEL_SETS)
        + ". `python -m patchscaler.info` lists what this install has",
    )
    p.add_argument(
        "--quality", default=None, metavar="PRESET",
        help="PGS preset: fast, balanced or detail put about 8, 12 or 30 %% of the patches in the hard "
        "group (default: upscale()'s, the middle one)",
    )
    p.add_argument("--seed", type=int, default=0, help="noise seed (results are reproducible per seed)")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1, ... (default: cuda if available; "
                   "under torchrun cuda:LOCAL_RANK, or the CPU)")
    p.add_argument("--threads", type=_positive_int, default=None, metavar="N",
                   help="torch CPU threads (default: torch's, one per core, with idle threads sleeping "
                   "rather than spinning; 1 on a machine another job keeps busy)")
    prec = p.add_mutually_exclusive_group()
    prec.add_argument("--fp16", action="store_true", help="run the models in float16")
    prec.add_argument("--bf16", action="store_true", help="run the models in bfloat16")
    p.add_argument(
        "--max-batch-patches", type=int, default=None, metavar="N",
        help="at most N latent patches per denoiser call (lower it if memory runs out)",
    )
    p.add_argument(
        "--max-memory", default=None, metavar="SIZE",
        help="memory the computation should fit in, e.g. 6G or 512M: sets the patches per DiT call, the GRM "
        "tile and the band height; on CUDA out-of-memory the failing step's chunk halves and is retried either way",
    )
    p.add_argument(
        "--max-megapixels", type=float, default=None, metavar="MP",
        help="refuse inputs whose x4 output would exceed MP megapixels, from the file's header "
        "(default: no limit; a header above Pillow's decompression-bomb limit, ~179 MP of input, "
        "is refused unless this option allows it)",
    )
    p.add_argument(
        "--outscale", type=float, default=None, metavar="S",
        help="output scale in (1, 4]: the x4 result resized (antialiased bicubic), e.g. 2",
    )
    p.add_argument("--width", type=int, default=None, metavar="W", help="exact output width (keeps the aspect without --height)")
    p.add_argument("--height", type=int, default=None, metavar="H", help="exact output height (keeps the aspect without --width)")
    _add_output_options(p)
    return p


def _add_output_options(p: argparse.ArgumentParser) -> None:
    """What is written and shown: formats, extra pictures and reports, bars, folder runs."""
    p.add_argument(
        "--format", choices=OUTPUT_FORMATS, default="png",
        help="output format for folder runs (default png; 'same' keeps each input's extension)",
    )
    p.add_argument(
        "--save-groups", type=Path, default=None, metavar="PATH",
        help="also write a PNG of each patch's group and step count over the image (the confidence "
        "map with --sampler none); a file for a file input, a folder for a folder input",
    )
    p.add_argument("--json", type=Path, default=None, metavar="PATH", help="write per-image statistics as JSON ('-': stdout)")
    shown = p.add_mutually_exclusive_group()
    shown.add_argument("-q", "--quiet", action="store_true", help="no progress bars, no 'wrote' line")
    shown.add_argument("--progress", action="store_true",
                       help="progress bars even when stderr is not a terminal (default: only on a terminal)")
    p.add_argument("--overwrite", action="store_true",
                   help="folder runs: redo images whose output already exists (default: keep them, so a rerun resumes)")
    p.add_argument("--shard", choices=["dynamic", "static"], default="dynamic",
                   help="under torchrun: ranks pull the next image, largest first (dynamic, default), or take "
                   "a fixed pixel-balanced share (static)")
    p.add_argument("--manifest", type=Path, default=None, metavar="PATH",
                   help=f"folder runs: JSON lines appended per image (default OUTPUT/{MANIFEST_NAME})")


@dataclass
class _Job:
    src: Path
    dst: Path
    groups: Path | None


def _plan_jobs(args: argparse.Namespace) -> tuple[list[_Job], Path | None]:
    """Map inputs to outputs; returns (jobs, output folder of a folder run or None)."""
    from patchscaler.data.images import list_images

    src: Path = args.input
    if src.is_dir():
        out = args.output or src.with_name(src.name + "_x4")
        if out.exists() and not out.is_dir():
            raise CLIError(f"output {out} exists and is not a folder (the input is a folder)")
        if out.resolve() == src.resolve():
            raise CLIError(f"output folder {out} is the input folder; choose another")
        groups = args.save_groups
        if groups is not None and groups.exists() and not groups.is_dir():
            raise CLIError(f"--save-groups {groups} exists and is not a folder (the input is a folder)")
        out_abs = out.resolve()
        jobs = []
        for path in list_images(src):
            if out_abs in path.resolve().parents or (groups and groups.resolve() in path.resolve().parents):
                continue  # earlier results inside the input folder are not inputs
            rel = path.relative_to(src)
            ext = rel.suffix if args.format == "same" else "." + args.format
            jobs.append(_Job(path, out / rel.with_suffix(ext), groups / rel.with_suffix(".png") if groups else None))
        if not jobs:
            raise CLIError(f"no images found in {src}")
        return jobs, out
    if not src.exists():
        raise CLIError(f"input {src} does not exist")
    if args.output is None:
        dst = src.with_name(src.stem + "_x4.png")
    elif args.output.is_dir() or str(args.output).endswith(("/", "\\")):
        dst = args.output / (src.stem + ".png")
    else:
        dst = args.output
    if not dst.suffix:
        raise CLIError(f"output {dst} has no extension to pick a format by (e.g. .png)")
    return [_Job(src, dst, args.save_groups)], None


def _groups_picture(out, gmap, path: Path) -> None:
    """The --save-groups picture of one result (``out``: the written array) at ``path``."""
    from patchscaler.imaging.image_files import atomic_write
    from patchscaler.imaging.visualize import groups_over_output

    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_write(path) as tmp:
        groups_over_output(out, gmap).save(tmp, format="PNG")


# ------------------------------------------------------------------------- the run


def _api_options(args: argparse.Namespace) -> dict[str, Any]:
    """The options `upscale()` and `check_options()` take from the command line; one left
    out is upscale()'s default (so no default is repeated here)."""
    opts = dict(
        sampler=args.sampler, model=args.model, quality=args.quality, device=args.device,
        dtype="fp16" if args.fp16 else "bf16" if args.bf16 else None,
        max_batch_patches=args.max_batch_patches, max_output_megapixels=args.max_megapixels,
        outscale=args.outscale, width=args.width, height=args.height, memory_budget=args.max_memory,
    )
    return {k: v for k, v in opts.items() if v is not None}


def _say(kind: str, text: str) -> None:
    """One line on stderr, through tqdm.write so that it does not break a bar being drawn."""
    from tqdm.auto import tqdm

    tqdm.write(f"{PROG}: {kind}: {text}", file=sys.stderr)


def _start(args: argparse.Namespace) -> dict[str, Any]:
    """Everything that can fail before the first image, checked by the API; returns the
    options for `upscale()` (the sampler resolved, so its default's note is said once)."""
    from patchscaler.api import check_options

    opts = _api_options(args)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        opts["sampler"] = check_options(**opts)
    for w in caught if not args.quiet else ():  # which sampler the default picked: not news under -q
        _say("note", str(w.message).removeprefix("patchscaler: "))
    if args.threads is not None:
        import torch

        torch.set_num_threads(args.threads)
    return opts


def _read(args: argparse.Namespace, src: Path):
    from patchscaler.imaging.image_files import read_image

    mp = args.max_megapixels
    if mp is None:  # no size limit asked for: only the header's bomb check (Pillow's limit)
        return read_image(src, limit_hint="; --max-megapixels MP allows larger images")
    return read_image(src, max_pixels=mp * 1e6 / 16, limit_hint=(
        f" (its x4 output would be above --max-megapixels {mp:g}; raise it to allow)"))


def _process(args: argparse.Namespace, opts: dict, bar: ImageBar, job: _Job) -> dict:
    """One image: read, upscale, write (atomically); its record for --json and the manifest."""
    from patchscaler import api
    from patchscaler.imaging.image_files import write_image

    start = time.perf_counter()
    arr, meta = _read(args, job.src)
    for note in meta.warnings:
        _say("warning", note)
    bar.start(job.src.name)
    # upscale() tells the bar its GRM tiles and DiT evaluations: progress(done, total, stage).
    out, gmap = api.upscale(arr, **opts, seed=args.seed, return_groups=True,
                            progress=bar if bar.enabled else False)
    write_image(out, job.dst, meta)
    if gmap.memory_note() is not None:
        _say("note", f"{job.src}: {gmap.memory_note()}")
    if gmap.fp32_evaluations:
        _say("warning", f"{job.src}: {gmap.fp32_evaluations} of {gmap.evaluations} DiT patch-evaluations "
             "overflowed in half precision and were recomputed in float32")
    if job.groups is not None:
        _groups_picture(out, gmap, job.groups)
    return {
        "input": str(job.src),
        "output": str(job.dst),
        "size": [int(arr.shape[1]), int(arr.shape[0])],
        "output_size": [int(out.shape[1]), int(out.shape[0])],
        "seconds": round(time.perf_counter() - start, 4),
        "groups_picture": str(job.groups) if job.groups else None,
        **gmap.summary(),
    }


def _run_folder(args, opts, jobs: list[_Job], out_folder: Path, show: bool):
    """A folder run (alone or under torchrun): (the whole job's `FolderResult`, whether this
    process reports it: rank 0 or alone)."""
    from patchscaler.command import distributed

    ctx = distributed.from_env(args.device)  # under torchrun: this rank's device and share
    if ctx is not None:
        opts = {**opts, "device": str(ctx.device)}
    bar = ImageBar(enabled=show and (ctx is None or ctx.is_main), leave=False, position=1)
    try:
        result = run_jobs(
            jobs, lambda job: _process(args, opts, bar, job), ctx=ctx, overwrite=args.overwrite,
            manifest=args.manifest or out_folder / MANIFEST_NAME, progress=show,
            on_error=lambda msg: _say("error", msg), fatal=(WeightsNotAvailableError,), shard=args.shard,
        )
    finally:
        bar.close()
        if ctx is not None:
            ctx.close()
    return result, ctx is None or ctx.is_main


def _write_json(path: Path, records: list[dict], failures: list[tuple[str, str]]) -> None:
    import json

    from patchscaler.imaging.image_files import atomic_write

    text = json.dumps({"images": records, "failures": [{"input": str(p), "error": e} for p, e in failures]}, indent=2)
    if str(path) == "-":
        print(text)
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_write(path) as tmp:  # never a half-written report
        tmp.write_text(text + "\n")


def summary(written: int, skipped: int, failed: int, where: Path) -> str:
    """The folder run's last line: what was written, kept and failed, whichever are nonzero
    (a rerun that only skips and fails still says what it kept)."""
    parts = [f"wrote {written} image{'s' if written != 1 else ''} to {where}"]
    if skipped:
        parts.append(f"{skipped} already there, kept (--overwrite redoes them)")
    if failed:
        parts.append(f"{failed} failed")
    return "; ".join(parts)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``patchscaler`` console script; returns the exit status."""
    args = _parser().parse_args(argv)
    show = not args.quiet and (args.progress or sys.stderr.isatty())
    # libgomp's default lets idle threads spin; with another process on one of two cores the
    # spinning threads and the ones with work take turns, and the 128² example went from
    # ~2 s to 15-30 s (benchmarks/results/threads-under-load.md). libgomp reads this when
    # torch loads it: set before anything imports torch, and only if the user has not chosen.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    try:
        opts = _start(args)
        jobs, out_folder = _plan_jobs(args)
    except (CLIError, ValueError, TypeError, WeightsNotAvailableError) as exc:
        print(f"{PROG}: error: {cli_spelling(one_line(exc))}", file=sys.stderr)
        return 2
    if out_folder is None:
        bar = ImageBar(enabled=show)
        try:
            records, failures, skipped = [_process(args, opts, bar, jobs[0])], [], []
        except WeightsNotAvailableError as exc:
            print(f"{PROG}: error: {cli_spelling(one_line(exc))}", file=sys.stderr)
            return 2
        except IMAGE_ERRORS as exc:
            print(f"{PROG}: error: {cli_spelling(image_error(jobs[0].src, exc))}", file=sys.stderr)
            return 2
        finally:
            bar.close()
    else:
        try:
            result, reports = _run_folder(args, opts, jobs, out_folder, show)
        except WeightsNotAvailableError as exc:  # no image can succeed: stop the run
            print(f"{PROG}: error: {cli_spelling(one_line(exc))}", file=sys.stderr)
            return 2
        records, failures, skipped = result.records, result.failures, result.skipped
        if not reports:
            return 1 if failures else 0  # every rank has the whole job's result; rank 0 reports it
    if args.json is not None:
        _write_json(args.json, records, failures)
    if failures:
        print(f"{PROG}: {len(failures)} of {len(jobs)} images failed:", file=sys.stderr)
        for _, msg in failures:
            print(f"  {cli_spelling(msg)}", file=sys.stderr)
    if out_folder is None and not args.quiet:
        print(f"wrote {records[0]['output']}", file=sys.stderr)
    elif out_folder is not None and (failures or not args.quiet):
        print(summary(len(records), len(skipped), len(failures), out_folder), file=sys.stderr)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
