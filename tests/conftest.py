"""Shared test configuration: device parametrisation and per-dtype tolerances."""

from __future__ import annotations

import os

import pytest
import torch

import patchscaler  # noqa: F401  (registers torch.ops.patchscaler.*)

SHARED_DATA = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data"))

# (atol, rtol) per dtype for kernels that accumulate in fp32 and store in `dtype`.
TOLERANCES = {
    torch.float32: (1e-5, 1e-5),
    torch.float16: (1e-3, 1e-3),
    torch.bfloat16: (1e-2, 1e-2),
}

DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.cuda)]


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def shared_data() -> str:
    """Path of ../shared/data; tests that need it skip with a message if it is absent."""
    if not os.path.isdir(SHARED_DATA):
        pytest.skip(f"shared data folder not found at {SHARED_DATA}")
    return SHARED_DATA
