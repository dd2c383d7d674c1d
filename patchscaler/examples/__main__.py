"""``python -m patchscaler.examples [OUTPUT_DIR] [CLI options]``: upscale the bundled example.

Runs the ``patchscaler`` command on the example made for the model set it runs
(``--model SET``, default the default set: `patchscaler.examples.example_path`) and
writes ``OUTPUT_DIR/dandelions_x4.png`` and ``OUTPUT_DIR/dandelions_groups.png``. Other
options (``--sampler``, ``--device``, ``--seed``, ...) go to the command as they are.
Works offline: the examples and the weights ship inside the package.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from patchscaler.checkpoints import MODEL_SETS
from patchscaler.command.cli import main as cli_main
from patchscaler.examples import example_path


def _model_named(argv: list[str]) -> str | None:
    """The set ``--model SET`` / ``--model=SET`` names in ``argv``, if a known one (the
    command itself reports an unknown or missing one)."""
    p = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    p.add_argument("--model", nargs="?")
    model = p.parse_known_args(argv)[0].model
    return model if model in MODEL_SETS else None


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in ("-h", "--help"):
        print(__doc__.strip())
        return 0
    out_dir = Path(argv.pop(0)) if argv and not argv[0].startswith("-") else Path(".")
    out_dir.mkdir(parents=True, exist_ok=True)
    return cli_main(
        [str(example_path(_model_named(argv))), "-o", str(out_dir / "dandelions_x4.png"),
         "--save-groups", str(out_dir / "dandelions_groups.png")] + argv
    )


if __name__ == "__main__":
    sys.exit(main())
