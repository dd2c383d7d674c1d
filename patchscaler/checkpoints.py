"""Trained weights: where they are, how they are written and read, and the one cache of
loaded models.

Weights come as named **model sets**, one folder each under the weights root::

    <root>/<set>/grm_x4.safetensors    GRM (config in the safetensors metadata)
    <root>/<set>/rtm_x4.safetensors    reference texture memory (+ its texture encoder)
    <root>/<set>/dit_x4.safetensors    Patch-DiT (config, schedule, prediction in the metadata)
    <root>/<set>/pgs_config.json       PGS thresholds, steps and presets (made from that DiT)
    <root>/<set>/set.json              what the set is for, the degradation it was trained
                                       for and its own default sampler (`set_manifest`)

Sets: ``"bicubic"`` (trained on MATLAB-bicubic LR, the benchmark protocol) and
``"real"`` (real-world degradations). A set may be partial (e.g. only its GRM): what
needs a missing file raises `WeightsNotAvailableError` naming it; nothing falls back to
another set's files.

The root is, in order: the ``root`` argument, the ``PATCHSCALER_WEIGHTS`` environment
variable (a folder holding set folders; how tests and users point at their own files),
the package's ``patchscaler/weights``.

Every safetensors file carries its model's config as JSON under the metadata key
``config``, and its kind under ``format`` (`save_safetensors`, `read_safetensors`).
"""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

if TYPE_CHECKING:
    from torch import Tensor

__all__ = [
    "DEFAULT_MODEL",
    "ENV_VAR",
    "FILES",
    "MODEL_SETS",
    "PACKAGE_WEIGHTS",
    "WeightsNotAvailableError",
    "cached",
    "check_model",
    "clear",
    "list_sets",
    "model_dir",
    "read_metadata",
    "read_safetensors",
    "require",
    "save_safetensors",
    "set_manifest",
    "set_trained_for",
    "weights_file",
    "weights_root",
]

MODEL_SETS = ("real", "bicubic")
# The set `upscale()` and the command use when none is named (eval: the set trained for its
# protocol's degradation). "real": photos as people have them carry noise, blur and JPEG,
# where the "real" set beats the "bicubic" set (real-degraded B100 and RealSRSet: PSNR,
# SSIM and standard NIQE) and the "bicubic" set sharpens the noise and the blocks. Clean,
# resized images are the "bicubic" set's (README, Real-world photos). The tests,
# benchmarks and scripts name the set they need, so this one line is the default.
DEFAULT_MODEL = "real"
ENV_VAR = "PATCHSCALER_WEIGHTS"
PACKAGE_WEIGHTS = Path(__file__).resolve().parent / "weights"
# Component → file name inside a set folder, and what makes it (for the error messages).
FILES = {
    "grm": "grm_x4.safetensors",
    "rtm": "rtm_x4.safetensors",
    "dit": "dit_x4.safetensors",
    "pgs": "pgs_config.json",
}
_WHAT = {"grm": "GRM weights", "rtm": "texture memory", "dit": "Patch-DiT weights", "pgs": "PGS config"}
_MADE_BY = {
    "grm": "python -m patchscaler.train.grm --export",
    "rtm": "python -m patchscaler.train.rtm",
    "dit": "python -m patchscaler.train.dit --export",
    "pgs": "python -m patchscaler.train.calibrate_pgs",
}


class WeightsNotAvailableError(FileNotFoundError):
    """A model set, or a file of one, that this install (or weights root) does not have."""


def weights_root(root: str | os.PathLike | None = None) -> Path:
    """The folder holding the model-set folders (module docstring for the order)."""
    if root is not None:
        return Path(root)
    env = os.environ.get(ENV_VAR)
    return Path(env) if env else PACKAGE_WEIGHTS


def check_model(name: Any) -> str:
    """``name`` if it is one of `MODEL_SETS`, else ValueError."""
    if name not in MODEL_SETS:
        raise ValueError(f"model must be one of {', '.join(map(repr, MODEL_SETS))}, got {name!r}")
    return name


def model_dir(model: str | None = None, root: str | os.PathLike | None = None) -> Path:
    """The folder of model set ``model`` (default `DEFAULT_MODEL`)."""
    return weights_root(root) / check_model(model or DEFAULT_MODEL)


def weights_file(component: str, model: str | None = None, root: str | os.PathLike | None = None) -> Path:
    """Where ``component`` ("grm", "rtm", "dit", "pgs") of set ``model`` is; it may not exist."""
    if component not in FILES:
        raise ValueError(f"unknown weights component {component!r}; one of {', '.join(FILES)}")
    return model_dir(model, root) / FILES[component]


def require(component: str, model: str | None = None, root: str | os.PathLike | None = None, *, purpose: str = "") -> Path:
    """`weights_file`, or `WeightsNotAvailableError` naming the missing file and what needs
    it (``purpose``, e.g. "sampler 'pgs'")."""
    path = weights_file(component, model, root)
    if path.is_file():
        return path
    name = model or DEFAULT_MODEL
    where = f"model set {name!r} ({path.parent})"
    if not path.parent.is_dir():
        raise WeightsNotAvailableError(
            f"{where} is not in this install of patchscaler: it has {', '.join(map(repr, list_sets(root))) or 'no sets'}"
        )
    raise WeightsNotAvailableError(
        f"{purpose + ' needs ' if purpose else ''}the {_WHAT[component]} ({FILES[component]}), which {where} "
        f"does not include; make them with `{_MADE_BY[component]}`"
    )


