"""Bad input and bad settings, as a user meets them on the command line: each is one clear line
on stderr that says what was wrong and what is allowed, a non-zero exit, and nothing changed --
never a traceback, never "error: unexpected ..."."""

from __future__ import annotations

import json
import os
import random
import re
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from cart_course.storage import new_cipher_key

CLI = str(Path(sys.executable).with_name("cart-course"))
DOCS = Path(__file__).resolve().parents[2] / "docs"


def story() -> list[str]:
    """The whole story of docs/commands.md: 33 valid command lines."""
    text = (DOCS / "commands.md").read_text(encoding="utf-8")
    (block,) = re.findall(r"```jsonl\n(.*?)```", text, flags=re.DOTALL)
    return [line for line in block.splitlines() if line.strip()]


STORY = story()


def cli(
    *args: str | bytes,
    db: Path | str | None = None,
    stdin: bytes | str | None = None,
    env: dict[str, str] | None = None,
    cwd: Path | None = None,
    timeout: float = 120,
) -> subprocess.CompletedProcess[str]:
    environ = {k: v for k, v in os.environ.items() if not k.startswith("CART_COURSE_")}
    environ.update(env or {})
    argv: list[str | bytes] = [CLI]
    if db is not None:
        argv += ["--db", str(db)]
    data = stdin.encode() if isinstance(stdin, str) else stdin
    done = subprocess.run(
        [*argv, *args], input=data, capture_output=True, env=environ, cwd=cwd, timeout=timeout
    )
    return subprocess.CompletedProcess(
        done.args,
        done.returncode,
        done.stdout.decode("utf-8", "replace"),
        done.stderr.decode("utf-8", "replace"),
    )


