"""A local web app: drop images, upscale them ×4, compare before/after, download.

    pip install --no-build-isolation -e .[ui]    # Gradio, the demo convention of this field
    patchscaler-ui                               # or: python -m patchscaler.ui --port 7860
    patchscaler-ui --example                     # opens with the bundled example already upscaled

It serves on 127.0.0.1 only (``--host`` to change), offline: no share link, no usage
analytics. Every request goes through the same `patchscaler.upscale` as the command and the
library, and the download is written by `patchscaler.imaging.image_files.write_image`: a PNG at the
input's bit depth (16-bit stays 16-bit), with its alpha, ICC profile, EXIF and PNG text.

The module is three parts: `upscale_files` does one request and knows nothing of Gradio
(the tests call it directly), `build_app` lays out the page, `main` parses the arguments
and serves it.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

# Gradio reads these when it is imported: no usage analytics, no calls to the Hub.
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402

__all__ = ["Result", "build_app", "main", "upscale_files"]

TITLE = "PatchScaler ×4 upscaler"
DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 7860
# Output scales offered besides the plain ×4 (upscale()'s outscale must be in (1, 4]).
MIN_OUTSCALE = 1.5


@dataclass
class Result:
    """One image of a request: what was written and what to show, or why it failed."""

    name: str  # the input's file name
    error: str | None = None  # one line; None when it worked
    output: Path | None = None  # the PNG written at full bit depth, with the metadata
    before: Any = None  # PIL image: the input enlarged to the output size (8-bit preview)
    after: Any = None  # PIL image: the output (8-bit preview)
    groups: Any = None  # PIL image: the group map (patchscaler.imaging.visualize)
    seconds: float = 0.0  # upscale() alone, not reading and writing
    input_size: tuple[int, int] = (0, 0)  # (width, height)
    output_size: tuple[int, int] = (0, 0)
    summary: dict = field(default_factory=dict)  # GroupMap.summary(): evaluations, groups, ...


def model_sets() -> list[str]:
    """The model sets this install has (those `python -m patchscaler.info` lists)."""
    from patchscaler.checkpoints import list_sets

    return list(list_sets())


def samplers_for(model: str) -> list[str]:
    """The samplers that can run with ``model``'s weights, the method first."""
    from patchscaler.sampling.registry import SAMPLERS, sampler_available

    return [name for name in SAMPLERS if sampler_available(name, model)]


def default_sampler_for(model: str) -> str | None:
    """The sampler the set itself names (``<set>/set.json``) when it can run, else the first that can."""
    from patchscaler.checkpoints import set_manifest

    choices = samplers_for(model)
    own = set_manifest(model).get("default_sampler")
    return own if own in choices else (choices[0] if choices else None)


def describe_set(model: str) -> str:
    """One line on what a model set is for (its ``set.json``), for the page."""
    from patchscaler.checkpoints import set_manifest

    return set_manifest(model).get("description") or f"model set {model!r}"


def describe_samplers(names: Sequence[str]) -> str:
    """The registry's one-line help of each sampler in ``names``."""
    from patchscaler.sampling.registry import SAMPLERS

    return " · ".join(f"{n}: {SAMPLERS[n].help}" for n in names)


def _preview(arr: np.ndarray):
    """A display copy of an image array of `read_image`'s family: 8-bit PIL image."""
    from PIL import Image

    from patchscaler.imaging.convert import requantize

    arr = requantize(arr, np.uint8)
    mode = {2: "L", 3: "RGB", 4: "RGBA"}.get(arr.shape[2] if arr.ndim == 3 else 2, "L")
    if arr.ndim == 3 and arr.shape[2] == 2:
        mode = "LA"
    return Image.fromarray(np.ascontiguousarray(arr), mode)


