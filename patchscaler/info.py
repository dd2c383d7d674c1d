"""`python -m patchscaler.info`: what this install was built with, which backend
each op runs on, and which trained weights ship with it."""

from __future__ import annotations

import platform

import torch

import patchscaler
from patchscaler.checkpoints import DEFAULT_MODEL, list_sets, weights_root
from patchscaler.ops import OPS
from patchscaler.ops._native import has_kernel
from patchscaler.sampling.registry import SAMPLERS, sampler_available


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
    """Per model set, which samplers it can run (`patchscaler.sampling.registry`)."""
    return {m: [s for s in SAMPLERS if sampler_available(s, m)] for m in list_sets()}


def build_info() -> dict:
    """A dict describing the build: versions, CUDA kernels compiled, Triton, per-op backends."""
    cuda_built = has_kernel("gather_patches", "CUDA")
    backends = {}
    for op in OPS:
        backends[op] = {
            key.lower(): has_kernel(op, key) for key in ("CPU", "CUDA")
        }
    return {
        "patchscaler": patchscaler.__version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_cuda": torch.version.cuda,
        "cuda_kernels_built": cuda_built,
        "cuda_device": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
        "triton": _triton_version(),
        "op_kernels": backends,
        "weights_root": str(weights_root()),
        "default_model": DEFAULT_MODEL,
        "weights": shipped_weights(),
        "samplers": sampler_table(),
    }


def main() -> None:
    info = build_info()
    for key, value in info.items():
        if key in ("op_kernels", "weights", "samplers"):
            continue
        print(f"{key:20s} {value}")
    print("op kernels (registered):")
    for op, keys in info["op_kernels"].items():
        have = ", ".join(k for k, ok in keys.items() if ok) or "none"
        print(f"  {op:20s} {have}")
    print(f"weights (shipped): model sets in {info['weights_root']}, default {info['default_model']}")
    for model, files in info["weights"].items():
        print(f"  {model}  (samplers: {', '.join(info['samplers'][model]) or 'none available'})")
        for name, state in files.items():
            print(f"    {name:18s} {state}")


if __name__ == "__main__":
    main()
