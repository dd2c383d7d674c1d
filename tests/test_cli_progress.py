"""The command's progress inside an image (`patchscaler.command.progress_bars.ImageBar`), the API's
errors in the command's spelling, and the folder summary that always says what was
written, kept and failed."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
from PIL import Image

from patchscaler.command import cli
from patchscaler.command.progress_bars import ImageBar


class Recorder:
    """A stand-in for tqdm that keeps what the bar was told."""

    made: list["Recorder"] = []

    def __init__(self, **kw):
        self.kw, self.total, self.n, self.postfix, self.desc = kw, kw.get("total"), 0, "", kw.get("desc")
        self.closed, self.resets, self.seen = False, 0, []
        Recorder.made.append(self)

    def set_postfix_str(self, s, refresh=True):
        self.postfix = s

    def set_description_str(self, s, refresh=True):
        self.desc = s

    def refresh(self):
        self.seen.append((self.n, self.total))

    def reset(self, total=None):
        self.resets += 1
        self.n, self.total = 0, total

    def close(self):
        self.closed = True


def test_stages_share_one_bar_that_never_runs_backwards():
    bar = ImageBar(make_bar=Recorder)
    for d in range(1, 3):
        bar(d, 2, "grm")
    # DiT totals per band: the second band's count starts again at 0.
    for d in (0, 40, 100):
        bar(d, 100, "dit")
    for d in (0, 30, 60):
        bar(d, 60, "dit")
    r = bar._bar
    assert (r.n, r.total) == (162, 162) and bar.done == bar.total == 162
    assert bar.stages() == {"grm": (2, 2), "dit": (160, 160)}
    assert r.postfix == "GRM tiles 2/2, DiT evaluations 160/160"
    assert all(b >= a for (a, _), (b, _) in zip(r.seen, r.seen[1:]))  # monotone position
    assert all(n <= t for n, t in r.seen)


def test_new_image_resets_and_disabled_draws_nothing():
    bar = ImageBar(make_bar=Recorder, leave=False, position=1)
    bar.start("a.png")
    bar(5, 10, "dit")
    bar.start("b.png")
    assert bar.done == 0 and bar.total == 0 and bar._bar.resets == 1 and bar._bar.desc == "b.png"
    bar(3, 4, "dit")
    assert (bar._bar.n, bar._bar.total) == (3, 4) and bar._bar.kw["leave"] is False and bar._bar.kw["position"] == 1
    bar.close()
    Recorder.made.clear()
    off = ImageBar(enabled=False, make_bar=Recorder)
    off(1, 2, "grm")
    assert Recorder.made == [] and off.done == 1  # counted, not drawn


def test_real_tqdm_shows_the_stages():
    buf = io.StringIO()
    bar = ImageBar(file=buf)
    bar(1, 1, "grm")
    bar(8, 8, "dit")
    bar.close()
    text = buf.getvalue()
    assert "9/9" in text and "DiT evaluations 8/8" in text


def _image(path, seed=0, size=(6, 7)):
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, size=(*size, 3), dtype=np.uint8)).save(path)


@pytest.fixture
def seen_progress(monkeypatch):
    """What the command passes to `upscale(progress=...)`, per call (the real upscale runs)."""
    import patchscaler.api as api

    real, seen = api.upscale, []

    def upscale(x, *, progress=False, **kw):
        seen.append(progress)
        return real(x, **kw, progress=progress)

    monkeypatch.setattr(api, "upscale", upscale)
    return seen


def _json_records(capsys) -> tuple[list[dict], str]:
    captured = capsys.readouterr()
    return json.loads(captured.out)["images"], captured.err


def test_single_image_bar_advances_with_the_dit(fake_models, seen_progress, tmp_path, capsys):
    # The tiny models of conftest.py, PGS: the bar is told every GRM tile and DiT evaluation.
    _image(tmp_path / "a.png", size=(40, 44))
    assert cli.main([str(tmp_path / "a.png"), "--sampler", "pgs", "--progress", "--json", "-"]) == 0
    (bar,) = seen_progress
    (rec,), err = _json_records(capsys)
    assert isinstance(bar, ImageBar) and rec["evaluations"] > 0
    assert bar.stages() == {"grm": (1, 1), "dit": (rec["evaluations"], rec["evaluations"])}
    assert f"DiT evaluations {rec['evaluations']}/{rec['evaluations']}" in err and "wrote " in err


@pytest.mark.parametrize("flags", [["-q"], []])  # -q; and stderr not a terminal (pytest's capture)
def test_no_bar_when_quiet_or_not_a_terminal(fake_models, seen_progress, tmp_path, capsys, flags):
    _image(tmp_path / "a.png")
    assert cli.main([str(tmp_path / "a.png"), "--sampler", "pgs", *flags]) == 0
    assert seen_progress == [False]
    err = capsys.readouterr().err
    assert "DiT evaluations" not in err and "patch-step" not in err


def test_folder_run_shows_each_image_and_the_summary_of_a_rerun(fake_models, seen_progress, tmp_path, capsys):
    src, out = tmp_path / "in", tmp_path / "out"
    src.mkdir()
    for i in range(3):
        _image(src / f"p{i}.png", seed=i, size=(20 + 4 * i, 24))
    assert cli.main([str(src), "-o", str(out), "--sampler", "pgs", "--progress", "--json", "-"]) == 0
    records, err = _json_records(capsys)
    assert len(seen_progress) == 3 and len({id(b) for b in seen_progress}) == 1  # one second line, restarted
    bar = seen_progress[0]
    assert bar.stages()["dit"] == (records[-1]["evaluations"],) * 2  # the last image's own count
    assert "images" in err and f"wrote 3 images to {out}" in err
    for r in records:
        assert f"DiT evaluations {r['evaluations']}/{r['evaluations']}" in err
    # A rerun that skips the finished images and hits a bad one says all three things.
    (src / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\nnot a png")
    (src / "p3.png").write_bytes((src / "p0.png").read_bytes())
    assert cli.main([str(src), "-o", str(out), "--sampler", "pgs", "-q"]) == 1
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert last == f"wrote 1 image to {out}; 3 already there, kept (--overwrite redoes them); 1 failed"


def test_summary_names_only_what_happened():
    assert cli.summary(2, 0, 0, "o") == "wrote 2 images to o"
    assert cli.summary(0, 4, 1, "o") == "wrote 0 images to o; 4 already there, kept (--overwrite redoes them); 1 failed"


@pytest.mark.parametrize(
    "api_message,cli_message",
    [
        ("sampler must be one of 'pgs', 'uniform', 'none' or None, got 'nope'",
         "--sampler must be one of 'pgs', 'uniform', 'none', got 'nope'"),
        ("device='cuda' was asked for but CUDA is not available; use device='cpu'",
         "--device cuda was asked for but CUDA is not available; use --device cpu"),
        ("device 'gpu7' is not a valid torch device: Invalid device string",
         "--device 'gpu7' is not a valid torch device: Invalid device string"),
        ("max_batch_patches must be a positive int or None, got 0", "--max-batch-patches must be a positive int, got 0"),
        ("memory_budget must be at least 64M, got '1K'", "--max-memory must be at least 64M, got '1K'"),
        ("give either outscale or width/height, not both", "give either --outscale or --width/--height, not both"),
        ("the output 9x9 is larger than ×4 of the 2x2 input (8x8); lower width/height)",
         "the output 9x9 is larger than ×4 of the 2x2 input (8x8); lower --width/--height)"),
        ("model set 'real' is not in this install", "model set 'real' is not in this install"),  # prose stays
        ("sampler 'pgs' needs dit_x4.safetensors; or use sampler='none' (the GRM alone)",
         "--sampler 'pgs' needs dit_x4.safetensors; or use --sampler none (the GRM alone)"),
    ],
)
def test_api_errors_in_the_commands_spelling(api_message, cli_message):
    assert cli.cli_spelling(api_message) == cli_message


@pytest.mark.parametrize(
    "argv,says",
    [
        (["--sampler", "nope"], "--sampler must be one of"),
        (["--quality", "best"], "--quality must be one of"),
        (["--device", "gpu7"], "--device 'gpu7' is not a valid torch device"),
        (["--max-memory", "1K"], "--max-memory must be at least"),
        (["--outscale", "2", "--width", "8"], "give either --outscale or --width/--height"),
    ],
)
def test_bad_options_exit_2_in_cli_spelling(fake_models, tmp_path, capsys, argv, says):
    _image(tmp_path / "a.png")
    assert cli.main([str(tmp_path / "a.png"), *argv]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and says in err[0] and "=" not in err[0]
