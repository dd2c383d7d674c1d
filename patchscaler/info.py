"""`python -m patchscaler.info`: what this install was built with and which
backend each op runs on."""

from __future__ import annotations

import platform

import torch

import patchscaler
from patchscaler.ops import OPS
from patchscaler.ops._native import has_kernel


def _triton_version() -> str | None:
    try:
        import triton
    except ImportError:
        return None
    return triton.__version__


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
    }


def main() -> None:
    info = build_info()
    for key, value in info.items():
        if key == "op_kernels":
            continue
        print(f"{key:20s} {value}")
    print("op kernels (registered):")
    for op, keys in info["op_kernels"].items():
        have = ", ".join(k for k, ok in keys.items() if ok) or "none"
        print(f"  {op:20s} {have}")


if __name__ == "__main__":
    main()
