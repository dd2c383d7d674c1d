"""``python -m patchscaler`` = the ``patchscaler`` command (also what ``torchrun -m patchscaler`` runs)."""

import sys

from patchscaler.command.cli import main

sys.exit(main())