def upscale_files(
    paths: Sequence[str | os.PathLike],
    *,
    model: str | None = None,
    sampler: str | None = None,
    quality: str | None = None,
    outscale: float | None = None,
    seed: int = 0,
    out_dir: str | os.PathLike | None = None,
    max_megapixels: float | None = None,
    progress: Callable[[int, int, int, str], None] | None = None,
) -> list[Result]:
    """Upscale each file; one `Result` per path, in order. A file that cannot be read or
    upscaled gets ``Result.error`` (one line) and the others still run; settings that are
    wrong for every file (an unknown model set, an outscale out of range, a ``quality``
    preset for a sampler without presets) raise ValueError. ``quality``: None for the
    sampler's default preset (and for samplers without presets).

    ``outscale``: None or 4 for ×4, else the output scale in (1, 4). ``out_dir``: where the
    PNGs go (default: a new temporary folder). ``max_megapixels``: refuse inputs whose ×4
    output is larger (None: only Pillow's decompression-bomb limit on the input).
    ``progress(i, done, total, stage)``: file ``i``'s work so far, as `upscale` reports it
    (stage "grm": restoration tiles, "dit": Patch-DiT patch-evaluations).
    """
    from PIL import Image

    from patchscaler.api import check_options, upscale
    from patchscaler.checkpoints import DEFAULT_MODEL, check_model
    from patchscaler.command.folder_run import IMAGE_ERRORS, one_line
    from patchscaler.imaging.image_files import read_image, write_image
    from patchscaler.imaging.visualize import groups_over_output

    model = check_model(model or DEFAULT_MODEL)
    if outscale is not None and float(outscale) >= 4:
        outscale = None  # exactly ×4: no resize at all
    check_options(sampler=sampler, model=model, quality=quality, outscale=outscale)
    out_dir = Path(out_dir) if out_dir is not None else Path(tempfile.mkdtemp(prefix="patchscaler-ui-"))
    out_dir.mkdir(parents=True, exist_ok=True)
    suffix = "x4" if outscale is None else f"x{float(outscale):g}"
    results = []
    used = set()
    for i, path in enumerate(paths):
        path = Path(path)
        report = (lambda done, total, stage, i=i: progress(i, done, total, stage)) if progress else False
        res = Result(name=path.name)
        try:
            max_pixels = None if max_megapixels is None else max_megapixels * 1e6 / 16
            arr, meta = read_image(path, max_pixels=max_pixels)
            start = time.perf_counter()
            out, gmap = upscale(
                arr, model=model, sampler=sampler, quality=quality, seed=int(seed),
                outscale=outscale, return_groups=True, max_output_megapixels=max_megapixels,
                progress=report,
            )
            res.seconds = time.perf_counter() - start
            # Provenance in the PNG beside the input's own text chunks: how to redo it.
            preset = f" quality={quality}" if quality is not None else ""
            meta.text = {**meta.text, "patchscaler": (
                f"model={model} sampler={gmap.sampler}{preset} seed={int(seed)} "
                f"outscale={outscale or 4:g}")}
            stem = path.stem
            while stem in used:  # two uploads with one name must not overwrite each other
                stem += "_"
            used.add(stem)
            res.output = out_dir / f"{stem}_{suffix}.png"
            write_image(out, res.output, meta)
            res.after = _preview(out)
            res.before = _preview(arr).resize(res.after.size, Image.BICUBIC)
            res.groups = groups_over_output(out, gmap)
            res.input_size = (int(arr.shape[1]), int(arr.shape[0]))
            res.output_size = (int(out.shape[1]), int(out.shape[0]))
            res.summary = gmap.summary()
        except IMAGE_ERRORS as exc:  # unreadable file, too large, weights missing, ...
            # The upload's temporary folder means nothing to the person: name the file only.
            res.error = one_line(exc).replace(str(path), path.name)
        results.append(res)
    return results


