"""The audit commands on a store they cannot fully read: a wrong or missing encryption key, a row
altered in the database, an incomplete seal file. Each gives one clear line naming what is
wrong (and where) with a non-zero exit status, never a traceback, never a made-up result."""

from __future__ import annotations

import json
import re
import shutil
import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cart_course.audit.log import _REQUIRED, UNDECODABLE, LoggedEvent, is_version, unreadable
from cart_course.bootstrap import Settings, build_service
from cart_course.cli import main
from cart_course.course import stream_id
from cart_course.storage import new_cipher_key

PATIENT = "P-0001"  # demo: 9 events; v4 is its D1 infusion, v8 a signature


class Run:
    def __init__(self, code: int, out: str, err: str) -> None:
        self.code, self.out, self.err = code, out, err

    def __repr__(self) -> str:
        return f"Run(code={self.code}, out={self.out[-600:]!r}, err={self.err!r})"


@pytest.fixture
def cli(capsys: pytest.CaptureFixture[str]) -> Callable[..., Run]:
    def run(db: Path, *args: str) -> Run:
        with pytest.raises(SystemExit) as exited:
            main(["--db", str(db), *args])
        captured = capsys.readouterr()
        code = exited.value.code
        return Run(code if isinstance(code, int) else 1, captured.out, captured.err)

    return run


@pytest.fixture(scope="module")
def plain_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    db = tmp_path_factory.mktemp("plain") / "demo.sqlite"
    with pytest.raises(SystemExit) as exited:
        main(["--db", str(db), "demo", "--patients", "6"])
    assert exited.value.code == 0
    return db


