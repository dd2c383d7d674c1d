"""`python -m patchscaler.info`: what this install was built with, which backend
each op runs on, and which trained weights ship with it.

The parts that need no torch (version, weights) are printed first, before torch is
imported; ``--no-torch`` stops there (instant, e.g. to check an install's weights).
"""

from __future__ import annotations

import argparse
import platform
import sys

import patchscaler
from patchscaler.checkpoints import DEFAULT_MODEL, list_sets, set_manifest, weights_root


def _triton_version() -> str | None:
    try:
        import triton
    except ImportError:
        return None
    return triton.__version__


def shipped_weights() -> dict:
    """Each model set under the weights root: ``{set: {component: size in kB | "missing"}}``."""
    return list_sets()


def sampler_table() -> dict:
    """Per model set, which samplers it can run (`patchscaler.sampling.registry`; imports torch)."""
    from patchscaler.sampling.registry import SAMPLERS, sampler_available

    return {m: [s for s in SAMPLERS if sampler_available(s, m)] for m in list_sets()}


def basic_info() -> dict:
    """What needs no torch: versions of this package and Python, the weights."""
    return {
        "patchscaler": patchscaler.__version__,
        "python": platform.python_version(),
        "weights_root": str(weights_root()),
        "default_model": DEFAULT_MODEL,
        "weights": shipped_weights(),
        "model_sets": {m: set_manifest(m) for m in list_sets()},
    }


def torch_info() -> dict:
    """What needs torch: its version and CUDA, the kernels built, per-op backends, samplers."""
    import torch

    from patchscaler.ops import OPS
    from patchscaler.ops._native import has_kernel

    return {
        "torch": torch.__version__,
        "torch_cuda": torch.version.cuda,
        "cuda_kernels_built": has_kernel("gather_patches", "CUDA"),
        "cuda_device": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
        "triton": _triton_version(),
        "op_kernels": {op: {key.lower(): has_kernel(op, key) for key in ("CPU", "CUDA")} for op in OPS},
        "samplers": sampler_table(),
    }


def build_info() -> dict:
    """A dict describing the build: `basic_info` and `torch_info` together."""
    return basic_info() | torch_info()


def _print_scalars(info: dict) -> None:
    for key, value in info.items():
        if not isinstance(value, dict):
            print(f"{key:20s} {value}")


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m patchscaler.info", description=__doc__.split("\n\n")[0])
    p.add_argument("--no-torch", action="store_true", help="only what needs no torch (versions, weights)")
    args = p.parse_args(argv)
    basic = basic_info()
    _print_scalars(basic)
    print(f"weights (shipped): model sets in {basic['weights_root']}, default {basic['default_model']}")
    for model, files in basic["weights"].items():
        about = basic["model_sets"].get(model, {})
        print(f"  {model}" + (f": {about['description']}" if about.get("description") else ""))
        if about.get("default_sampler"):
            print(f"    {'default sampler':18s} {about['default_sampler']}")
        for name, state in files.items():
            print(f"    {name:18s} {state}")
    sys.stdout.flush()  # on screen while torch loads
    if args.no_torch:
        return
    full = torch_info()
    _print_scalars(full)
    print("op kernels (registered):")
    for op, keys in full["op_kernels"].items():
        have = ", ".join(k for k, ok in keys.items() if ok) or "none"
        print(f"  {op:20s} {have}")
    print("samplers (runnable with the shipped weights):")
    for model, samplers in full["samplers"].items():
        print(f"  {model:9s} {', '.join(samplers) or 'none available'}")


if __name__ == "__main__":
    main()
