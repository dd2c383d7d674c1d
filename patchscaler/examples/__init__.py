"""Bundled example inputs: one 128×128 LR crop of a CC0 photo (Clemens Engelhardt) with
easy (out-of-focus meadow) and hard (dandelion seed hairs) regions side by side, made
for each model set (see README.md in this folder):

- ``dandelions_real_lr.png``: under the seeded real-world degradation (blur, noise,
  JPEG) — a photo as people have them, the input of the `real` set, the default;
- ``dandelions_lr.png``: the MATLAB-bicubic downscale (the benchmark protocol) — a
  clean, resized image, the input of the `bicubic` set.

    python -m patchscaler.examples [OUTPUT_DIR] [--model SET] [--sampler none]

upscales the example of the set it runs (default: the default set) and writes
``dandelions_x4.png`` and ``dandelions_groups.png`` (the picture of which patch got
how many steps; the confidence map where the set has no sampler) to OUTPUT_DIR.
"""

from pathlib import Path

from patchscaler.checkpoints import DEFAULT_MODEL, check_model

__all__ = ["EXAMPLES", "EXAMPLE_LR", "EXAMPLE_REAL_LR", "example_path"]

_HERE = Path(__file__).resolve().parent
EXAMPLE_LR = _HERE / "dandelions_lr.png"
EXAMPLE_REAL_LR = _HERE / "dandelions_real_lr.png"
# Model set → the example made with the degradation it was trained for.
EXAMPLES = {"bicubic": EXAMPLE_LR, "real": EXAMPLE_REAL_LR}


def example_path(model: str | None = None) -> Path:
    """Path of the bundled example for model set ``model`` (default `DEFAULT_MODEL`): PNG, 128×128 RGB."""
    return EXAMPLES[check_model(model or DEFAULT_MODEL)]
