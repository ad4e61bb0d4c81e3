"""Protocol commands (placeholder registration; completed by the protocol CLI work)."""

from __future__ import annotations

import click


def register(cli: click.Group) -> None:
    del cli
