"""``python -m patchscaler.info``, the documented spelling: the report is `patchscaler.command.info`."""

from patchscaler.command.info import main

if __name__ == "__main__":
    main()