def stats_markdown(results: Sequence[Result]) -> str:
    """The table under the result: size, time and DiT evaluations per image."""
    rows = ["| image | size | time | sampler | DiT evaluations |", "|---|---|---|---|---|"]
    for r in results:
        if r.error is not None:
            rows.append(f"| {r.name} | failed: {r.error} | | | |")
            continue
        s = r.summary
        evals = f"{s.get('evaluations', 0):,}"
        if s.get("uniform_evaluations"):
            evals += f" ({s['evaluations'] / s['uniform_evaluations']:.0%} of uniform sampling's {s['uniform_evaluations']:,})"
        size = f"{r.input_size[0]}×{r.input_size[1]} → {r.output_size[0]}×{r.output_size[1]}"
        rows.append(f"| {r.name} | {size} | {r.seconds:.2f} s | {s.get('sampler', '')} | {evals} |")
    return "\n".join(rows)


def _show(results: list[Result], name: str | None):
    """The before/after pair and the group map of the result called ``name`` (the first
    successful one if none is), or (None, None)."""
    ok = [r for r in results if r.error is None]
    r = next((r for r in ok if r.name == name), ok[0] if ok else None)
    if r is None:
        return None, None
    return (r.before, r.after), r.groups


def _runner(max_megapixels: float | None):
    """The page's Upscale handler: the files through `upscale_files`, the progress into
    Gradio's bar, failures as Gradio errors and warnings."""
    import gradio as gr

    def run(files, model, sampler, quality, outscale, seed, progress=gr.Progress()):
        from patchscaler.sampling.registry import takes_presets

        if not files:
            raise gr.Error("Drop one or more images first.")
        paths = [f if isinstance(f, str) else getattr(f, "name", str(f)) for f in files]
        n = len(paths)
        progress(0, desc=f"upscaling {n} image(s)")

        def report(i: int, done: int, total: int, stage: str) -> None:
            what = {"grm": "restoring", "dit": "DiT patch-evaluations"}.get(stage, stage)
            progress((i + done / max(total, 1)) / n, desc=f"{Path(paths[i]).name}: {what} {done}/{total}")

        try:
            # A greyed-out preset radio still holds a value: it is not asked for.
            results = upscale_files(paths, model=model, sampler=sampler,
                                    quality=quality if takes_presets(sampler) else None,
                                    outscale=outscale, seed=int(seed or 0), max_megapixels=max_megapixels,
                                    progress=report)
        except (ValueError, OSError) as exc:  # settings wrong for every file
            raise gr.Error(str(exc).strip().splitlines()[0]) from None
        failed = [r for r in results if r.error is not None]
        ok = [r for r in results if r.error is None]
        if not ok:  # nothing to show: say why, once per file, and leave the page as it was
            raise gr.Error(" · ".join(f"{r.name}: {r.error}" for r in failed))
        for r in failed:
            gr.Warning(f"{r.name}: {r.error}")
        slider, groups = _show(results, ok[0].name)
        return (
            results,
            gr.update(choices=[r.name for r in ok], value=ok[0].name, visible=len(ok) > 1),
            slider,
            groups,
            stats_markdown(results),
            [str(r.output) for r in ok],
        )

    return run


