"""The command answers --help, --version and argument errors without importing torch
(issue 19: `patchscaler --help` took 6-13 s because it loaded torch first)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

import patchscaler

ROOT = os.path.join(os.path.dirname(__file__), "..")


def _imported(args: list[str]) -> tuple[subprocess.CompletedProcess, set[str]]:
    """Run ``python -X importtime <args>``; the process and the modules it imported."""
    env = {**os.environ, "PYTHONPATH": os.path.abspath(ROOT)}
    res = subprocess.run([sys.executable, "-X", "importtime", *args], capture_output=True, text=True,
                         timeout=300, cwd=ROOT, env=env)
    # importtime lines: "import time: self [us] | cumulative | <indent>module"
    mods = {line.rsplit("|", 1)[1].strip() for line in res.stderr.splitlines() if line.startswith("import time:")}
    return res, mods


@pytest.mark.parametrize(
    "args,code,says",
    [
        (["-m", "patchscaler", "--help"], 0, "--save-groups"),
        (["-m", "patchscaler", "--version"], 0, f"patchscaler {patchscaler.__version__}"),
        (["-m", "patchscaler"], 2, "the following arguments are required: input"),
        (["-m", "patchscaler", "a.png", "--threads", "0"], 2, "--threads: must be >= 1"),
        (["-m", "patchscaler", "a.png", "--model", "nope"], 2, "invalid choice: 'nope'"),
        (["-m", "patchscaler", "a.png", "-q", "--progress"], 2, "not allowed with argument"),
        (["-m", "patchscaler.info", "--no-torch"], 0, "weights (shipped):"),
    ],
)
def test_answers_without_torch(args, code, says):
    res, mods = _imported(args)
    assert res.returncode == code, res.stderr[-2000:]
    assert says in res.stdout + res.stderr
    assert "patchscaler" in mods  # the measurement saw the package's imports at all
    assert "torch" not in mods and "numpy" not in mods


def test_a_run_still_imports_torch():
    # The other side of the check above: the list does show torch when the work needs it.
    res, mods = _imported(["-m", "patchscaler.info"])
    assert res.returncode == 0 and "torch" in mods


def test_lazy_package_attributes_keep_the_documented_imports():
    code = ("import sys, patchscaler; assert 'torch' not in sys.modules; "
            "from patchscaler import upscale; import patchscaler.api as api; assert upscale is api.upscale; "
            "assert patchscaler.upscale is api.upscale; import torch; "
            "assert hasattr(torch.ops.patchscaler, 'gather_patches'); "
            "assert patchscaler.ops.OPS and 'upscale' in dir(patchscaler); print('ok')")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, cwd=ROOT,
                         env={**os.environ, "PYTHONPATH": os.path.abspath(ROOT)})
    assert res.returncode == 0 and res.stdout.strip() == "ok", res.stderr[-2000:]
    with pytest.raises(AttributeError, match="no attribute 'no_such_thing'"):
        patchscaler.no_such_thing


@pytest.mark.parametrize("given,expected", [(None, "PASSIVE"), ("ACTIVE", "ACTIVE")])
def test_idle_threads_sleep_unless_the_user_chose(given, expected):
    # Spinning OpenMP threads collapsed the example under load (benchmarks/results/threads-under-load.md):
    # the command sets the wait policy before the first torch import, keeping a user's own choice.
    code = ("import os, sys; from patchscaler.command import cli; assert 'torch' not in sys.modules; "
            "code = cli.main(['missing.png', '--sampler', 'none']); "
            "print(code, os.environ['OMP_WAIT_POLICY'], 'torch' in sys.modules)")
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    env["PYTHONPATH"] = os.path.abspath(ROOT)
    if given is not None:
        env["OMP_WAIT_POLICY"] = given
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, cwd=ROOT, env=env)
    assert res.stdout.split() == ["2", expected, "True"], res.stderr[-2000:]
