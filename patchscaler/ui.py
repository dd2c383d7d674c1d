"""``python -m patchscaler.ui``, the documented spelling: the web app is `patchscaler.command.ui`."""

import sys

from patchscaler.command.ui import main

if __name__ == "__main__":
    sys.exit(main())
