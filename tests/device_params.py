"""Constants the tests share: devices to parametrise over and tolerances per dtype.

A plain module (not conftest.py) so test files can import it by name; `tests/` and
`benchmarks/` each have a conftest.py, and `from conftest import ...` would pick
whichever was imported first when both folders are collected in one run.
"""

from __future__ import annotations

import os

import pytest
import torch

SHARED_DATA = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data"))

# (atol, rtol) per dtype for kernels that accumulate in fp32 and store in `dtype`.
TOLERANCES = {
    torch.float32: (1e-5, 1e-5),
    torch.float16: (1e-3, 1e-3),
    torch.bfloat16: (1e-2, 1e-2),
}

# CUDA cases carry the `cuda` mark; tests/conftest.py skips them without a GPU.
DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.cuda)]
