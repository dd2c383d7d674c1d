"""Triton kernels of PatchScaler, installed as `patchscaler.kernels`.

One file per kernel. Each file holds the `@triton.jit` kernel and a launcher that
takes torch tensors; the ops in `patchscaler.ops` register the launchers as the
CUDA implementations. Triton is optional: without it (or on a machine without a
GPU) these modules import, report `TRITON_AVAILABLE = False`, and the C++/PyTorch
CPU kernels are used. Under `TRITON_INTERPRET=1` the launchers also run on CPU
tensors, which is how the tests exercise them without a GPU.
"""

try:
    import triton  # noqa: F401

    TRITON_AVAILABLE = True
except ImportError:  # pragma: no cover - depends on the environment
    TRITON_AVAILABLE = False
