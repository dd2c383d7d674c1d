"""Folder runs of the command: resume, --overwrite, the manifest, and torchrun with 2 gloo ranks."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from helpers import write_model_set
from patchscaler.command.cli import main


def _folder(tmp_path, n=6, broken=True):
    src = tmp_path / "in"
    (src / "sub").mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(n):
        h, w = 12 + 3 * i, 16 + 2 * (i % 3)
        where = src / "sub" if i % 2 else src
        Image.fromarray((rng.random((h, w, 3)) * 255).astype(np.uint8)).save(where / f"img{i}.png")
    if broken:
        (src / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    return src


def test_rerun_skips_done_images_overwrite_redoes_and_manifest_lists_each(fake_models, tmp_path, capsys):
    src, out = _folder(tmp_path), tmp_path / "out"
    assert main([str(src), "-o", str(out), "--sampler", "none", "-q"]) == 1
    lines = [json.loads(x) for x in (out / "manifest.jsonl").read_text().splitlines()]
    assert sorted(e["status"] for e in lines) == ["done"] * 6 + ["failed"]
    assert all({"input", "output", "seconds", "status"} <= set(e) for e in lines)
    assert [e["evaluations"] for e in lines if e["status"] == "done"] == [0] * 6  # GRM only: no DiT evaluations
    first = (out / "img0.png").stat().st_mtime_ns
    (out / "sub" / "img1.png").unlink()  # as if the job had been killed before this one
    capsys.readouterr()
    assert main([str(src), "-o", str(out), "--sampler", "none", "-q"]) == 1
    lines = [json.loads(x) for x in (out / "manifest.jsonl").read_text().splitlines()][7:]
    assert sorted(e["status"] for e in lines) == ["done", "failed"] + ["skipped"] * 5
    assert [e["input"] for e in lines if e["status"] == "done"] == [str(src / "sub" / "img1.png")]
    assert (out / "img0.png").stat().st_mtime_ns == first
    assert main([str(src), "-o", str(out), "--sampler", "none", "-q", "--overwrite",
                 "--manifest", str(tmp_path / "m.jsonl")]) == 1
    assert (out / "img0.png").stat().st_mtime_ns != first
    assert len((tmp_path / "m.jsonl").read_text().splitlines()) == 7
    # No temporary files are left behind by the atomic writes.
    assert not [p for p in out.rglob("*") if p.name.startswith(".") or p.suffix == ".tmp"]


def _run(args, env):
    return subprocess.run(args, env=env, capture_output=True, text=True, timeout=600)


def test_torchrun_two_ranks_equal_one_process_and_report_failures(weights_dir, tmp_path):
    write_model_set(weights_dir, dit=True)
    src = _folder(tmp_path)
    env = dict(os.environ, OMP_NUM_THREADS="1", PATCHSCALER_WEIGHTS=str(weights_dir))
    single = _run([sys.executable, "-m", "patchscaler", str(src), "-o", str(tmp_path / "one"), "--sampler", "pgs",
                   "--threads", "1"], env)
    assert single.returncode == 1, single.stderr
    multi = _run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                  "-m", "patchscaler", str(src), "-o", str(tmp_path / "two"), "--sampler", "pgs", "--threads", "1"], env)
    assert multi.returncode == 1, multi.stderr
    one = sorted(p.relative_to(tmp_path / "one") for p in (tmp_path / "one").rglob("*.png"))
    two = sorted(p.relative_to(tmp_path / "two") for p in (tmp_path / "two").rglob("*.png"))
    assert one == two and len(one) == 6
    for rel in one:
        assert np.array_equal(np.asarray(Image.open(tmp_path / "one" / rel)), np.asarray(Image.open(tmp_path / "two" / rel)))
    # The broken file (on whichever rank) is listed once, by rank 0, in the closing summary.
    assert multi.stderr.count("1 of 7 images failed") == 1 and "broken.png" in multi.stderr
    lines = [json.loads(x) for x in (tmp_path / "two" / "manifest.jsonl").read_text().splitlines()]
    assert {e["rank"] for e in lines} <= {0, 1} and len(lines) == 7
    # A rerun under torchrun skips what both ranks wrote.
    again = _run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                  "-m", "patchscaler", str(src), "-o", str(tmp_path / "two"), "--sampler", "pgs", "--threads", "1"], env)
    assert again.returncode == 1
    lines = [json.loads(x) for x in (tmp_path / "two" / "manifest.jsonl").read_text().splitlines()][7:]
    assert sorted(e["status"] for e in lines) == ["failed"] + ["skipped"] * 6


@pytest.mark.parametrize("flag", ["--overwrite", "--manifest"])
def test_folder_flags_are_in_the_help(flag, capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    assert flag in capsys.readouterr().out