def list_sets(root: str | os.PathLike | None = None) -> dict[str, dict[str, str]]:
    """Each model set present under the root: ``{set: {component: "12 kB" | "missing"}}``."""
    out = {}
    for name in MODEL_SETS:
        folder = weights_root(root) / name
        if folder.is_dir():
            out[name] = {
                c: (f"{(folder / f).stat().st_size / 1e3:,.0f} kB" if (folder / f).is_file() else "missing")
                for c, f in FILES.items()
            }
    return out


def set_manifest(model: str | None = None, root: str | os.PathLike | None = None) -> dict[str, Any]:
    """The set's own description, ``<set>/set.json``: ``{"description", "degradation",
    "default_sampler", "made_by"}`` ({} for a set folder without one, e.g. a test's tiny set).

    Why a file in the set and not a table in the code: a set is made by training runs and
    shipped as a folder; what it is for and which sampler suits it travel with its weights.
    """
    path = model_dir(model, root) / "set.json"
    if not path.is_file():
        return {}
    with open(path) as f:
        manifest = json.load(f)
    if not isinstance(manifest, dict):
        raise ValueError(f"{path}: expected a JSON object, got {type(manifest).__name__}")
    return manifest


def set_trained_for(degradation: str, root: str | os.PathLike | None = None) -> str:
    """The model set whose ``set.json`` says it is trained for ``degradation`` (what a trainer
    run with ``--degradation X`` reads and writes), else ValueError. Asked of the sets, not
    derived from the name: a set's name and its degradation are two facts."""
    found = []
    # The active weights root's manifests first; a root of sets without any (a test's tiny
    # weights) takes the package's, which name the same sets.
    for where in (weights_root(root), PACKAGE_WEIGHTS):
        found = [m for m in MODEL_SETS if set_manifest(m, where).get("degradation") == degradation]
        if found:
            break
    if len(found) != 1:
        raise ValueError(f"{len(found)} model sets are trained for degradation {degradation!r} "
                         f"(each set's set.json names its degradation); expected exactly one")
    return found[0]


# ---------------------------------------------------------------------------- files


def save_safetensors(
    path: str | os.PathLike,
    tensors: dict[str, Tensor],
    *,
    format: str,
    config: dict | None = None,
    metadata: dict | None = None,
) -> Path:
    """Write ``tensors`` with ``{"format": format, "config": JSON(config), **metadata}``
    (non-string metadata values as JSON); world-readable, as package data must be."""
    from safetensors.torch import save_file

    meta = {"format": format}
    if config is not None:
        meta["config"] = json.dumps(config)
    for k, v in (metadata or {}).items():
        meta[k] = v if isinstance(v, str) else json.dumps(v)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous().cpu() for k, v in tensors.items()}, str(path), metadata=meta)
    os.chmod(path, 0o644)  # safetensors writes 0600
    return path


def read_metadata(path: str | os.PathLike) -> dict[str, str]:
    """The raw string metadata of a safetensors file."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        return dict(f.metadata() or {})


def read_safetensors(path: str | os.PathLike, format: str | None = None) -> tuple[dict[str, Tensor], dict, dict[str, str]]:
    """``(tensors, config, metadata)``: the stored tensors, the decoded ``config``
    ({} when absent) and the raw metadata.

    ``format``: the kind the caller can read (what `save_safetensors` wrote, e.g.
    ``"patchscaler.GRM"``); a file that says it is another kind raises ValueError naming
    both, before its tensors are loaded into the wrong model. A file without a tag (made
    by another tool) is accepted: its tensors' names are checked when they are loaded.
    """
    from safetensors.torch import load_file

    meta = read_metadata(path)
    if format is not None and meta.get("format", format) != format:
        raise ValueError(f"{path} holds a {meta['format']!r}, not the {format!r} that was asked for")
    return load_file(str(path)), json.loads(meta["config"]) if "config" in meta else {}, meta


# ---------------------------------------------------------------------------- cache

_CACHE: dict[tuple, Any] = {}
# Guards _CACHE, _BUILDING and _generation; never held while a model is being built.
_LOCK = threading.Lock()
# One lock per key being built: a second thread asking for the same model waits for the
# first one's build instead of loading the file again, while models under other keys
# (another set, device or dtype) load at the same time.
_BUILDING: dict[tuple, threading.Lock] = {}
# Bumped by `clear`: a build that started before a clear is returned to its caller but
# not stored, so a cleared cache never receives a model from a replaced file.
_generation = 0


def cached(key: tuple, build: Callable[[], Any]) -> Any:
    """The object cached under ``key``, built by ``build()`` on first use.

    Thread-safe: concurrent callers with the same key get the same object, built once
    (the others wait for it); different keys build concurrently. ``build`` may itself
    call `cached` with other keys (a pipeline loads its GRM), never with its own.
    Keys should name the file (its resolved path), so another root gives another entry.
    """
    with _LOCK:
        if key in _CACHE:
            return _CACHE[key]
        building = _BUILDING.setdefault(key, threading.Lock())
    with building:
        with _LOCK:
            if key in _CACHE:  # built by the thread we waited for
                return _CACHE[key]
            generation = _generation
        value = build()
        with _LOCK:
            if generation == _generation:
                _CACHE[key] = value
            if _BUILDING.get(key) is building:
                del _BUILDING[key]
        return value


def clear() -> None:
    """Forget every loaded model (e.g. after a file was rewritten, or a test's weights).
    Objects already handed out stay usable by whoever holds them."""
    global _generation
    with _LOCK:
        _CACHE.clear()
        _generation += 1
