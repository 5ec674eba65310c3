"""`python -m ddpm_zoo.cli`: the `ddpm-zoo` command (ddpm_zoo.commands.main)."""

import sys

from ddpm_zoo.commands.main import main

__all__ = ["main"]

if __name__ == "__main__":
    sys.exit(main())