def one_line_error(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode != 0, result
    assert "Traceback" not in result.stderr, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: "), lines[0]
    assert "unexpected" not in lines[0], lines[0]
    return lines[0]


def patients(db: Path, env: dict[str, str] | None = None) -> list[str]:
    done = cli("patients", "--json", db=db, env=env)
    assert done.returncode == 0, done.stderr
    return [row["patient_id"] for row in json.loads(done.stdout)]


def raw_bytes(db: Path) -> bytes:
    return b"".join(p.read_bytes() for p in db.parent.glob(db.name + "*"))


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return tmp_path / "trial.sqlite"


# -- 1. a writer with no key, or another key, on an encrypted store -----------------------------


def test_a_writer_without_the_key_cannot_add_a_plaintext_patient(db: Path) -> None:
    key = {"CART_COURSE_CIPHER_KEY": new_cipher_key()}
    first = cli("ingest", "-", db=db, stdin="\n".join(STORY[:3]) + "\n", env=key)
    assert first.returncode == 0, first.stderr
    p102 = STORY[11]
    assert json.loads(p102)["patient_id"] == "P-102"
    for writer in ({}, {"CART_COURSE_CIPHER_KEY": new_cipher_key()}):
        for args in (("record", "-"), ("ingest", "-")):
            done = cli(*args, db=db, stdin=p102, env=writer)
            assert done.returncode == 1 and "Traceback" not in done.stderr
            (line,) = [line for line in done.stderr.splitlines() if line.startswith("error:")]
            assert "refusing to write" in line and "nothing was written" in line, line
            assert "CART_COURSE_CIPHER_KEY" in line
    assert b"P-102" not in raw_bytes(db)
    # Readers with the key see the store as it was: nothing unreadable was added.
    assert patients(db, key) == ["P-101"]
    status = cli("status", "--json", db=db, env=key)
    assert status.returncode == 0, status.stderr
    verify = cli("audit", "verify", db=db, env=key)
    assert verify.returncode == 0 and "verify: OK" in verify.stdout, verify.stdout
    # A reader without the key: the same clear error from `patients` and from `status`.
    for args in (("patients",), ("status",), ("views", "watchlist")):
        line = one_line_error(cli(*args, db=db))
        assert "do not decrypt with this key" in line, (args, line)


# -- 2. the store setting ------------------------------------------------------------------------


def test_an_empty_store_setting_is_an_error_not_the_default_file(tmp_path: Path) -> None:
    for args, env, says in (
        (("--db", "", "patients"), {}, "--db is empty"),
        (("patients",), {"CART_COURSE_DB": ""}, "CART_COURSE_DB is set but empty"),
        (("--db", "  ", "patients"), {}, "--db is empty"),
    ):
        line = one_line_error(cli(*args, env=env, cwd=tmp_path))
        assert says in line and "memory:" in line, line
    assert not (tmp_path / "var").exists()  # the default store was not created


def test_db_memory_without_the_colon_is_refused_with_a_hint(tmp_path: Path) -> None:
    line = one_line_error(cli("--db", "memory", "record", STORY[0], cwd=tmp_path))
    assert "memory:" in line and "./memory" in line, line
    assert list(tmp_path.iterdir()) == []  # no SQLite file named "memory"


# -- 3. ingest --errors into a file that cannot be written ---------------------------------------


def test_an_errors_file_that_cannot_be_opened_fails_before_anything_is_recorded(
    db: Path, tmp_path: Path
) -> None:
    source = tmp_path / "story.jsonl"
    source.write_text("\n".join(STORY) + "\n", encoding="utf-8")
    line = one_line_error(cli("ingest", "--errors", "/nonexistent/e.txt", str(source), db=db))
    assert "--errors" in line and "/nonexistent/e.txt" in line, line
    assert not db.exists() or patients(db) == []


# -- 4. lines that do not decode ----------------------------------------------------------------

BIG_INT = '{"patient_id": "P-9", "n": ' + "7" * 5000 + "}"
DEEP = "[" * 100_000 + "]" * 100_000


def _spoilt_file() -> tuple[bytes, dict[int, str]]:
    lines = [line.encode() for line in STORY[:11]]
    lines[0] = b"\xef\xbb\xbf" + lines[0]  # a BOM: skipped, line 1 is recorded
    bad = {
        4: BIG_INT.encode(),
        6: DEEP.encode(),
        8: b'{"patient_id": "P-101", "note": "caf\xe9"}',  # Latin-1, not UTF-8
        10: STORY[1].encode()[:225],  # a truncated line
    }
    expected = {
        4: "invalid_json: an integer has more than 4300 digits",
        6: "invalid_json: nested too deeply (arrays and objects within each other)",
        8: "invalid_json: the line is not UTF-8 text (byte 0xe9 at column 37)",
        10: "invalid_json: Expecting ',' delimiter (column 226)",
    }
    out: list[bytes] = []
    good = iter(lines)
    for number in range(1, 16):
        out.append(bad[number] if number in bad else next(good))
    return b"\r\n".join(out) + b"\r\n", expected


@pytest.mark.parametrize("workers", ["1", "2"])
@pytest.mark.parametrize("source", ["file", "stdin"])
def test_undecodable_lines_are_rejected_with_their_number_and_the_rest_recorded(
    db: Path, tmp_path: Path, workers: str, source: str
) -> None:
    data, expected = _spoilt_file()
    path = tmp_path / "spoilt.jsonl"
    path.write_bytes(data)
    args = ["ingest", "--json", "--workers", workers]
    done = cli(*args, str(path), db=db) if source == "file" else cli(*args, "-", db=db, stdin=data)
    assert done.returncode == 1, done.stderr  # some lines were rejected
    assert "Traceback" not in done.stderr and "unexpected" not in done.stderr
    stderr = done.stderr.splitlines()
    assert stderr[0] == "ingesting"  # the label is a line of its own
    report = [line for line in stderr if line.startswith("line ")]
    assert report == [f"line {n}: {text}" for n, text in sorted(expected.items())]
    summary = json.loads(done.stdout)
    assert (summary["lines"], summary["recorded"], summary["rejected"]) == (15, 11, 4)
    assert patients(db) == ["P-101"]


def test_the_docs_example_of_a_truncated_line_is_what_ingest_says(db: Path, tmp_path: Path) -> None:
    """docs/operations.md shows the column of a truncated line: it is on the line itself."""
    path = tmp_path / "day.jsonl"
    path.write_text(STORY[0] + "\n" + STORY[1][:225] + "\n", encoding="utf-8")
    done = cli("ingest", str(path), db=db)
    assert "line 2: invalid_json: Expecting ',' delimiter (column 226)" in done.stderr
    assert "(column 226)" in (DOCS / "operations.md").read_text(encoding="utf-8")


@pytest.mark.parametrize(
    ("data", "says"),
    [
        (BIG_INT.encode(), "not valid JSON: an integer has more than 4300 digits"),
        (DEEP.encode(), "not valid JSON: nested too deeply"),
        (b'{"command":\n "caf\xe9"}', "not UTF-8 text (byte 0xe9 at line 2, byte 6 of it)"),
        (b'{"command": "screen",\n "patient_id": "P-1"\n', "not valid JSON (line 2, column 21)"),
    ],
)
def test_record_names_what_does_not_decode(db: Path, data: bytes, says: str) -> None:
    line = one_line_error(cli("record", "-", db=db, stdin=data))
    assert says in line, line
    assert not db.exists() or patients(db) == []


def test_record_skips_a_byte_order_mark(db: Path, tmp_path: Path) -> None:
    path = tmp_path / "screen.json"
    path.write_bytes(b"\xef\xbb\xbf" + STORY[0].encode())
    done = cli("record", str(path), db=db)
    assert done.returncode == 0, done.stderr
    assert patients(db) == ["P-101"]


# -- 5. --workers has an upper bound ---------------------------------------------------------------


@pytest.mark.parametrize("workers", ["100000", "65", "99999999999999999999999999"])
def test_too_many_workers_is_refused_naming_the_limit(
    db: Path, tmp_path: Path, workers: str
) -> None:
    path = tmp_path / "story.jsonl"
    path.write_text("\n".join(STORY) + "\n", encoding="utf-8")
    line = one_line_error(cli("ingest", "--workers", workers, str(path), db=db, timeout=30))
    assert re.search(
        r"is too many workers: at most \d+ here \(4 per CPU, never more than 64\)", line
    )
    assert not db.exists() or patients(db) == []


# -- 6. status --timeout and --now -----------------------------------------------------------------


@pytest.mark.parametrize("timeout", ["nan", "inf", "NaN"])
def test_status_refuses_a_timeout_that_is_not_finite(db: Path, timeout: str) -> None:
    started = time.monotonic()
    line = one_line_error(
        cli("status", "--timeout", timeout, "--wait-for", "999", db=db, timeout=30)
    )
    assert "--timeout" in line and "finite" in line, line
    assert time.monotonic() - started < 20


def test_wait_for_refuses_a_timeout_that_is_not_finite() -> None:
    from cart_course.bootstrap import Settings, build_service
    from cart_course.views import Views

    service = build_service(Settings.from_env("memory:", {}))
    views = Views(service.log, Settings.from_env("memory:", {}).store)
    try:
        for bad in (float("nan"), float("inf"), -1.0):
            with pytest.raises(ValueError, match="finite"):
                views.wait_for(999, bad)
    finally:
        views.close()
        service.close()


@pytest.mark.parametrize("now", ["9999-12-31T23:59:59-05:00", "0001-01-01T00:00:00+05:00"])
@pytest.mark.parametrize("command", [("status",), ("views", "watchlist"), ("watch", "--once")])
def test_a_now_outside_the_calendar_is_a_clear_error(
    db: Path, command: tuple[str, ...], now: str
) -> None:
    line = one_line_error(cli(*command, "--now", now, db=db))
    assert "--now" in line and "out of range" in line, line


# -- 7. a damaged SQLite file ----------------------------------------------------------------------


def test_a_damaged_sqlite_file_is_the_same_store_error_everywhere(db: Path) -> None:
    done = cli("demo", "--patients", "40", db=db)
    assert done.returncode == 0, done.stderr
    with sqlite3.connect(db) as conn:
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    size = db.stat().st_size
    with open(db, "r+b") as fh:  # a valid header, random bytes mid-file
        fh.seek(size // 2)
        fh.write(random.Random(7).randbytes(20_000))
    for args in (("patients",), ("status",), ("audit", "verify"), ("audit", "export", "jsonl")):
        line = one_line_error(cli(*args, db=db))
        assert re.fullmatch(
            r"error: cannot read (the store|the list of patients): DatabaseError: database disk "
            r"image is malformed",
            line,
        ), (args, line)


# -- 8. PostgreSQL URLs --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "says"),
    [
        ("postgresql://u:s3cret@h:99999/db", "Port out of range"),
        ("postgresql://u:s3cret@host:abc/db", "Port could not be cast to integer"),
        ("postgresql://u:s3cret@[::1/db", "Invalid IPv6 URL"),
        ("postgresql://u:s3cret@h:0/db", "port 0"),
        ("postgresql://u:s3cret@h:5432", "names no database"),
        ("mysql://u:s3cret@h/db", "unknown store URL"),
    ],
)
def test_a_bad_postgresql_url_is_a_clear_error_without_the_password(url: str, says: str) -> None:
    line = one_line_error(cli("--db", url, "patients"))
    assert says in line, line
    assert "s3cret" not in line and "u:***@" in line, line


def test_an_unreachable_postgresql_server_says_why_soon() -> None:
    started = time.monotonic()
    line = one_line_error(cli("--db", "postgresql://u:s3cret@127.0.0.1:1/db", "patients"))
    assert time.monotonic() - started < 8
    assert "Connection refused" in line, line
    assert "s3cret" not in line and "postgresql://u@127.0.0.1:1/db" in line, line


# -- 9. patient id arguments -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "command",
    [
        ("show",),
        ("audit", "history"),
        ("audit", "as-of", "--version", "1"),
        ("audit", "conformance"),
    ],
)
@pytest.mark.parametrize("patient_id", [b"\xff", b"a" * 100_000, b"P 1"])
def test_a_bad_patient_id_argument_is_a_short_clear_error(
    db: Path, command: tuple[str, ...], patient_id: bytes
) -> None:
    line = one_line_error(cli(*command[:2], patient_id, *command[2:], db=db))
    assert "is not a patient identifier: 1-64 characters of A-Z a-z 0-9 . _ - :" in line, line
    assert len(line) < 300


# -- 10. what record accepts -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("source", "says"),
    [
        ('"a string"', "'\"a string\"' is JSON but not an object"),
        ("42", "'42' is JSON but not an object"),
        ("", "'' is empty"),
        ("no-such-file.json", "cannot read 'no-such-file.json': No such file or directory"),
    ],
)
def test_record_says_what_it_accepts(db: Path, source: str, says: str) -> None:
    line = one_line_error(cli("record", source, db=db))
    assert says in line, line
    assert "a JSON object (starting with {), a path to a file holding one, or - for stdin" in line
