"""The ``cart-course`` command's entry point: loading the program takes a moment, and a Ctrl-C
during it ends the command quietly (exit 130), as one later does, not with a traceback."""

from __future__ import annotations

import sys


def main() -> None:
    try:
        from .cli import main as cli_main
    except KeyboardInterrupt:
        sys.exit(130)
    cli_main()
