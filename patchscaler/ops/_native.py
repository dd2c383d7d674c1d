"""Loads the compiled extension `patchscaler._C` and says what it holds.

Importing `_C` registers the C++ op schemas and their CPU (and, when built with
CUDA, CUDA) kernels with the dispatcher. Python never calls into `_C` directly:
it calls `torch.ops.patchscaler.<op>` and the dispatcher picks the kernel.
"""

from __future__ import annotations

import torch

try:
    from patchscaler import _C  # noqa: F401  (import for its registrations)
except ImportError as exc:  # pragma: no cover - only on a broken install
    raise ImportError(
        "patchscaler's compiled extension (patchscaler._C) is missing or does not load: "
        f"{exc}. Build it with `pip install --no-build-isolation -e .` in an environment "
        "that already has torch installed."
    ) from exc

NAMESPACE = "patchscaler"


def has_kernel(op: str, dispatch_key: str) -> bool:
    """Whether `patchscaler::<op>` has a kernel registered for `dispatch_key` ("CPU", "CUDA", ...)."""
    qualname = f"{NAMESPACE}::{op}"
    if not torch._C._dispatch_has_kernel(qualname):
        return False
    return torch._C._dispatch_has_kernel_for_dispatch_key(qualname, dispatch_key)
