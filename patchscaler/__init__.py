"""PatchScaler: fast x4 diffusion super-resolution that spends denoising steps only
where the image needs them.

    import patchscaler
    hr = patchscaler.upscale(lr)   # [3,H,W] or [B,3,H,W] float in [0,1] -> x4

See README.md for the pipeline; `python -m patchscaler.info` reports how this
install was built.
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

__all__ = ["upscale", "__version__"]


def __getattr__(name: str):
    # Lazy, so that `import patchscaler` (which `python -m patchscaler` does before the
    # command parses anything) does not import torch: --help and --version answer at once.
    # `patchscaler.upscale` imports the API (and with it the ops, which registers
    # torch.ops.patchscaler.*) on first use; `patchscaler.ops` and the other submodules
    # import on first attribute access as well.
    if name == "upscale":
        from patchscaler.api import upscale

        return upscale
    try:
        return importlib.import_module(f"{__name__}.{name}")
    except ModuleNotFoundError as exc:
        if exc.name != f"{__name__}.{name}":
            raise  # a real missing dependency inside the submodule
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}") from None


def __dir__() -> list[str]:
    return sorted(set(globals()) | {"upscale"})
