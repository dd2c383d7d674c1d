"""The ``patchscaler`` command on tmp files and folders (in-process `main`, tiny weight
files through the `fake_models` / `weights_dir` fixtures of conftest.py): outputs, formats kept (grey, alpha,
16-bit), --save-groups pictures, --json, and the errors and exit codes."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image
import torch

from patchscaler.command.cli import main
from patchscaler.imaging.image_files import read_image, write_image

from helpers import OTHER_SET, write_model_set
from patchscaler.checkpoints import DEFAULT_MODEL


def _png_bit_depth(path) -> int | None:
    """Bit depth from a PNG's IHDR, or None if ``path`` is not a PNG."""
    with open(path, "rb") as f:
        head = f.read(33)
    if head[:8] != b"\x89PNG\r\n\x1a\n" or head[12:16] != b"IHDR":
        return None
    return head[24]


def _rgb(h, w, seed=0):
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8)


@pytest.fixture
def folder(tmp_path):
    """An input folder with every kind of file the command should handle, and one bad file."""
    src = tmp_path / "in"
    (src / "sub").mkdir(parents=True)
    Image.fromarray(_rgb(6, 7)).save(src / "photo.jpg", quality=95)
    Image.fromarray(_rgb(5, 5, 1)[..., 0]).save(src / "grey.png")
    rgba = np.concatenate([_rgb(4, 6, 2), np.full((4, 6, 1), 128, np.uint8)], axis=2)
    Image.fromarray(rgba).save(src / "sub" / "alpha.png")
    deep = (np.random.default_rng(3).random((5, 4, 3)) * 65535).astype(np.uint16)
    write_image(deep, src / "sub" / "deep16.png")
    Image.fromarray((np.random.default_rng(4).random((3, 5)) * 65535).astype(np.uint16)).save(src / "grey16.png")
    Image.fromarray(_rgb(4, 4, 5)).save(src / "pic.webp")
    (src / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nthis is not a png")
    (src / "notes.txt").write_text("not an image, not listed")
    return src


def test_single_file(fake_models, tmp_path, capsys):
    src = tmp_path / "a.png"
    Image.fromarray(_rgb(6, 9)).save(src)
    assert main([str(src), "-o", str(tmp_path / "b.png"), "--sampler", "none", "-q"]) == 0
    out = Image.open(tmp_path / "b.png")
    assert out.size == (36, 24) and out.mode == "RGB"
    # Default output name beside the input.
    assert main([str(src), "--sampler", "none", "-q"]) == 0
    assert Image.open(tmp_path / "a_x4.png").size == (36, 24)
    # -o an existing folder: <stem>.png inside it.
    (tmp_path / "outdir").mkdir()
    assert main([str(src), "-o", str(tmp_path / "outdir"), "--sampler", "none", "-q"]) == 0
    assert (tmp_path / "outdir" / "a.png").is_file()


def test_folder_mirrors_names_keeps_formats_and_reports_the_bad_file(fake_models, folder, tmp_path, capsys):
    out = tmp_path / "out"
    code = main([str(folder), "-o", str(out), "--sampler", "none", "-q", "--json", str(tmp_path / "s.json")])
    assert code == 1
    err = capsys.readouterr().err
    assert "broken.png" in err and "1 of 7 images failed" in err and "Traceback" not in err
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*")) == [
        "grey.png", "grey16.png", "manifest.jsonl", "photo.png", "pic.png", "sub", "sub/alpha.png", "sub/deep16.png",
    ]
    assert Image.open(out / "photo.png").size == (28, 24)
    assert Image.open(out / "grey.png").mode == "L"
    alpha = Image.open(out / "sub" / "alpha.png")
    assert alpha.mode == "RGBA" and np.abs(np.asarray(alpha)[..., 3].astype(int) - 128).max() <= 1
    deep = read_image(out / "sub" / "deep16.png")[0]
    assert deep.dtype == np.uint16 and deep.shape == (20, 16, 3) and _png_bit_depth(out / "sub" / "deep16.png") == 16
    grey16 = read_image(out / "grey16.png")[0]
    assert grey16.dtype == np.uint16 and grey16.shape == (12, 20)
    stats = json.loads((tmp_path / "s.json").read_text())
    assert len(stats["images"]) == 6 and stats["failures"][0]["input"].endswith("broken.png")
    assert all(r["sampler"] == "none" for r in stats["images"])


def test_folder_format_option(fake_models, folder, tmp_path):
    out = tmp_path / "out"
    assert main([str(folder), "-o", str(out), "--sampler", "none", "-q", "--format", "jpg"]) == 1
    assert Image.open(out / "sub" / "alpha.jpg").mode == "RGB"  # JPEG has no alpha
    assert main([str(folder), "-o", str(tmp_path / "same"), "--sampler", "none", "-q", "--format", "same"]) == 1
    assert (tmp_path / "same" / "pic.webp").is_file()


