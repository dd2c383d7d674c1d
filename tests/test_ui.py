"""The web app (patchscaler/command/ui.py): the request function alone, then the real server in a
subprocess driven through gradio_client as the page drives it, then (when Debian's
chromium is installed) the page rendered in a headless browser.

CI installs gradio and gradio_client from requirements.txt, so there these tests must run:
a missing package fails instead of skipping.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

if os.environ.get("CI"):
    import gradio  # noqa: F401
    import gradio_client
else:
    pytest.importorskip("gradio")
    gradio_client = pytest.importorskip("gradio_client")

from patchscaler.imaging.image_files import read_image  # noqa: E402
from patchscaler.command.ui import TITLE, upscale_files  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
START_TIMEOUT_S = 180  # importing torch and gradio on a loaded 2-core machine


def _image(path: Path, h: int = 20, w: int = 24, bits: int = 8) -> Path:
    """A small random RGB PNG (16-bit through pypng's writer when bits == 16)."""
    rng = np.random.default_rng(0)
    if bits == 16:
        from patchscaler.imaging.image_files import write_image

        write_image(rng.integers(0, 65536, (h, w, 3), dtype=np.uint16), path)
    else:
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(path)
    return path


def test_upscale_files_writes_x4_at_full_bit_depth(tmp_path):
    src = _image(tmp_path / "in16.png", bits=16)
    (res,) = upscale_files([src], model="bicubic", sampler="none", seed=3, out_dir=tmp_path / "out")
    assert res.error is None
    out, meta = read_image(res.output)
    assert out.shape == (80, 96, 3) and out.dtype == np.uint16  # ×4, 16 bits kept
    assert "sampler=none" in meta.text["patchscaler"] and "seed=3" in meta.text["patchscaler"]
    assert res.after.size == res.before.size == (96, 80)  # the slider's two sides align
    assert res.output_size == (96, 80) and res.input_size == (24, 20)


def test_upscale_files_bad_file_fails_alone(tmp_path):
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"this is not a PNG")
    good = _image(tmp_path / "good.png")
    bad_res, good_res = upscale_files([bad, good], sampler="none", out_dir=tmp_path / "out")
    # one line naming the file, without the upload's temporary folder
    assert bad_res.error is not None and "broken.png" in bad_res.error and str(tmp_path) not in bad_res.error
    assert good_res.error is None and read_image(good_res.output)[0].shape == (80, 96, 3)


def test_upscale_files_outscale(tmp_path):
    (res,) = upscale_files([_image(tmp_path / "a.png")], sampler="none", outscale=2, out_dir=tmp_path)
    assert res.output.name == "a_x2.png" and read_image(res.output)[0].shape == (40, 48, 3)
    with pytest.raises(ValueError):
        upscale_files([tmp_path / "a.png"], sampler="none", outscale=0.5)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """`python -m patchscaler.ui --port P` in a subprocess; yields its URL."""
    port = _free_port()
    log = tmp_path_factory.mktemp("ui") / "server.log"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join(
        [str(ROOT)] + ([os.environ["PYTHONPATH"]] if os.environ.get("PYTHONPATH") else []))}
    with open(log, "w") as fp:
        proc = subprocess.Popen([sys.executable, "-m", "patchscaler.ui", "--port", str(port)],
                                stdout=fp, stderr=subprocess.STDOUT, env=env, cwd=ROOT)
    url = f"http://127.0.0.1:{port}/"
    deadline = time.monotonic() + START_TIMEOUT_S
    while True:
        if proc.poll() is not None:
            pytest.fail(f"the server exited with {proc.returncode}:\n{log.read_text()}")
        try:
            with urllib.request.urlopen(url, timeout=5) as r:
                if r.status == 200:
                    break
        except OSError:
            pass
        if time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"no answer on {url} after {START_TIMEOUT_S} s:\n{log.read_text()}")
        time.sleep(0.5)
    yield url
    proc.terminate()
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()


def test_page_loads_nothing_from_other_hosts(server):
    # Offline by design: every script and stylesheet the page loads comes from this server
    # (Gradio 6's default theme ships its fonts; a Google-Fonts theme would show up here).
    with urllib.request.urlopen(server, timeout=30) as r:
        html = r.read().decode()
    urls = re.findall(r'<(?:script|link)\b[^>]*?(?:src|href)="([^"]*)"', html)
    assert urls, "no scripts or stylesheets found: the page layout changed, update this test"
    assert all(not u.startswith(("http:", "https:", "//")) or u.startswith(server) for u in urls), urls


def _predict(client, path: Path):
    return client.predict(
        [gradio_client.handle_file(str(path))], "bicubic", "none", "balanced", 4, 0, api_name="/upscale")


