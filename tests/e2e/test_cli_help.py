"""``cart-course --help`` says where to start and lists every command by section, each with its
whole first sentence (issue 18: the first hour)."""

from __future__ import annotations

import re

from click.testing import CliRunner

from cart_course.cli import SECTIONS, cli


def _help(width: int = 100) -> str:
    result = CliRunner().invoke(cli, ["--help"], terminal_width=width)
    assert result.exit_code == 0, result.output
    return result.output


def test_help_groups_the_commands_and_says_where_to_start() -> None:
    text = _help()
    titles = [line[:-1] for line in text.splitlines() if re.fullmatch(r"[A-Z][a-z ]+:", line)]
    assert titles[:7] == ["Options", "Start here", "Record", "Monitor", "Audit", "Export", "Admin"]
    start = text.index("Start here:")
    assert text.index("  run ", start) < text.index("Record:")
    assert "Where to start: `cart-course run`" in " ".join(text.split())
    listed = set(re.findall(r"^  ([a-z][a-z-]*)  ", text, flags=re.MULTILINE))
    assert listed == set(cli.list_commands(None))  # type: ignore[arg-type]
    assert {name for names in SECTIONS.values() for name in names} <= listed


def test_descriptions_are_whole_at_any_width() -> None:
    for width in (80, 100, 200):
        full = _help(width)
        text = " ".join(full[full.index("Start here:") :].split())
        assert "..." not in text
        assert (
            "demo A synthetic cohort: screen failures, holds, CRS of several grades, PR with extra "
            "courses, NR, withdrawals, a death, corrections and deviations, all written through "
            "the service." in text
        )


def test_every_command_keeps_its_name() -> None:
    for name in ("run", "serve", "record", "ingest", "status", "audit", "export", "tokens"):
        result = CliRunner().invoke(cli, [name, "--help"])
        assert result.exit_code == 0, (name, result.output)
        assert result.output.startswith(f"Usage: cli {name}") or f" {name} " in result.output