def test_save_groups_none_draws_confidence(fake_models, tmp_path):
    src = tmp_path / "a.png"
    Image.fromarray(_rgb(20, 30)).save(src)
    groups = tmp_path / "g" / "groups.png"
    assert main([str(src), "-o", str(tmp_path / "b.png"), "--sampler", "none", "--save-groups", str(groups), "-q"]) == 0
    pic = Image.open(groups)
    assert pic.format == "PNG" and pic.width >= 120 and pic.height > 80  # image + legend strip


def test_save_groups_pgs_and_json_stdout(fake_models, tmp_path, capsys):
    from test_pipeline import banded_image

    src = tmp_path / "banded.png"
    arr = (banded_image(20, 40).permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
    Image.fromarray(arr).save(src)
    groups = tmp_path / "groups.png"
    code = main([str(src), "-o", str(tmp_path / "o.png"), "--sampler", "pgs", "--save-groups", str(groups),
                 "--json", "-", "-q", "--seed", "3"])
    assert code == 0
    stats = json.loads(capsys.readouterr().out)
    rec = stats["images"][0]
    assert rec["sampler"] == "pgs" and rec["output_size"] == [160, 80]
    assert set(rec["groups"]) == {"simple", "medium", "hard"} and rec["evaluations"] > 0
    pic = np.asarray(Image.open(groups).convert("RGB"))
    assert pic.shape[1] >= 160 and pic.shape[0] > 80
    # Several group colours show up over the image.
    assert len(np.unique(pic[:80].reshape(-1, 3) // 32, axis=0)) > 3


def test_folder_save_groups_mirrors(fake_models, folder, tmp_path):
    groups = tmp_path / "groups"
    assert main([str(folder), "-o", str(tmp_path / "out"), "--sampler", "none", "-q", "--save-groups", str(groups)]) == 1
    assert (groups / "sub" / "alpha.png").is_file() and (groups / "photo.png").is_file()


def test_unreadable_single_file_exit_2_one_line(fake_models, tmp_path, capsys):
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"nope")
    assert main([str(bad), "-o", str(tmp_path / "x.png"), "--sampler", "none", "-q"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "cannot read image" in err[0] and "bad.jpg" in err[0]
    assert not (tmp_path / "x.png").exists()


@pytest.mark.parametrize(
    "argv,match",
    [
        (["{tmp}/missing.png"], "does not exist"),
        (["{tmp}/a.png", "-o", "{tmp}/noext"], "no extension"),
        (["{tmp}/a.png", "--device", "gpu7"], "device"),
        (["{tmp}/a.png", "--max-batch-patches", "0"], "max-batch-patches"),
    ],
)
def test_usage_errors_exit_2(fake_models, tmp_path, capsys, argv, match):
    Image.fromarray(_rgb(3, 3)).save(tmp_path / "a.png")
    assert main([a.format(tmp=tmp_path) for a in argv] + ["--sampler", "none"]) == 2
    err = capsys.readouterr().err
    assert match in err and "Traceback" not in err


def test_too_large_image_is_a_clear_failure(fake_models, tmp_path, capsys):
    Image.fromarray(_rgb(40, 40)).save(tmp_path / "a.png")
    assert main([str(tmp_path / "a.png"), "--sampler", "none", "--max-megapixels", "0.01", "-q"]) == 2
    err = capsys.readouterr().err
    assert "--max-megapixels 0.01" in err and "40x40" in err  # refused from the header, before decoding


def test_no_size_limit_by_default(fake_models, tmp_path, capsys):
    # 1040x1040 -> 4160x4160 = 17.3 MP: above the old default limit of 16 MP.
    Image.fromarray(_rgb(1040, 1040)).save(tmp_path / "big.png")
    assert main([str(tmp_path / "big.png"), "--sampler", "none", "-q", "-o", str(tmp_path / "out.png")]) == 0
    with Image.open(tmp_path / "out.png") as im:
        assert im.size == (4160, 4160)


@pytest.mark.parametrize("value", ["0", "-1", "nan"])
def test_bad_max_megapixels_is_one_line(fake_models, tmp_path, capsys, value):
    Image.fromarray(_rgb(3, 3)).save(tmp_path / "a.png")
    assert main([str(tmp_path / "a.png"), "--sampler", "none", "--max-megapixels", value]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    # The API's check, in the command's spelling.
    assert len(err) == 1 and "--max-megapixels must be a positive number, got" in err[0]
    assert "max_output_megapixels" not in err[0] and "None" not in err[0]


def test_missing_dit_weights_exit_2(tmp_path, capsys, weights_dir):
    write_model_set(weights_dir, dit=False)  # the default set, without its DiT
    Image.fromarray(_rgb(3, 3)).save(tmp_path / "a.png")
    assert main([str(tmp_path / "a.png"), "--sampler", "pgs", "-q"]) == 2
    assert "does not include" in capsys.readouterr().err


def test_model_option(tmp_path, capsys, weights_dir):
    write_model_set(weights_dir, dit=False)
    Image.fromarray(_rgb(3, 3)).save(tmp_path / "a.png")
    assert main([str(tmp_path / "a.png"), "--model", OTHER_SET, "--sampler", "none", "-q"]) == 2
    assert f"model set '{OTHER_SET}'" in capsys.readouterr().err  # a missing set: one line, exit 2
    write_model_set(weights_dir, OTHER_SET, dit=False)
    assert main([str(tmp_path / "a.png"), "--model", OTHER_SET, "--sampler", "none", "-q"]) == 0
    assert Image.open(tmp_path / "a_x4.png").size == (12, 12)
    with pytest.raises(SystemExit):
        main([str(tmp_path / "a.png"), "--model", "realistic"])


def test_png16_roundtrip(tmp_path):
    rng = np.random.default_rng(0)
    for shape in [(5, 7), (5, 7, 2), (5, 7, 3), (5, 7, 4)]:
        a = (rng.random(shape) * 65535).astype(np.uint16)
        write_image(a, tmp_path / "t.png")
        b = read_image(tmp_path / "t.png")[0]
        if len(shape) == 3 and shape[2] == 2:
            continue  # PIL reads 16-bit grey+alpha as 8-bit LA; writing it is what matters
        np.testing.assert_array_equal(b, a)


def test_example_module_runs_offline(fake_models, tmp_path):
    from patchscaler.examples.__main__ import main as example_main

    assert example_main([str(tmp_path), "--sampler", "none", "-q"]) == 0
    assert Image.open(tmp_path / "dandelions_x4.png").size == (512, 512)
    assert Image.open(tmp_path / "dandelions_groups.png").width >= 512


def test_each_model_set_has_its_example_and_the_example_module_runs_the_one_of_its_set(fake_models, tmp_path, monkeypatch):
    import patchscaler.examples.__main__ as example_module
    from patchscaler.checkpoints import DEFAULT_MODEL, MODEL_SETS
    from patchscaler.examples import EXAMPLES, example_path

    assert set(EXAMPLES) == set(MODEL_SETS) and example_path() == EXAMPLES[DEFAULT_MODEL]
    pixels = {m: np.asarray(Image.open(example_path(m))) for m in MODEL_SETS}
    assert all(p.shape == (128, 128, 3) for p in pixels.values())
    # The same crop under two degradations: alike in tone, not the same pixels.
    diff = np.abs(pixels["real"].astype(int) - pixels["bicubic"].astype(int))
    assert 0 < diff.mean() < 20
    with pytest.raises(ValueError, match="model must be one of"):
        example_path("nope")
    ran = []
    monkeypatch.setattr(example_module, "cli_main", lambda argv: ran.append(argv) or 0)
    for argv, model in (([], DEFAULT_MODEL), (["--model", "bicubic"], "bicubic"), (["--model=real", "-q"], "real"),
                        (["--model", "nope"], DEFAULT_MODEL), (["--model"], DEFAULT_MODEL)):
        assert example_module.main([str(tmp_path)] + argv) == 0
        example, rest = ran[-1][0], ran[-1][5:]  # then -o OUT --save-groups GROUPS
        assert example == str(example_path(model)) and rest == argv  # the options go on as given


def test_the_real_example_is_the_seeded_degradation_of_the_crop(shared_data):
    """`dandelions_real_lr.png` is what `scripts/make_example.py` makes (so it can be remade)."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
    import make_example
    from patchscaler.examples import EXAMPLE_REAL_LR

    photo = Path(shared_data) / "train" / "photos" / make_example.DEFAULT_PHOTO.name
    lr = make_example.degraded(make_example.example_hr(photo), "real")
    bundled = torch.from_numpy(np.asarray(Image.open(EXAMPLE_REAL_LR)).astype(np.float32) / 255).permute(2, 0, 1)
    assert torch.equal((lr * 255).round() / 255, bundled)


def test_console_script_help():
    res = subprocess.run([sys.executable, "-m", "patchscaler.command.cli", "--help"], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0 and "--save-groups" in res.stdout and "--bf16" in res.stdout


@pytest.mark.parametrize("sampler", ["none", "pgs"])
def test_save_groups_on_a_one_pixel_image(fake_models, tmp_path, sampler):
    Image.fromarray(_rgb(1, 1)).save(tmp_path / "dot.png")
    groups = tmp_path / "dot_groups.png"
    assert main([str(tmp_path / "dot.png"), "--sampler", sampler, "--save-groups", str(groups), "-q"]) == 0
    assert Image.open(tmp_path / "dot_x4.png").size == (4, 4)
    pic = Image.open(groups)
    assert pic.width >= 320 and pic.height > 320  # enlarged so the legend fits and reads


def test_readme_example_command_with_shipped_weights(tmp_path):
    """The README's first command (its `patchscaler ...` part), as written, with the weights
    that ship: the default set with its own default sampler (the set's set.json), the output
    is 4x, the picture of the groups (or, for the GRM alone, the confidence) is made."""
    import os
    import re
    import shlex

    readme = open(os.path.join(os.path.dirname(__file__), "..", "README.md")).read()
    first_block = re.search(r"```bash\n(.*?)\n```", readme, re.S).group(1)
    command = next(part.strip() for part in first_block.split("&&") if part.strip().startswith("patchscaler "))
    argv = shlex.split(command)[1:]
    root = os.path.join(os.path.dirname(__file__), "..")
    argv = [os.path.join(root, a) if a.endswith("_lr.png") else str(tmp_path / a) if a.endswith(".png") else a for a in argv]
    assert main(argv + ["-q"]) == 0
    out = Image.open(tmp_path / "dandelions_x4.png")
    assert out.size == (512, 512)
    groups = Image.open(argv[argv.index("--save-groups") + 1])
    assert groups.width >= 512
    # Byte for byte the default set with its own sampler named, and not the other set, nor
    # the default set's GRM alone where its own sampler is a diffusion one.
    from patchscaler.checkpoints import set_manifest

    own = set_manifest(DEFAULT_MODEL)["default_sampler"]
    named = [("named.png", ["--model", DEFAULT_MODEL, "--sampler", own]), ("other.png", ["--model", OTHER_SET])]
    if own != "none":
        named.append(("grm.png", ["--sampler", "none"]))
    for name, opts in named:
        assert main([argv[0], "-o", str(tmp_path / name), *opts, "-q"]) == 0
    pics = {name: np.asarray(Image.open(tmp_path / name), dtype=np.int16) for name, _ in named}
    a = np.asarray(out, dtype=np.int16)
    assert np.array_equal(a, pics.pop("named.png"))
    assert all(np.abs(a - b).mean() > 0.5 for b in pics.values())


def test_quality_option(fake_models, tmp_path):
    Image.fromarray(_rgb(6, 6)).save(tmp_path / "a.png")
    assert main([str(tmp_path / "a.png"), "--sampler", "pgs", "--quality", "detail", "-q"]) == 0
    assert fake_models["qualities"][-1] == "detail"


@pytest.mark.parametrize("sampler", ["none", "uniform"])
def test_quality_is_refused_where_the_sampler_has_no_presets(fake_models, tmp_path, capsys, sampler):
    """Not silently ignored: the GRM alone (the `real` set's own sampler) and the uniform
    baseline give the same image whatever --quality says."""
    Image.fromarray(_rgb(6, 6)).save(tmp_path / "a.png")
    assert main([str(tmp_path / "a.png"), "--sampler", sampler, "--quality", "fast", "-q"]) == 2
    err = capsys.readouterr().err
    assert f"sampler is {sampler!r}" in err and "--quality fast" in err
    assert ("--model bicubic" in err) == (sampler == "none")
    assert not (tmp_path / "a_x4.png").exists()
    assert main([str(tmp_path / "a.png"), "--sampler", sampler, "-q"]) == 0  # without it, it runs


def test_example_comparison_picture(shared_data, tmp_path, monkeypatch):
    """`python scripts/compare.py`: four labelled panels of the same region."""
    import os

    monkeypatch.syspath_prepend(os.path.join(os.path.dirname(__file__), "..", "scripts"))
    import compare

    photo = os.path.join(shared_data, "train", "photos", "lomiri16_seeding_by_Clements_Engelhardt.jpg")
    out = compare.compare(tmp_path / "cmp.png", photo)
    pic = Image.open(out)
    w = compare.REGION[2] * compare.ZOOM
    assert pic.size == (4 * w + 3 * 4, compare.REGION[3] * compare.ZOOM + compare.LABEL_HEIGHT)
    # The GRM and PGS panels differ (the sampler ran), and PGS is not the bicubic panel.
    a = np.asarray(pic, dtype=np.int16)
    top = compare.LABEL_HEIGHT
    panels = [a[top:, i * (w + 4) : i * (w + 4) + w] for i in range(4)]
    assert np.abs(panels[1] - panels[2]).mean() > 0.5 and np.abs(panels[0] - panels[2]).mean() > 1.0