def test_server_upscales_then_survives_a_bad_file(server, tmp_path):
    client = gradio_client.Client(server, verbose=False, download_files=str(tmp_path / "dl"))
    src = _image(tmp_path / "tiny.png", h=16, w=20)
    pick, slider, groups, stats, download = _predict(client, src)
    (out_file,) = download  # one input, one downloadable PNG
    out, _ = read_image(out_file)
    assert out.shape == (64, 80, 3)  # ×4, read back from the file the page offers
    assert "tiny.png" in stats and "20×16 → 80×64" in stats  # width×height in the table

    bad = tmp_path / "garbage.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n but then nothing")
    with pytest.raises(Exception) as info:  # gradio_client raises AppError with the gr.Error text
        _predict(client, bad)
    assert "garbage.png" in str(info.value) and "cannot read image" in str(info.value)

    # the same server still answers, with the right result
    *_, download = _predict(client, src)
    assert read_image(download[0])[0].shape == (64, 80, 3)


@pytest.mark.skipif(shutil.which("chromium") is None, reason="Debian's chromium is not installed")
def test_page_renders_in_headless_chromium(server, tmp_path):
    # The page is built by JavaScript: --dump-dom prints the DOM after the scripts ran
    # (the virtual-time budget lets them load the app's config from the server).
    dom = subprocess.run(
        ["chromium", "--headless", "--no-sandbox", "--disable-gpu", f"--user-data-dir={tmp_path / 'profile'}",
         "--virtual-time-budget=20000", "--dump-dom", server],
        capture_output=True, text=True, timeout=120,
    ).stdout
    # Rendered elements, which the served HTML (config as JSON) does not contain as such:
    # the Markdown heading turned into <h1>, and a component's label in its element.
    assert f"<h1>{TITLE}</h1>" in dom
    assert ">Upscale<" in dom and ">Quality preset<" in dom
    # The preset radios are greyed out exactly when the default set's own sampler has no presets
    # (the `real` set's GRM alone), so a choice there is never silently ignored.
    from patchscaler.checkpoints import DEFAULT_MODEL
    from patchscaler.command.ui import default_sampler_for
    from patchscaler.sampling.registry import takes_presets

    fast = re.search(r'<input[^>]*value="fast"[^>]*>', dom).group(0)
    assert ("disabled" in fast) == (not takes_presets(default_sampler_for(DEFAULT_MODEL)))


def test_server_mixed_upload_keeps_the_good_images(server, tmp_path):
    client = gradio_client.Client(server, verbose=False, download_files=str(tmp_path / "dl"))
    bad = tmp_path / "empty.png"
    bad.write_bytes(b"")
    good = _image(tmp_path / "ok.png", h=12, w=12)
    pick, slider, groups, stats, download = client.predict(
        [gradio_client.handle_file(str(bad)), gradio_client.handle_file(str(good))],
        "bicubic", "none", "balanced", 2, 0, api_name="/upscale")
    assert [Path(f).name for f in download] == ["ok_x2.png"]  # outscale 2, the good file only
    assert read_image(download[0])[0].shape == (24, 24, 3)
    assert "empty.png" in stats and "failed" in stats  # the table says what was not done


def test_upscale_files_size_limit(tmp_path):
    # --max-megapixels: 20x24 in is 80x96 = 0.0077 MP out, above 0.005: refused before decoding
    (res,) = upscale_files([_image(tmp_path / "big.png")], sampler="none", max_megapixels=0.005, out_dir=tmp_path)
    assert res.error is not None and "MP" in res.error and res.output is None
    (res,) = upscale_files([tmp_path / "big.png"], sampler="none", max_megapixels=0.01, out_dir=tmp_path)
    assert res.error is None


def test_upscale_files_refuses_a_preset_the_sampler_has_not_and_records_the_one_used(tmp_path):
    src = _image(tmp_path / "p.png", h=16, w=16)
    with pytest.raises(ValueError, match="which has none"):
        upscale_files([src], sampler="none", quality="detail", out_dir=tmp_path)
    (res,) = upscale_files([src], sampler="none", out_dir=tmp_path / "none")
    assert "quality" not in Image.open(res.output).text["patchscaler"]
    (res,) = upscale_files([src], sampler="pgs", model="bicubic", quality="fast", out_dir=tmp_path / "pgs")
    assert "quality=fast" in Image.open(res.output).text["patchscaler"]


def test_upscale_files_reports_progress(tmp_path):
    # The page's progress bar is fed by upscale()'s progress callable: GRM tiles, then DiT
    # patch-evaluations, counted up to their planned total for each file.
    calls = []
    (res,) = upscale_files([_image(tmp_path / "p.png", h=16, w=16)], sampler="pgs", model="bicubic", quality="fast",
                           out_dir=tmp_path, progress=lambda i, done, total, stage: calls.append((i, done, total, stage)))
    assert res.error is None
    dit = [c for c in calls if c[3] == "dit"]
    assert dit and dit[-1][1] == dit[-1][2] == res.summary["evaluations"]
    assert {c[0] for c in calls} == {0} and any(c[3] == "grm" for c in calls)
