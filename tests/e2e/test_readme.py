"""The README tells the truth: every command of its tour runs, and shows what the page says.

- Each ``cart-course`` command of its ``sh`` blocks runs (on a demo cohort in a store of its own,
  from a directory of its own) and exits 0 unless its output says ``error:``; the lines written
  under it as ``# `` comments are its output, line for line.
- The curl example is sent to the real application with a clinician token: it answers the status
  and the fields the comment under it shows.
- ``demo --jsonl cohort.jsonl`` writes ``var/cohort.jsonl``, which the ingest example reads.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from http_support import stack
from litestar.testing import TestClient

from cart_course.demo import ensure_demo_sites

README = Path(__file__).resolve().parents[2] / "README.md"
CLI = str(Path(sys.executable).with_name("cart-course"))


def _blocks() -> list[list[str]]:
    return [b.splitlines() for b in re.findall(r"```sh\n(.*?)```", README.read_text(), re.DOTALL)]


def _commands(lines: list[str]) -> list[tuple[str, list[str]]]:
    """(command, the output written under it as ``# `` lines) for each command of a block; a
    command may span lines (a quoted argument, or a line ending in a backslash)."""
    found: list[tuple[str, list[str]]] = []
    pending = ""
    for line in lines:
        if pending:
            pending += "\n" + line
        elif line.startswith("# ") and found:
            found[-1][1].append(line[2:])
            continue
        elif line.strip():
            pending = line
        else:
            continue
        try:
            shlex.split(pending, comments=True)
        except ValueError:  # an open quote: the command goes on
            continue
        if pending.endswith("\\"):
            continue
        found.append((pending, []))
        pending = ""
    return found


def cli_examples() -> list[tuple[str, list[str]]]:
    return [
        (command, output)
        for block in _blocks()
        for command, output in _commands(block)
        if command.startswith((".venv/bin/cart-course", "cart-course"))
    ]


def _run(args: list[str], cwd: Path, db: Path) -> subprocess.CompletedProcess[str]:
    environ = {k: v for k, v in os.environ.items() if not k.startswith("CART_COURSE_")}
    environ["CART_COURSE_DB"] = str(db)
    return subprocess.run(
        [CLI, *args], capture_output=True, text=True, cwd=cwd, env=environ, timeout=300
    )


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A directory of its own with a store holding the demo cohort (as after ``make run``)."""
    where = tmp_path_factory.mktemp("readme")
    db = where / "var" / "cart-course.sqlite"
    db.parent.mkdir()
    demo = _run(["demo", "--patients", "8"], where, db)
    assert demo.returncode == 0, demo.stderr
    return where, db


def test_the_readme_has_its_examples() -> None:
    commands = [c for c, _ in cli_examples()]
    assert any(c.startswith(".venv/bin/cart-course record") for c in commands)
    assert sum(1 for _, out in cli_examples() if out) >= 3


def test_every_cli_example_does_what_the_readme_shows(home: tuple[Path, Path]) -> None:
    where, db = home
    for command, shown in cli_examples():
        args = shlex.split(command, comments=True)[1:]
        done = _run(args, where, db)
        printed = (done.stdout + done.stderr).splitlines()
        if any(line.startswith("error:") for line in shown):
            assert done.returncode != 0, command
        else:
            assert done.returncode == 0, (command, done.stderr)
        if shown:  # the same words (the README wraps a long line)
            assert " ".join(" ".join(shown).split()) == " ".join(" ".join(printed).split()), (
                command,
                printed,
            )


def test_the_bulk_load_example_writes_under_var_and_ingests(tmp_path: Path) -> None:
    text = " ".join(README.read_text().split())
    assert "`cart-course demo --patients 200 --jsonl cohort.jsonl`" in text
    assert "`cart-course --db var/cohort.sqlite ingest var/cohort.jsonl`" in text
    db = tmp_path / "var" / "cart-course.sqlite"
    assert (
        _run(["demo", "--patients", "3", "--jsonl", "cohort.jsonl"], tmp_path, db).returncode == 0
    )
    assert (tmp_path / "var" / "cohort.jsonl").exists() and not (tmp_path / "cohort.jsonl").exists()
    ingest = _run(["--db", "var/cohort.sqlite", "ingest", "var/cohort.jsonl"], tmp_path, db)
    assert ingest.returncode == 0, ingest.stderr
    assert " 0 rejected" in ingest.stderr + ingest.stdout


def curl_examples() -> list[tuple[str, list[str]]]:
    return [
        (command, output)
        for block in _blocks()
        for command, output in _commands(block)
        if command.startswith("curl")
    ]


def test_the_curl_example_answers_what_the_readme_shows() -> None:
    (command, shown), *_ = curl_examples()
    args = shlex.split(command.replace("\\\n", " "))
    body = args[args.index("-d") + 1]
    headers = {
        name.strip(): value.strip()
        for name, _, value in (args[i + 1].partition(":") for i, a in enumerate(args) if a == "-H")
    }
    status, _, fields = " ".join(shown).partition(": ")
    expected: dict[str, Any] = json.loads("{" + fields + "}")
    with stack() as s, TestClient(s.app) as client:
        ensure_demo_sites(s.tokens.sites)  # the demo server's sites, as after ``make run``
        headers["Authorization"] = s.auth("clinician")["Authorization"]
        r = client.post("/v1/commands", content=body, headers=headers)
        assert r.status_code == int(status), r.text
        answer = r.json()
        assert {k: answer[k] for k in expected} == expected
