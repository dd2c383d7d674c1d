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
"""

from __future__ import annotations

import argparse
import json
import struct
import sys
import time
import warnings
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from patchscaler import distributed
from patchscaler.folder_run import IMAGE_ERRORS, image_error, one_line, run_jobs

MANIFEST_NAME = "manifest.jsonl"

import numpy as np

from patchscaler.sampling.registry import DEFAULT_MODEL, MODEL_SETS, QUALITY_PRESETS, SAMPLERS

__all__ = ["main", "read_image_array", "write_image_array"]

OUTPUT_FORMATS = ("png", "jpg", "webp", "tif", "bmp", "same")
# Images whose LR has more pixels than this get a progress bar over their patches too.
PATCH_PROGRESS_MIN_PIXELS = 256 * 256


class CLIError(Exception):
    """An error to report as one line (no traceback)."""


# ------------------------------------------------------------------------- image io


def _png_bit_depth(path: Path) -> int | None:
    """Bit depth from a PNG's IHDR, or None if ``path`` is not a PNG."""
    with open(path, "rb") as f:
        head = f.read(33)
    if head[:8] != b"\x89PNG\r\n\x1a\n" or head[12:16] != b"IHDR":
        return None
    return head[24]


def read_image_array(path: str | Path) -> np.ndarray:
    """Read an image keeping what the output should keep: ``[H,W]`` (grey), ``[H,W,2]``
    (grey + alpha), ``[H,W,3]`` or ``[H,W,4]``; uint8, or uint16 for 16-bit files
    (`patchscaler.image_files.read_image` without its metadata).

    Raises OSError with a one-line message if the file cannot be decoded.
    """
    from patchscaler.image_files import read_image

    return read_image(path)[0]


def write_image_array(arr: np.ndarray, path: str | Path, meta=None) -> None:
    """Write an array from `read_image_array`'s family; the suffix picks the format
    (`patchscaler.image_files.write_image`: 16-bit PNG for 16-bit data, ``meta``'s ICC
    profile / EXIF / text kept, written to a temporary name and renamed)."""
    from patchscaler.image_files import write_image

    write_image(arr, path, meta)


# ------------------------------------------------------------------------ arguments


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="patchscaler",
        description="×4 diffusion super-resolution (PatchScaler) of an image file or a folder of images.",
        epilog="Exit status: 0 ok, 1 some images of a folder failed, 2 the run could not start "
        "or the single input failed.",
    )
    p.add_argument("input", type=Path, help="image file, or folder of images (searched recursively)")
    p.add_argument(
        "-o", "--output", type=Path, default=None,
        help="output file, or folder (default: INPUT_x4.png next to a file, INPUT_x4/ for a folder)",
    )
    p.add_argument(
        "--sampler", choices=tuple(SAMPLERS), default=None,
        help="; ".join(f"{s.name}: {s.help}" for s in SAMPLERS.values())
        + ". Default: pgs when the model set has its weights, else none",
    )
    p.add_argument(
        "--model", choices=MODEL_SETS, default=DEFAULT_MODEL,
        help=f"model set: bicubic (trained on bicubic downscaling) or real (real-world degradations); "
        f"default {DEFAULT_MODEL}; `python -m patchscaler.info` lists what this install has",
    )
    p.add_argument(
        "--quality", choices=QUALITY_PRESETS, default="balanced",
        help="PGS preset: fast / balanced / detail put about 8 / 12 / 30 %% of the patches in the hard "
        "group (default balanced)",
    )
    p.add_argument("--seed", type=int, default=0, help="noise seed (results are reproducible per seed)")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1, ... (default: cuda if available; "
                   "under torchrun cuda:LOCAL_RANK, or the CPU)")
    p.add_argument("--threads", type=int, default=None, metavar="N", help="torch CPU threads (default: torch's choice)")
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
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    p.add_argument("--overwrite", action="store_true",
                   help="folder runs: redo images whose output already exists (default: keep them, so a rerun resumes)")
    p.add_argument("--shard", choices=["dynamic", "static"], default="dynamic",
                   help="under torchrun: ranks pull the next image, largest first (dynamic, default), or take "
                   "a fixed pixel-balanced share (static)")
    p.add_argument("--manifest", type=Path, default=None, metavar="PATH",
                   help=f"folder runs: JSON lines appended per image (default OUTPUT/{MANIFEST_NAME})")
    return p


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


