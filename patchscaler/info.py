"""`python -m patchscaler.info`: what this install was built with, which backend
each op runs on, and which trained weights ship with it."""

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


def shipped_weights() -> dict:
    """Each packaged weight file: its size in kB, or "missing"."""
    from patchscaler.models.dit import DEFAULT_DIT_PATH
    from patchscaler.models.grm import weights_path
    from patchscaler.models.rtm import DEFAULT_RTM_PATH
    from patchscaler.sampling.pgs import DEFAULT_PGS_CONFIG_PATH

    files = {"grm_x4": weights_path(4), "dit_x4": DEFAULT_DIT_PATH, "rtm_x4": DEFAULT_RTM_PATH,
             "pgs_config": DEFAULT_PGS_CONFIG_PATH}
    return {name: (f"{path.stat().st_size / 1e3:,.0f} kB" if path.is_file() else "missing") for name, path in files.items()}


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
        "weights": shipped_weights(),
    }


def main() -> None:
    info = build_info()
    for key, value in info.items():
        if key in ("op_kernels", "weights"):
            continue
        print(f"{key:20s} {value}")
    print("op kernels (registered):")
    for op, keys in info["op_kernels"].items():
        have = ", ".join(k for k, ok in keys.items() if ok) or "none"
        print(f"  {op:20s} {have}")
    print("weights (shipped):")
    for name, state in info["weights"].items():
        print(f"  {name:20s} {state}")


if __name__ == "__main__":
    main()
