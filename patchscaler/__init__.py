"""PatchScaler: fast x4 diffusion super-resolution that spends denoising steps only
where the image needs them.

    import patchscaler
    hr = patchscaler.upscale(lr)   # [3,H,W] or [B,3,H,W] float in [0,1] -> x4

See README.md for the pipeline; `python -m patchscaler.info` reports how this
install was built.
"""

__version__ = "0.1.0"

from patchscaler import ops  # noqa: F401,E402  (registers torch.ops.patchscaler.*)
from patchscaler.api import upscale  # noqa: E402

__all__ = ["upscale", "__version__"]
