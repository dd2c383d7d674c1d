"""Custom ops of PatchScaler, registered in the `torch.ops.patchscaler` namespace.

Every op has a pure-PyTorch reference (`reference_<op>`, the executable spec the
tests compare against), a fake kernel (so `torch.compile(fullgraph=True)` traces
through it), and device kernels picked by the dispatcher:

    op                   CPU                        CUDA
    gather_patches       C++ (at::parallel_for)     CUDA extension
    blend_patches        C++ (at::parallel_for)     CUDA extension
    scatter_add_patches  C++                        CUDA extension   (backward of gather)
    group_denoise_step   fused C++                  Triton
    shortcut_noise       fused C++                  Triton
    topk_retrieve        blocked mm + top-k merge   Triton

Python code calls the wrappers below (or `torch.ops.patchscaler.*`) and never
branches on the device itself.
"""

from patchscaler.ops import _native  # noqa: F401  (registers the C++ ops first)
from patchscaler.ops import group_denoise, patches, topk_retrieve  # noqa: F401

OPS = (
    "gather_patches",
    "blend_patches",
    "scatter_add_patches",
    "group_denoise_step",
    "shortcut_noise",
    "topk_retrieve",
)
