"""Constants the tests share: devices to parametrise over and tolerances per dtype.

A plain module (not conftest.py) so test files can import it by name; `tests/` and
`benchmarks/` each have a conftest.py, and `from conftest import ...` would pick
whichever was imported first when both folders are collected in one run.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

from patchscaler.kernels import TRITON_AVAILABLE

SHARED_DATA = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data"))

# (atol, rtol) per dtype for kernels that accumulate in fp32 and store in `dtype`.
TOLERANCES = {
    torch.float32: (1e-5, 1e-5),
    torch.float16: (1e-3, 1e-3),
    torch.bfloat16: (1e-2, 1e-2),
}

# CUDA cases carry the `cuda` mark; tests/conftest.py skips them without a GPU.
DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.cuda)]

# Triton kernels on CPU tensors need TRITON_INTERPRET=1 set before the kernels are
# defined, so a test file runs its `test_interp_*` cases again in a child pytest with it
# set; in the parent those cases are marked `needs_interpreter` and skip.
INTERPRETED = os.environ.get("TRITON_INTERPRET") == "1"

needs_interpreter = pytest.mark.skipif(
    not (INTERPRETED and TRITON_AVAILABLE), reason="runs in the child process of test_triton_interpreted"
)
runs_interpreter_child = pytest.mark.skipif(
    INTERPRETED or not TRITON_AVAILABLE, reason="needs triton; runs the interpreted tests"
)


def run_interpreted_tests(test_file: str) -> None:
    """Runs `test_interp_*` of `test_file` in a child pytest under TRITON_INTERPRET=1; asserts all passed."""
    env = dict(os.environ, TRITON_INTERPRET="1")
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-k", "test_interp_", test_file]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=os.path.dirname(test_file))
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    assert " passed" in proc.stdout and "skipped" not in proc.stdout.splitlines()[-1], proc.stdout[-2000:]
