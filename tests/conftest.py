"""Test configuration: CUDA cases skip without a GPU; `shared_data` locates ../shared/data;
`weights_dir` and `fake_models` point the package at tiny weight files."""

from __future__ import annotations

import os

import pytest
import torch

import patchscaler.ops  # noqa: F401  (registers torch.ops.patchscaler.*)
from helpers import SHARED_DATA, write_model_set
from patchscaler.checkpoints import DEFAULT_MODEL


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


@pytest.fixture
def weights_dir(tmp_path, monkeypatch):
    """An empty weights root (``PATCHSCALER_WEIGHTS``) to write tiny model sets into
    (`helpers.write_model_set`); loaded models are forgotten before and after."""
    from patchscaler import checkpoints

    root = tmp_path / "weights"
    root.mkdir()
    monkeypatch.setenv(checkpoints.ENV_VAR, str(root))
    checkpoints.clear()
    yield root
    checkpoints.clear()


class _FakeModels(dict):
    """The `fake_models` state; setting ``"pgs_available"`` adds or removes the set's DiT files."""

    def __init__(self, root):
        super().__init__(pgs_available=False, grm_loads=0, qualities=[])
        self.root = root

    def __setitem__(self, key, value):
        super().__setitem__(key, value)
        if key == "pgs_available":
            write_model_set(self.root, DEFAULT_MODEL, dit=value)
            from patchscaler import checkpoints

            checkpoints.clear()


@pytest.fixture
def fake_models(weights_dir, monkeypatch):
    """The default model set → tiny weight files: a GRM whose confidence follows the
    brightness, and (once ``state["pgs_available"] = True``, or for tests that ask for
    "pgs"/"uniform" by name, which builds them) a tiny DiT with its PGS config.

    Yields a dict: ``"pgs_available"`` (whether the set has its DiT), ``"grm_loads"``
    (GRM loads by pipelines: the pipeline cache should load once per setting) and
    ``"qualities"`` (the preset each sampler was built with).
    """
    import patchscaler.api as api
    import patchscaler.inference.pipeline as pipeline

    state = _FakeModels(weights_dir)
    write_model_set(weights_dir, DEFAULT_MODEL, dit=False)
    real_load_grm, real_build_sampler = pipeline.load_grm, pipeline.build_sampler

    def load_grm(*args, **kwargs):
        state["grm_loads"] += 1
        return real_load_grm(*args, **kwargs)

    def build_sampler(name, model, device, dtype, quality="balanced"):
        state["qualities"].append(quality)
        if name != "none" and model == DEFAULT_MODEL and not dict.get(state, "pgs_available"):
            write_model_set(weights_dir, model, grm=False)  # asked for by name: the default set gets its DiT
        return real_build_sampler(name, model, device, dtype, quality)

    monkeypatch.setattr(pipeline, "load_grm", load_grm)
    monkeypatch.setattr(pipeline, "build_sampler", build_sampler)
    monkeypatch.setattr(api, "_warned_default_sampler", False)
    yield state