@pytest.fixture(scope="module")
def encrypted_template(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    db = tmp_path_factory.mktemp("encrypted") / "demo.sqlite"
    key = new_cipher_key()
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("CART_COURSE_CIPHER_KEY", key)
        with pytest.raises(SystemExit) as exited:
            main(["--db", str(db), "demo", "--patients", "4"])
    assert exited.value.code == 0
    return db, key


@pytest.fixture
def plain(plain_template: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.delenv("CART_COURSE_CIPHER_KEY", raising=False)
    monkeypatch.delenv("CART_COURSE_COMPRESS", raising=False)
    db = tmp_path / "store.sqlite"
    shutil.copy(plain_template, db)
    return db


@pytest.fixture
def encrypted(
    encrypted_template: tuple[Path, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> tuple[Path, str]:
    monkeypatch.delenv("CART_COURSE_COMPRESS", raising=False)
    db = tmp_path / "store.sqlite"
    shutil.copy(encrypted_template[0], db)
    return db, encrypted_template[1]


def sql(db: Path, statement: str, *args: Any) -> list[tuple[Any, ...]]:
    with sqlite3.connect(db) as conn:
        rows = conn.execute(statement, args).fetchall()
    conn.close()
    return rows


def store_stream_id(db: Path, patient: str) -> str:
    """The patient's stream id in this store, as the service computes it with the key in the
    environment (keyed on an encrypted store, uuid5 on a plain one)."""
    settings = Settings.from_env(str(db))
    service = build_service(settings)
    try:
        return service.stream_id(patient).hex
    finally:
        service.close()


def set_row(db: Path, version: int, column: str, value: Any, patient: str = PATIENT) -> None:
    sid = store_stream_id(db, patient)
    found = sql(
        db,
        "SELECT COUNT(*) FROM stored_events WHERE originator_id = ? AND originator_version = ?",
        sid,
        version,
    )
    assert found == [(1,)], "the row to damage is not in the store"
    sql(
        db,
        f"UPDATE stored_events SET {column} = ? WHERE originator_id = ? AND originator_version = ?",
        value,
        sid,
        version,
    )


def one_clear_line(run: Run) -> str:
    assert "Traceback" not in run.err and "unexpected" not in run.err, run
    lines = run.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), run
    return lines[0]


# -- 1. a wrong or missing key ------------------------------------------------------------------

AUDIT_COMMANDS: list[tuple[str, ...]] = [
    ("verify",),
    ("verify", "--seal", "{seal}"),
    ("seal", "{seal}"),
    ("history", PATIENT),
    ("as-of", PATIENT, "--version", "3"),
    ("as-of", PATIENT, "--occurred-at", "2026-02-01T00:00:00Z"),
    ("conformance",),
    ("conformance", PATIENT),
    ("export", "jsonl"),
    ("export", "csv"),
    ("export", "fhir", "--patient", PATIENT),
    ("export", "html", "--patient", PATIENT, "--out", "{html}"),
]


@pytest.mark.parametrize("key", ["missing", "wrong"])
@pytest.mark.parametrize("command", AUDIT_COMMANDS, ids=lambda c: "-".join(c[:2]))
def test_a_wrong_or_missing_key_is_the_one_clear_line_every_command_gives(
    encrypted: tuple[Path, str],
    cli: Callable[..., Run],
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    key: str,
    command: tuple[str, ...],
) -> None:
    db, right = encrypted
    seal = tmp_path / "seal.jsonl"
    monkeypatch.setenv("CART_COURSE_CIPHER_KEY", right)
    assert cli(db, "audit", "seal", str(seal)).code == 0
    sealed = seal.read_text()
    if key == "missing":
        monkeypatch.delenv("CART_COURSE_CIPHER_KEY")
    else:
        monkeypatch.setenv("CART_COURSE_CIPHER_KEY", new_cipher_key())
    patients = cli(db, "patients")
    args = [a.format(seal=seal, html=tmp_path / "r.html") for a in command]
    run = cli(db, "audit", *args)
    line = one_clear_line(run)
    # The same exit status and the same words as the other commands, naming the setting.
    assert run.code == patients.code == 1, run
    assert "the stored events do not decrypt with this key" in line
    assert "do not decrypt with this key" in patients.err
    assert ("is not set" if key == "missing" else "is not the store's key") in line
    assert "TAMPERED" not in run.out and "None" not in run.out and "_undecodable" not in run.out
    assert seal.read_text() == sealed  # `seal` did not overwrite the earlier seal with garbage
    assert not (tmp_path / "r.html").exists()


def test_with_the_right_key_one_damaged_row_is_still_reported_as_tampering(
    encrypted: tuple[Path, str], cli: Callable[..., Run], monkeypatch: pytest.MonkeyPatch
) -> None:
    db, key = encrypted
    monkeypatch.setenv("CART_COURSE_CIPHER_KEY", key)
    set_row(db, 4, "state", b"\x00not an encrypted row at all")
    run = cli(db, "audit", "verify")
    assert run.code == 1 and "TAMPERED" in run.out, run
    assert f"{PATIENT} v4: [decode] the stored row cannot be decoded" in run.out


def test_with_the_right_key_a_damaged_first_row_is_still_reported_as_tampering(
    encrypted: tuple[Path, str], cli: Callable[..., Run], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The log's very first row (P-0001's registration) is the one a key check reads first:
    damaged, it is tampering, not a key error, because the other rows decrypt."""
    db, key = encrypted
    monkeypatch.setenv("CART_COURSE_CIPHER_KEY", key)
    sql(db, "UPDATE stored_events SET state = ? WHERE rowid = 1", b"garbage")
    run = cli(db, "audit", "verify")
    assert run.code == 1 and "TAMPERED" in run.out, run
    assert "do not decrypt with this key" not in run.err
    assert "v1: [decode]" in run.out or "[registration]" in run.out, run


# -- 2. the clinical as-of view of an episode reported after a later move ------------------------


def test_as_of_a_clinical_time_takes_no_state_from_a_late_toxicity_report(
    plain: Path, cli: Callable[..., Run]
) -> None:
    """D1, D2, then a CRS whose onset (between D1 and D2) was reported after D2: at a clinical
    time between the onset and D2 the patient was infused_d1 (the report's own to_state is the
    state when it was recorded: infused_d2)."""
    import json

    pid = "W-7"

    def record(command: str, at: str, payload: dict[str, Any]) -> None:
        envelope = {
            "command": command,
            "patient_id": pid,
            "occurred_at": at,
            "actor": {"id": "dr.rev", "role": "clinician"},
            "payload": payload,
        }
        run = cli(plain, "record", json.dumps(envelope))
        assert run.code == 0, run

    screening = json.loads(cli(plain, "audit", "history", PATIENT, "--json").out)[1]["payload"]
    record("screen", "2026-11-01T09:00:00Z", screening)
    record("record_apheresis", "2026-11-05T09:00:00Z", {"apheresis_contraindication": False})
    record(
        "give_infusion",
        "2026-11-20T09:00:00Z",
        {"day": 1, "cells": {"value": 7e6, "unit": "cells"}, "weight": {"value": 70, "unit": "kg"}},
    )
    record(
        "give_infusion",
        "2026-11-21T09:00:00Z",
        {"day": 2, "cells": {"value": 2.1e7, "unit": "cells"}},
    )
    crs = {
        "kind": "CRS",
        "observations": {
            "temperature": {"value": 38.6, "unit": "C"},
            "hypotension": False,
            "oxygen": {"device": "none"},
        },
    }
    record("report_toxicity", "2026-11-20T20:00:00Z", {"toxicity": crs})

    between = cli(plain, "audit", "as-of", pid, "--occurred-at", "2026-11-20T21:00:00Z")
    assert between.code == 0, between
    # D2 (v6) and the query the rules opened on it (v7: no lot); D1's query (v5) is included
    assert "6 of 8 events" in between.out and "not included: v6, v7" in between.out
    assert "state: infused_d1" in between.out, between.out
    assert "toxicity CRS-1: grade 1" in between.out
    view = json.loads(
        cli(plain, "audit", "as-of", pid, "--occurred-at", "2026-11-20T21:00:00Z", "--json").out
    )
    assert view["record"]["state"] == "infused_d1" and view["record"]["ended"] is None
    after = cli(plain, "audit", "as-of", pid, "--occurred-at", "2026-11-21T21:00:00Z")
    assert "state: infused_d2" in after.out, after.out
    # The live record and the full replay agree (and the log still verifies).
    assert json.loads(cli(plain, "show", pid, "--json").out)["state"] == "infused_d2"
    assert cli(plain, "audit", "verify").code == 0
    assert cli(plain, "audit", "conformance", pid).code == 0


# -- 3. a version renumbered to text, verified against a seal -----------------------------------


def test_a_version_renumbered_to_text_is_named_with_and_without_a_seal(
    plain: Path, cli: Callable[..., Run], tmp_path: Path
) -> None:
    seal = tmp_path / "seal.jsonl"
    assert cli(plain, "audit", "seal", str(seal)).code == 0
    set_row(plain, 4, "originator_version", "4a")
    for args in (("verify",), ("verify", "--seal", str(seal))):
        run = cli(plain, "audit", *args)
        assert run.code == 1 and "TAMPERED" in run.out and run.err == "", run
        assert (
            f"{PATIENT} v4: [sequence] a stored row has the version '4a', not a whole number "
            "(v4 is missing): it was renumbered in the database"
        ) in run.out


# -- 4. the other audit commands on a store with one altered row --------------------------------

ALTERATIONS: dict[str, tuple[str, Any]] = {
    "invalid-json": ("state", b'{"not json'),
    "null": ("state", None),
    "json-array": ("state", b"[1,2]"),
    "text-version": ("originator_version", "4a"),
}
READERS: list[tuple[str, ...]] = [
    ("history", PATIENT),
    ("history", PATIENT, "--json"),
    ("as-of", PATIENT, "--version", "5"),
    ("as-of", PATIENT, "--occurred-at", "2026-03-01T00:00:00Z"),
    ("conformance", PATIENT),
    ("conformance",),
    ("export", "html", "--patient", PATIENT, "--out", "{html}"),
    ("export", "fhir", "--patient", PATIENT),
    ("export", "jsonl", "--patient", PATIENT),
]


@pytest.mark.parametrize("alteration", list(ALTERATIONS))
@pytest.mark.parametrize("command", READERS, ids=lambda c: "-".join(c[:2]))
def test_an_altered_row_is_named_by_every_audit_command(
    plain: Path, cli: Callable[..., Run], tmp_path: Path, alteration: str, command: tuple[str, ...]
) -> None:
    column, value = ALTERATIONS[alteration]
    set_row(plain, 4, column, value)
    run = cli(plain, "audit", *[a.format(html=tmp_path / "r.html") for a in command])
    line = one_clear_line(run)
    assert run.code == 1, run
    if alteration == "text-version":
        assert f"error: {PATIENT}: a stored row has the version '4a', not a whole number" in line
    else:
        assert f"error: {PATIENT} v4: the stored row cannot be decoded" in line
    assert "altered in the database" in line or "renumbered in the database" in line
    if "--json" in command:  # stdout holds the error's body, never the damaged event
        body = json.loads(run.out)
        assert (body["error"], body["patient_id"]) == ("event_unreadable", PATIENT), body
        assert body["message"] in line
    else:
        assert "None (None)" not in run.out and '"version": 4' not in run.out
    assert not (tmp_path / "r.html").exists()
    # verify names the same row.
    verify = cli(plain, "audit", "verify")
    assert verify.code == 1 and f"{PATIENT} v4:" in verify.out, verify


def test_a_row_missing_the_fields_its_kind_needs_is_named(
    plain: Path, cli: Callable[..., Run]
) -> None:
    """A row that decodes but lacks what the audit reads (here the move of an infusion)."""
    import json

    (state,) = sql(
        plain,
        "SELECT state FROM stored_events WHERE originator_id = ? AND originator_version = 4",
        stream_id(PATIENT).hex,
    )[0]
    data = json.loads(state)
    del data["trigger"]
    set_row(plain, 4, "state", json.dumps(data, sort_keys=True, separators=(",", ":")).encode())
    for args in (("as-of", PATIENT, "--version", "5"), ("conformance", PATIENT)):
        run = cli(plain, "audit", *args)
        line = one_clear_line(run)
        assert (
            run.code == 1 and f"{PATIENT} v4: the stored InfusionGiven has no valid trigger" in line
        )


# -- 5. an incomplete seal file -----------------------------------------------------------------


def _seal_lines(cli: Callable[..., Run], db: Path, path: Path) -> list[str]:
    assert cli(db, "audit", "seal", str(path)).code == 0
    return path.read_text().splitlines(keepends=True)


@pytest.mark.parametrize(
    ("cut", "says"),
    [
        ("empty", "the seal file is incomplete: it is empty"),
        ("first-3-lines", "the seal file is incomplete: it ends after 3 stream head(s) without"),
        ("no-summary", "the seal file is incomplete: it ends after 6 stream head(s) without"),
        ("one-head-missing", "the seal file is incomplete: its summary counts 6 stream(s) but it"),
        ("only-summary", "the seal file is incomplete: its summary counts 6 stream(s) but it"),
        ("head-altered", "the seal file was altered"),
    ],
)
def test_an_incomplete_seal_is_bad_input_not_evidence(
    plain: Path, cli: Callable[..., Run], tmp_path: Path, cut: str, says: str
) -> None:
    full = _seal_lines(cli, plain, tmp_path / "full.jsonl")
    assert len(full) == 7  # 6 streams and the summary
    lines = {
        "empty": [],
        "first-3-lines": full[:3],
        "no-summary": full[:-1],
        "one-head-missing": full[:2] + full[3:],
        "only-summary": full[-1:],
        "head-altered": [
            re.sub(r'"version":(\d+)', lambda m: f'"version":{int(m[1]) - 1}', full[0], count=1),
            *full[1:],
        ],
    }[cut]
    seal = tmp_path / "cut.jsonl"
    seal.write_text("".join(lines))
    run = cli(plain, "audit", "verify", "--seal", str(seal))
    line = one_clear_line(run)
    assert run.code == 2 and "--seal" in line and says in line, run
    assert "inserted after sealing" not in run.out and "verify: OK" not in run.out
    assert cli(plain, "audit", "verify", "--seal", str(tmp_path / "full.jsonl")).code == 0


# -- 6. a row inserted before the registration --------------------------------------------------


def test_a_row_inserted_before_the_registration_is_named_as_inserted(
    plain: Path, cli: Callable[..., Run]
) -> None:
    sid = stream_id(PATIENT).hex
    sql(
        plain,
        "INSERT INTO stored_events (originator_id, originator_version, topic, state) "
        "SELECT originator_id, 0, topic, state FROM stored_events "
        "WHERE originator_id = ? AND originator_version = 2",
        sid,
    )
    run = cli(plain, "audit", "verify")
    assert run.code == 1 and "TAMPERED" in run.out, run
    assert (
        f"  {PATIENT} v0: [sequence] a Screened row is stored at v0, before the registration "
        "(v1): it was inserted in the database"
    ) in run.out
    assert "registration row was modified" not in run.out
    history = cli(plain, "audit", "history", PATIENT)
    assert history.code == 1 and f"{PATIENT} v0: a Screened row is stored at v0" in history.err


def _unreadable_by_the_rules(e: Any) -> str | None:
    """The audit's rules for a usable row, field by field (what ``unreadable`` must answer)."""
    if not is_version(e.version):
        return "version"
    if UNDECODABLE in e.data:
        return "undecodable"
    if e.kind == "unknown":
        return "unknown"
    for name, kind in _REQUIRED[e.kind]:
        value = e.data.get(name)
        if not isinstance(value, kind) or isinstance(value, bool):
            return name
    return None


_FIELD_NAMES = sorted(
    {"_undecodable", "note"} | {name for fields in _REQUIRED.values() for name, _ in fields}
)
_VALUES = (
    st.none()
    | st.booleans()
    | st.integers(-3, 3)
    | st.floats(allow_nan=False)
    | st.text(max_size=3)
    | st.lists(st.integers(), max_size=2)
    | st.dictionaries(st.text(max_size=2), st.integers(), max_size=2)
)


@settings(max_examples=1500, deadline=None)
@given(
    kind=st.sampled_from(["registered", "moved", "corrected", "signed", "queried", "unknown"]),
    data=st.dictionaries(st.sampled_from(_FIELD_NAMES), _VALUES, max_size=8),
    version=st.sampled_from([1, 2, True, "2", 2.0, None]),
)
def test_the_audits_check_of_a_rows_fields_follows_its_rules(
    kind: str, data: dict[str, Any], version: Any
) -> None:
    """``unreadable`` (with its one-pass check of exact types) finds a row usable exactly when
    every rule does, and names the first rule that fails otherwise."""
    e = object.__new__(LoggedEvent)
    e.version, e.kind, e.type, e.data = version, kind, "Event", data
    why = unreadable(e)
    expected = _unreadable_by_the_rules(e)
    assert (why is None) == (expected is None)
    if expected is not None:
        assert why is not None
        assert (expected in why) or expected in ("version", "undecodable", "unknown")
