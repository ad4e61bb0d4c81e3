"""A store with a damaged row: the patient it belongs to is named with what is wrong and what to
run, never a traceback, never the key blamed for one bad row; other patients still read."""

from __future__ import annotations

import datetime as dt
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from integration_helpers import Course, crs

from cart_course.errors import CipherKeyError, StoreError
from cart_course.service import CourseService, stream_id
from cart_course.storage import new_cipher_key, open_application, parse_store_url


def _two_patients(path: Path, key: str | None = None) -> None:
    service = CourseService(open_application(parse_store_url(str(path)), cipher_key=key))
    try:
        for pid in ("DMG-1", "DMG-2"):
            p = Course(service, pid)
            p.screen()
            p.apheresis()
            p.infuse(1, days=14)
    finally:
        service.close()


def _sql(path: Path, statement: str, *args: object) -> None:
    with sqlite3.connect(path) as db:
        assert db.execute(statement, args).rowcount == 1
    db.close()


def _set_state(path: Path, patient_id: str, version: int, raw: bytes) -> None:
    """Overwrite one stored event's state in the database (as a damaged row would read)."""
    _sql(
        path,
        "UPDATE stored_events SET state = ? WHERE originator_id = ? AND originator_version = ?",
        raw,
        stream_id(patient_id).hex,
        version,
    )


def _fresh(path: Path, key: str | None = None) -> CourseService:
    return CourseService(open_application(parse_store_url(str(path)), cipher_key=key))


def test_a_missing_registration_names_the_patient_and_the_first_event(tmp_path: Path) -> None:
    path = tmp_path / "d.sqlite"
    _two_patients(path)
    _sql(
        path,
        "DELETE FROM stored_events WHERE originator_id = ? AND originator_version = 1",
        stream_id("DMG-1").hex,
    )
    service = _fresh(path)
    with pytest.raises(StoreError) as info:
        service.summary("DMG-1")
    assert info.value.message == (
        "patient DMG-1: the stored history cannot be replayed: its first stored event is "
        "version 2 (Screened), not the registration (version 1); the store may be damaged or "
        "tampered with: run 'cart-course audit verify'"
    )
    assert service.summary("DMG-2")["state"] == "infused_d1"  # the others still read
    service.close()


def test_an_unreadable_row_is_named_and_the_key_is_not_blamed(tmp_path: Path) -> None:
    path = tmp_path / "d.sqlite"
    _two_patients(path)
    _set_state(path, "DMG-2", 3, b"{not json")
    service = _fresh(path)
    with pytest.raises(StoreError) as info:
        service.summary("DMG-2")
    assert not isinstance(info.value, CipherKeyError)
    assert "cannot read patient DMG-2" in info.value.message
    assert "originator_version 3" in info.value.message
    assert info.value.message.endswith("run 'cart-course audit verify'")
    assert service.summary("DMG-1")["state"] == "infused_d1"
    service.close()


def test_a_wrong_key_is_still_the_keys_fault(tmp_path: Path) -> None:
    path = tmp_path / "d.sqlite"
    _two_patients(path, key=new_cipher_key())
    service = _fresh(path, key=new_cipher_key())
    with pytest.raises(CipherKeyError):
        service.summary("DMG-1")
    service.close()


def test_the_patient_list_shows_an_unreadable_patient_and_the_others(tmp_path: Path) -> None:
    path = tmp_path / "d.sqlite"
    _two_patients(path)
    _set_state(path, "DMG-1", 3, b"[1, 2]")
    service = _fresh(path)
    rows = {r["patient_id"]: r for r in service.patients()}
    service.close()
    assert rows["DMG-2"]["state"] == "infused_d1"
    assert rows["DMG-1"]["state"] == "unreadable"
    assert rows["DMG-1"]["error"].startswith("patient DMG-1: the stored history cannot be")
    assert rows["DMG-1"]["version"] is None

    cli = Path(sys.executable).parent / "cart-course"
    shown = subprocess.run(
        [str(cli), "--db", str(path), "patients"], capture_output=True, text=True, check=False
    )
    assert shown.returncode == 1
    assert "Traceback" not in shown.stderr
    lines = shown.stdout.splitlines()
    assert any(line.startswith("DMG-1") and "unreadable" in line for line in lines), lines
    assert any(line.startswith("DMG-2") and "infused_d1" in line for line in lines), lines
    assert shown.stderr.startswith("error: patient DMG-1: the stored history cannot be")


def test_a_write_held_off_by_another_writer_fails_in_bounded_time(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Another process holds the SQLite write lock: the command is retried, then fails with a
    clear store error once the deadline passes (503 over HTTP); nothing is written."""
    import attrs

    import cart_course.service as service_module

    path = tmp_path / "busy.sqlite"
    _two_patients(path)
    settings = parse_store_url(str(path))
    settings = attrs.evolve(settings, env={**settings.env, "SQLITE_LOCK_TIMEOUT": "1"})
    monkeypatch.setattr(service_module, "BUSY_DEADLINE_SECONDS", 1.5)
    service = CourseService(open_application(settings))
    before = service.summary("DMG-1")["version"]
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")
    try:
        p = Course(service, "DMG-1", start=dt.datetime(2026, 1, 25, 8, tzinfo=dt.UTC))
        with pytest.raises(StoreError) as info:
            p.do("report_toxicity", {"toxicity": crs(1)})
        assert info.value.message.startswith("the store is busy: another writer has held it")
        assert info.value.message.endswith("nothing was written; try again")
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    assert service.summary("DMG-1")["version"] == before
    service.close()


def test_a_write_that_fails_says_it_could_not_write(tmp_path: Path) -> None:
    path = tmp_path / "ro.sqlite"
    _two_patients(path)
    service = _fresh(path)
    service.summary("DMG-1")
    recorder = service.app.recorder
    original = recorder.insert_events

    def refuse(*args: object, **kwargs: object) -> object:
        from eventsourcing.persistence import OperationalError

        raise OperationalError("attempt to write a readonly database")

    recorder.insert_events = refuse  # type: ignore[method-assign]
    p = Course(service, "DMG-1", start=dt.datetime(2026, 1, 25, 8, tzinfo=dt.UTC))
    with pytest.raises(StoreError) as info:
        p.do("report_toxicity", {"toxicity": crs(1)})
    assert info.value.message == (
        "cannot write to the store: OperationalError: attempt to write a readonly database; "
        "nothing was written"
    )
    recorder.insert_events = original  # type: ignore[method-assign]
    service.close()