def _groups_picture(out: np.ndarray, gmap, path: Path) -> None:
    import torch

    from patchscaler.image_files import atomic_write
    from patchscaler.outsize import resize_output
    from patchscaler.visualize import group_map_image

    arr = out.astype(np.float32) / (65535.0 if out.dtype == np.uint16 else 255.0)
    if arr.ndim == 2:
        arr = arr[..., None]
    rgb = arr[..., :3] if arr.shape[2] >= 3 else np.repeat(arr[..., :1], 3, axis=2)
    path.parent.mkdir(parents=True, exist_ok=True)
    hr = torch.from_numpy(np.ascontiguousarray(rgb)).permute(2, 0, 1)
    lr_h, lr_w = gmap.confidence.shape[-2:]
    hr = resize_output(hr, (lr_h * gmap.scale, lr_w * gmap.scale))  # back to x4 after --outscale
    with atomic_write(path) as tmp:
        group_map_image(hr, gmap).save(tmp, format="PNG")


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``patchscaler`` console script; returns the exit status."""
    args = _parser().parse_args(argv)
    prog = "patchscaler"
    try:
        import torch
        from tqdm.auto import tqdm

        from patchscaler.image_files import read_image
        from patchscaler.api import default_sampler, upscale
        from patchscaler.checkpoints import WeightsNotAvailableError, require

        require("grm", args.model)  # a missing model set: one clear line before anything runs
        jobs, out_folder = _plan_jobs(args)
        folder = out_folder is not None
        dtype = torch.float16 if args.fp16 else torch.bfloat16 if args.bf16 else None
        if args.sampler is None:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                sampler = default_sampler(args.model)
            for w in caught if not args.quiet else ():
                print(f"{prog}: note: {str(w.message).removeprefix('patchscaler: ')}", file=sys.stderr)
        else:
            sampler = args.sampler
        max_mp = args.max_megapixels
        if max_mp is not None and not max_mp > 0:  # also catches nan
            raise CLIError(f"--max-megapixels must be > 0, got {max_mp:g}")
        from patchscaler.outsize import check_output_size

        check_output_size(args.outscale, args.width, args.height, prefix="--")
        if args.max_memory is not None:
            from patchscaler.memory_budget import parse_memory

            parse_memory(args.max_memory, "--max-memory")  # a bad size: one line before anything runs
        if args.max_batch_patches is not None and args.max_batch_patches < 1:
            raise CLIError("--max-batch-patches must be >= 1")
        if args.threads is not None:
            if args.threads < 1:
                raise CLIError("--threads must be >= 1")
            torch.set_num_threads(args.threads)
        if args.device is not None:
            from patchscaler.api import _check_device

            _check_device(args.device, torch.device("cpu"))
    except (CLIError, ValueError, FileNotFoundError) as exc:  # FileNotFoundError: WeightsNotAvailableError
        print(f"{prog}: error: {one_line(exc)}", file=sys.stderr)
        return 2

    def process(job: _Job) -> dict:
        """One image: read, upscale, write (atomically); its record for --json and the manifest."""
        start = time.perf_counter()
        if max_mp is None:  # no size limit asked for: only the header's bomb check (Pillow's limit)
            arr, meta = read_image(job.src, limit_hint="; --max-megapixels MP allows larger images")
        else:
            arr, meta = read_image(job.src, max_pixels=max_mp * 1e6 / 16, limit_hint=(
                f" (its x4 output would be above --max-megapixels {max_mp:g}; raise it to allow)"))
        for note in meta.warnings:
            (tqdm.write if folder else print)(f"{prog}: warning: {note}", file=sys.stderr)
        big = arr.shape[0] * arr.shape[1] >= PATCH_PROGRESS_MIN_PIXELS
        out, gmap = upscale(
            arr,
            sampler=sampler,
            model=args.model,
            quality=args.quality,
            seed=args.seed,
            device=device,
            dtype=dtype,
            max_batch_patches=args.max_batch_patches,
            return_groups=True,
            progress=big and not args.quiet and not folder,
            max_output_megapixels=max_mp,
            outscale=args.outscale,
            width=args.width,
            height=args.height,
            memory_budget=args.max_memory,
        )
        write_image_array(out, job.dst, meta)
        note = gmap.memory_note()
        if note is not None:
            (tqdm.write if folder else print)(f"{prog}: note: {job.src}: {note}", file=sys.stderr)
        if gmap.fp32_evaluations:
            (tqdm.write if folder else print)(
                f"{prog}: warning: {job.src}: {gmap.fp32_evaluations} of {gmap.evaluations} DiT patch-evaluations "
                "overflowed in half precision and were recomputed in float32", file=sys.stderr)
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

    device = args.device
    if not folder:
        try:
            records, failures = [process(jobs[0])], []
        except WeightsNotAvailableError as exc:
            print(f"{prog}: error: {one_line(exc)}", file=sys.stderr)
            return 2
        except IMAGE_ERRORS as exc:
            print(f"{prog}: error: {image_error(jobs[0].src, exc)}", file=sys.stderr)
            return 2
        skipped = []
    else:
        # Under torchrun every rank takes its share of the folder on its own device.
        ctx = distributed.from_env(args.device)
        if ctx is not None:
            device = str(ctx.device)
        try:
            result = run_jobs(
                jobs, process, ctx=ctx, overwrite=args.overwrite,
                manifest=args.manifest or out_folder / MANIFEST_NAME, progress=not args.quiet,
                on_error=lambda msg: tqdm.write(f"{prog}: error: {msg}", file=sys.stderr),
                fatal=(WeightsNotAvailableError,), shard=args.shard,
            )
        except WeightsNotAvailableError as exc:  # no image can succeed: stop the run
            print(f"{prog}: error: {one_line(exc)}", file=sys.stderr)
            return 2
        finally:
            if ctx is not None:
                ctx.close()
        records, failures, skipped = result.records, result.failures, result.skipped
        if ctx is not None and not ctx.is_main:
            return 1 if failures else 0  # rank 0 reports for the whole job

    if args.json is not None:
        report = {"images": records, "failures": [{"input": str(p), "error": e} for p, e in failures]}
        text = json.dumps(report, indent=2)
        if str(args.json) == "-":
            print(text)
        else:
            args.json.parent.mkdir(parents=True, exist_ok=True)
            from patchscaler.image_files import atomic_write

            with atomic_write(args.json) as tmp:  # never a half-written report
                tmp.write_text(text + "\n")
    if not folder and records and not args.quiet:
        print(f"wrote {records[0]['output']}", file=sys.stderr)
    if failures:
        print(f"{prog}: {len(failures)} of {len(jobs)} images failed:", file=sys.stderr)
        for _, msg in failures:
            print(f"  {msg}", file=sys.stderr)
        return 1
    if folder and not args.quiet:
        kept = f" ({len(skipped)} already there, kept; --overwrite redoes them)" if skipped else ""
        print(f"wrote {len(records)} images to {out_folder}{kept}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
