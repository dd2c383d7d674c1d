"""Bundled example input: ``dandelions_lr.png``, a 128×128 LR crop of a CC0 photo
(Clemens Engelhardt) with easy (out-of-focus meadow) and hard (dandelion seed hairs)
regions side by side. See README.md in this folder.

    python -m patchscaler.examples [OUTPUT_DIR] [--sampler none]

upscales it and writes ``dandelions_x4.png`` and ``dandelions_groups.png`` (the
picture of which patch got how many steps) to OUTPUT_DIR (default: the current folder).
"""

from pathlib import Path

__all__ = ["EXAMPLE_LR", "example_path"]

EXAMPLE_LR = Path(__file__).resolve().parent / "dandelions_lr.png"


def example_path() -> Path:
    """Path of the bundled example LR image (PNG, 128×128 RGB)."""
    return EXAMPLE_LR