def build_app(initial: Sequence[Result] = (), max_megapixels: float | None = None):
    """The page (a `gradio.Blocks`). ``initial``: results to show when it opens;
    ``max_megapixels``: refuse uploads whose ×4 output is larger (`upscale_files`)."""
    import gradio as gr

    from patchscaler.checkpoints import DEFAULT_MODEL
    from patchscaler.sampling.pgs import QUALITY_PRESETS
    from patchscaler.sampling.registry import DEFAULT_QUALITY, takes_presets

    sets = model_sets()
    first_model = DEFAULT_MODEL if DEFAULT_MODEL in sets else (sets[0] if sets else DEFAULT_MODEL)
    first_samplers = samplers_for(first_model)
    first_sampler = default_sampler_for(first_model)
    ok0 = [r for r in initial if r.error is None]

    show, run = _show, _runner(max_megapixels)

    def on_model(model):
        choices = samplers_for(model)
        return (gr.update(info=describe_set(model)),
                gr.update(choices=choices, value=default_sampler_for(model), info=describe_samplers(choices)))

    with gr.Blocks(title=TITLE, analytics_enabled=False) as app:
        gr.Markdown(
            f"# {TITLE}\n"
            "Diffusion super-resolution that spends denoising steps only where the image needs them "
            "(PatchScaler). Runs on this machine; nothing is uploaded anywhere else."
        )
        results_state = gr.State(list(initial))
        with gr.Row():
            with gr.Column(scale=1, min_width=300):
                files = gr.File(label="Images", file_count="multiple", file_types=["image"], type="filepath")
                model = gr.Dropdown(sets or [first_model], value=first_model, label="Model set",
                                    info=describe_set(first_model))
                sampler = gr.Radio(first_samplers, value=first_sampler, label="Sampler",
                                   info=describe_samplers(first_samplers))
                quality = gr.Radio(list(QUALITY_PRESETS), value=DEFAULT_QUALITY, label="Quality preset",
                                   info="pgs: fewer or more patches get the hard group's steps · ddim: 10/20/50 steps for "
                                   "every patch (greyed out: the sampler has no presets)",
                                   interactive=takes_presets(first_sampler))
                outscale = gr.Slider(MIN_OUTSCALE, 4, value=4, step=0.5, label="Output scale")
                seed = gr.Number(0, precision=0, label="Seed")
                go = gr.Button("Upscale", variant="primary")
            with gr.Column(scale=2):
                pick = gr.Dropdown([r.name for r in ok0], value=ok0[0].name if ok0 else None,
                                   label="Image", visible=len(ok0) > 1)
                slider_cls = getattr(gr, "ImageSlider", None)
                first = show(list(initial), None)
                if slider_cls is not None:
                    slider = slider_cls(first[0], label="Before / after (drag the handle)", type="pil",
                                        format="png", interactive=False)
                else:  # older Gradio: the after image alone
                    slider = gr.Image(first[0][1] if first[0] else None, label="After", type="pil", format="png",
                                      interactive=False)
                stats = gr.Markdown(stats_markdown(initial) if initial else "")
                with gr.Row():
                    groups = gr.Image(first[1], label="Group map: which patches got how many steps", type="pil",
                                      format="png", interactive=False)
                    download = gr.File(
                        [str(r.output) for r in ok0] or None, label="Download (PNG, full bit depth, with metadata)",
                        file_count="multiple", interactive=False)
        model.change(on_model, model, [model, sampler])
        sampler.change(lambda s: gr.update(interactive=takes_presets(s)), sampler, quality, api_name=False)
        go.click(run, [files, model, sampler, quality, outscale, seed],
                 [results_state, pick, slider, groups, stats, download], api_name="upscale")
        pick.change(show, [results_state, pick], [slider, groups], api_name=False)
    return app


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="patchscaler-ui", description="Serve the PatchScaler web app locally.")
    p.add_argument("--host", default=DEFAULT_HOST,
                   help=f"address to listen on (default {DEFAULT_HOST}: this machine only)")
    p.add_argument("--port", type=int, default=DEFAULT_PORT, help=f"port (default {DEFAULT_PORT})")
    p.add_argument("--example", action="store_true",
                   help="open with the bundled example already upscaled (runs it once at start)")
    p.add_argument("--max-megapixels", type=float, default=None, metavar="MP",
                   help="refuse images whose x4 output is above MP megapixels (default: no limit)")
    p.add_argument("--example-sampler", default=None, help=argparse.SUPPRESS)  # tests: "none" is instant
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``patchscaler-ui``; serves until interrupted."""
    args = _parser().parse_args(argv)
    try:
        import gradio  # noqa: F401
    except ImportError:
        print("patchscaler-ui: error: the web app needs Gradio: pip install --no-build-isolation -e .[ui]", file=sys.stderr)
        return 2
    initial: list[Result] = []
    if args.example:
        from patchscaler.examples import example_path

        initial = upscale_files([example_path()], sampler=args.example_sampler)
    app = build_app(initial, max_megapixels=args.max_megapixels)
    print(f"patchscaler-ui: serving on http://{args.host}:{args.port}", flush=True)
    app.queue().launch(server_name=args.host, server_port=args.port, share=False,
                       inbrowser=False, show_error=True, quiet=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
