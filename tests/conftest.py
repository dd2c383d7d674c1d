"""Test configuration: CUDA cases skip without a GPU; `shared_data` locates ../shared/data."""

from __future__ import annotations

import os

import pytest
import torch

import patchscaler  # noqa: F401  (registers torch.ops.patchscaler.*)
from device_params import SHARED_DATA


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
