"""`python -m patchscaler.eval`: protocol numbers on Set5/Set14, CLI behaviour, JSON layout."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import patchscaler.eval as ev

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def _one_thread():
    # 2 cores shared with training jobs: oversubscribed threads make these tests crawl.
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _write_image(path, h, w, seed, grey=False):
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    base = 127 + 60 * np.sin(xx / 5.0 + seed) * np.cos(yy / 7.0)
    arr = np.clip(base[..., None] + rng.normal(0, 12, (h, w, 3)), 0, 255).astype(np.uint8)
    Image.fromarray(arr[..., 0] if grey else arr).save(path)


@pytest.fixture
def image_folder(tmp_path):
    """tmp/mini/HR with two small images (one greyscale, one not a multiple of 4)."""
    hr = tmp_path / "mini" / "HR"
    hr.mkdir(parents=True)
    _write_image(hr / "a.png", 112, 104, 0)
    _write_image(hr / "b.png", 110, 121, 1, grey=True)
    return tmp_path / "mini"


# --- the published bicubic numbers validate the whole protocol --------------------------------


@pytest.mark.parametrize("name, psnr, ssim", [("Set5", 28.42, 0.8104), ("Set14", 26.00, 0.7027)])
def test_bicubic_reproduces_published_numbers(shared_data, name, psnr, ssim):
    ds = ev.find_dataset(os.path.join(shared_data, "benchmark", name))
    r = ev.evaluate([ds], ["bicubic"], scale=4, progress=False)[name]["bicubic"]
    assert r["images"] == {"Set5": 5, "Set14": 14}[name]
    assert abs(r["psnr"] - psnr) <= 0.05, r
    # SSIM implementations differ in the 3rd decimal (BasicSR-style, no MATLAB auto-downsampling).
    assert abs(r["ssim"] - ssim) <= 0.003, r
    assert 0 < r["hf_ratio"] < 0.05  # bicubic ×4 has almost nothing above half Nyquist


# --- CLI --------------------------------------------------------------------------------


def test_cli_json_layout_save_and_limit(image_folder, tmp_path, capsys):
    out, saved = tmp_path / "out" / "r.json", tmp_path / "sr"
    rc = ev.main(["--data", str(image_folder), "--method", "bicubic", "--json", str(out),
                  "--save", str(saved), "--no-progress"])
    assert rc == 0
    table = capsys.readouterr().out
    assert "mini" in table and "bicubic" in table
    res = json.loads(out.read_text())
    assert list(res) == ["mini"] and list(res["mini"]) == ["bicubic"]
    r = res["mini"]["bicubic"]
    assert set(r) == {"psnr", "ssim", "niqe", "niqe_project", "hf_ratio", "seconds", "images"}
    assert r["images"] == 2
    assert 15 < r["psnr"] < 60 and 0 < r["ssim"] < 1 and 0 < r["hf_ratio"] < 1 and r["seconds"] >= 0
    assert r["niqe"] is not None  # both SR images are >= 96 px after the 4-px crop
    assert sorted(p.name for p in (saved / "mini" / "bicubic").iterdir()) == ["a.png", "b.png"]
    assert Image.open(saved / "mini" / "bicubic" / "b.png").size == (120, 108)  # modcropped ×4 size

    # The HR folder itself names the dataset after its parent; --limit takes the first N.
    rc = ev.main(["--data", str(image_folder / "HR"), "--limit", "1", "--json", str(out), "--no-progress"])
    assert rc == 0
    res = json.loads(out.read_text())
    assert res["mini"]["bicubic"]["images"] == 1


@pytest.mark.parametrize("case", ["missing", "file", "empty", "unreadable", "tiny"])
def test_cli_bad_inputs_exit_2_naming_the_path(case, image_folder, tmp_path, capsys):
    if case == "missing":
        bad = tmp_path / "nope"
        data, named = bad, bad
    elif case == "file":
        data = named = image_folder / "HR" / "a.png"
    elif case == "empty":
        data = named = tmp_path / "empty"
        data.mkdir()
    elif case == "tiny":
        named = image_folder / "HR" / "c.png"
        _write_image(named, 16, 40, 2)
        data = image_folder
    else:
        # Decision: an unreadable image stops the run (a benchmark that silently skips
        # images is not comparable with published numbers).
        named = image_folder / "HR" / "c.png"
        named.write_bytes(b"this is not a png")
        data = image_folder
    out = tmp_path / "r.json"
    rc = ev.main(["--data", str(data), "--json", str(out), "--no-progress"])
    err = capsys.readouterr().err
    assert rc == 2
    assert err.startswith("error: ") and err.count("\n") == 1 and str(named) in err
    assert not out.exists()


def test_cli_subprocess_error_has_no_traceback(tmp_path):
    r = subprocess.run([sys.executable, "-m", "patchscaler.eval", "--data", str(tmp_path / "missing")],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2
    assert "Traceback" not in r.stderr and "no such folder" in r.stderr


def test_cli_unknown_method_is_a_usage_error(image_folder, capsys):
    with pytest.raises(SystemExit) as e:
        ev.main(["--data", str(image_folder), "--method", "nonexistent"])
    assert e.value.code == 2
    assert "nonexistent" in capsys.readouterr().err


# --- method registry ---------------------------------------------------------------------


@pytest.fixture
def identity_method():
    """A registered method that returns the exact HR-size bicubic plus a counter."""
    name = "test_counting"

    def factory(scale, device, model):
        def run(lr):
            return ev.bicubic_upscale(lr, scale), {"patch_evals": 3}

        return run

    ev.register_method(name)(factory)
    yield name
    del ev._METHODS[name]


def test_method_stats_are_summed(image_folder, identity_method):
    ds = ev.find_dataset(image_folder)
    res = ev.evaluate([ds], ["bicubic", identity_method], scale=4, progress=False)["mini"]
    assert res[identity_method]["patch_evals"] == 6.0
    assert res[identity_method]["psnr"] == pytest.approx(res["bicubic"]["psnr"])
    assert "patch_evals" not in res["bicubic"]
    assert identity_method in ev.available_methods()
    with pytest.raises(ValueError):
        ev.register_method("bicubic")(lambda s, d, m: None)


def test_confidence_spearman_with_a_stand_in_grm(tmp_path, monkeypatch):
    """Bicubic error is largest where the LR has strong gradients, so a confidence that
    falls with the local gradient must correlate negatively with the tile error."""
    from patchscaler.inference.codec import PixelUnshuffleCodec
    from patchscaler.models import grm

    # Texture whose strength varies smoothly across the image (flat left, busy right).
    rng = np.random.default_rng(0)
    h, w = 96, 128
    amp = np.linspace(0, 120, w)[None, :, None]
    arr = np.clip(128 + amp * rng.standard_normal((h, w, 3)), 0, 255).astype(np.uint8)
    (tmp_path / "tex").mkdir()
    Image.fromarray(arr).save(tmp_path / "tex" / "t.png")

    class StandIn:
        codec = PixelUnshuffleCodec(4)

        def __call__(self, lr):
            y0 = self.codec.encode(ev.bicubic_upscale(lr, 4))
            gx = (lr[..., :, 1:] - lr[..., :, :-1]).abs().mean(1, keepdim=True)
            gx = torch.cat([gx, gx[..., -1:]], dim=-1)
            return y0, torch.exp(-5 * gx)

    monkeypatch.setattr(grm, "load_grm", lambda scale=4, device=None, dtype=None, model=None: StandIn())
    ds = ev.find_dataset(tmp_path / "tex")
    rho, n = ev.confidence_spearman(ds, scale=4, patch=4, progress=False)
    assert n == 6 * 8  # (96/4/4) x (128/4/4) latent tiles
    assert rho < -0.6, rho


def test_a_protocol_measures_the_set_trained_for_its_degradation(image_folder, weights_dir, capsys):
    """The classic bicubic protocol measures the `bicubic` set whichever set `upscale()`
    defaults to; --degradation real measures `real`; photos without truth, the default set."""
    from patchscaler.checkpoints import DEFAULT_MODEL, weights_file
    from patchscaler.models import grm

    assert (ev.model_for("bicubic"), ev.model_for("real"), ev.model_for("none")) == ("bicubic", "real", DEFAULT_MODEL)
    model = grm.GRM(grm.GRMConfig(blocks=1)).eval()
    grm.save_grm(model.state_dict(), model.config, weights_file("grm", "bicubic"))
    assert ev.main(["--data", str(image_folder), "--method", "grm", "--no-progress"]) == 0
    assert ev.main(["--data", str(image_folder), "--method", "grm", "--degradation", "real", "--no-progress"]) == 2
    assert "model set 'real'" in capsys.readouterr().err  # only the bicubic set is installed here


def test_grm_method_and_confidence_run_on_an_untrained_grm(image_folder, weights_dir):
    """Wiring check without shipped weights: an untrained GRM starts as exact bicubic."""
    from patchscaler.checkpoints import weights_file
    from patchscaler.models import grm

    model = grm.GRM(grm.GRMConfig(blocks=1)).eval()
    grm.save_grm(model.state_dict(), model.config, weights_file("grm", "bicubic"))
    ds = ev.find_dataset(image_folder)
    res = ev.evaluate([ds], ["bicubic", "grm"], scale=4, progress=False)["mini"]
    assert res["grm"]["psnr"] == pytest.approx(res["bicubic"]["psnr"], abs=1e-3)
    rho, n = ev.confidence_spearman(ds, scale=4, progress=False)
    assert n == 2 * 2 + 2 * 2  # 28x26 and 27x30 latents in 16x16 tiles (edges kept)
    assert -1.0 <= rho <= 1.0


# --- real-degradation and no-reference protocols ------------------------------------------------


def test_real_degradation_lr_is_the_seeded_pipeline(image_folder):
    from patchscaler.data.degradations import degrade_image
    from patchscaler.data.images import load_image, modcrop

    path = image_folder / "HR" / "a.png"
    hr, lr = ev.load_pair(path, 4, "real")
    assert torch.equal(lr[0], degrade_image(modcrop(load_image(path), 4), "a.png"))
    assert torch.equal(lr, ev.load_pair(path, 4, "real")[1])
    assert not torch.equal(lr, ev.load_pair(path, 4, "real", seed=1)[1])
    assert not torch.equal(lr, ev.load_pair(path, 4, "bicubic")[1])
    ds = ev.find_dataset(image_folder)
    real = ev.evaluate([ds], ["bicubic"], scale=4, progress=False, degradation="real")["mini"]["bicubic"]
    clean = ev.evaluate([ds], ["bicubic"], scale=4, progress=False)["mini"]["bicubic"]
    assert real["psnr"] < clean["psnr"]


def test_no_reference_protocol_reports_niqe_and_hf_vs_bicubic(tmp_path, capsys):
    lr_dir = tmp_path / "photos"
    lr_dir.mkdir()
    _write_image(lr_dir / "p.png", 40, 36, 3)
    out = tmp_path / "r.json"
    assert ev.main(["--data", str(lr_dir), "--degradation", "none", "--json", str(out), "--no-progress"]) == 0
    r = json.loads(out.read_text())["photos"]["bicubic"]
    assert r["psnr"] is None and r["ssim"] is None
    assert r["niqe"] is not None and r["hf_ratio"] == pytest.approx(1.0)
    assert ev.main(["--data", str(lr_dir), "--degradation", "none", "--confidence-spearman"]) == 2
    assert "needs ground truth" in capsys.readouterr().err


def test_model_option_picks_the_set_and_a_missing_one_exits_2(image_folder, weights_dir, capsys):
    from patchscaler.checkpoints import weights_file
    from patchscaler.models import grm

    model = grm.GRM(grm.GRMConfig(blocks=1)).eval()
    grm.save_grm(model.state_dict(), model.config, weights_file("grm", "real"))
    ds = ev.find_dataset(image_folder)
    res = ev.evaluate([ds], ["grm"], scale=4, progress=False, model="real")["mini"]
    assert res["grm"]["images"] == 2
    assert ev.main(["--data", str(image_folder), "--method", "grm", "--model", "bicubic", "--no-progress"]) == 2
    assert "model set 'bicubic'" in capsys.readouterr().err
    assert ev.main(["--data", str(image_folder), "--method", "pgs", "--model", "real", "--no-progress"]) == 2
    assert "dit_x4.safetensors" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        ev.main(["--data", str(image_folder), "--model", "realistic"])


def test_compare_realworld_scores_through_evals_path(tmp_path):
    """scripts/compare_realworld.py and eval give the same digits: the same luma rule for a
    grey file (MATLAB's full-range grey, not BT.601 Y of RGB) and the same NIQE/HF."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("compare_realworld", ROOT / "scripts" / "compare_realworld.py")
    cmp = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(cmp)
    g = torch.Generator().manual_seed(0)
    grey = (torch.rand(1, 1, 24, 28, generator=g).expand(1, 3, -1, -1) * 255).round()
    path = tmp_path / "grey.png"
    Image.fromarray(grey[0, 0].numpy().astype("uint8"), mode="L").save(path)
    hr, lr = cmp.load_pair(path, "B100")
    assert hr.shape == (3, 24, 28) and lr.shape == (3, 6, 7)
    sr = (hr + 0.03 * torch.randn(hr.shape, generator=g)).clamp(0, 1)
    refs = ev.scoring_references(path, hr, lr, 4)
    assert refs[0] is True and refs[1] is hr
    got = cmp.metrics(sr, hr, refs)
    assert got == ev.image_metrics(sr, hr, 4, True, hr)
    assert got["psnr"] != ev.image_metrics(sr, hr, 4, False, hr)["psnr"]  # the rule matters on a grey file
    _, lr_only = cmp.load_pair(path, "RealSRSet")  # the file is the input: no ground truth
    no_truth = cmp.metrics(torch.rand(3, 96, 112, generator=g), None, ev.scoring_references(path, None, lr_only, 4))
    assert "psnr" not in no_truth and "ssim" not in no_truth and no_truth["hf_ratio"] > 0
