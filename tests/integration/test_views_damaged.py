"""A damaged or orphan row in the event log never takes the monitors' board down: the views skip
what they cannot read or apply (that event and the rest of its stream), keep the position moving,
and say so -- which stream, which patient when known, which versions, why -- in every ``views``
command, in ``status`` and in the metrics. A wrong key for the whole store is still a key error.
"""

from __future__ import annotations

import datetime as dt
import json
import random
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from cart_course.contract import parse_command
from cart_course.course import stream_id
from cart_course.demo import _Patient, cohort
from cart_course.errors import CipherKeyError
from cart_course.eventlog import EventLog
from cart_course.service import CourseService
from cart_course.storage import new_cipher_key, open_application, parse_store_url
from cart_course.views import Views, queries
from cart_course.views.metrics import metrics_text

CLI = str(Path(sys.executable).with_name("cart-course"))
STORES = ["sqlite", "postgres"]


@pytest.fixture(params=STORES)
def url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return str(tmp_path / "damaged.sqlite")
    return str(request.getfixturevalue("pg_url"))


@pytest.fixture
def service(url: str) -> Iterator[CourseService]:
    svc = CourseService(open_application(parse_store_url(url)))
    try:
        yield svc
    finally:
        svc.close()


def _record(service: CourseService, commands: list[dict[str, Any]]) -> None:
    results = service.execute_batch([parse_command(c) for c in commands])
    assert all(hasattr(r, "status") for r in results), results


def _demo(service: CourseService, n: int = 10) -> None:
    _record(service, list(cohort(n, 3, start=dt.datetime(2025, 1, 6, 8, tzinfo=dt.UTC))))


def _sql(url: str, statement: str, params: tuple[Any, ...]) -> None:
    """Damage the log behind the application's back (as a broken disk or a bad hand would)."""
    if url.startswith("postgres"):
        import psycopg

        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute(statement.replace("?", "%s"), params)
        return
    conn = sqlite3.connect(url)
    try:
        conn.execute(statement, params)
        conn.commit()
    finally:
        conn.close()


def _key(url: str, patient_id: str) -> Any:
    sid = stream_id(patient_id)
    return sid if url.startswith("postgres") else sid.hex


_TABLES: dict[str, str] = {}


def _table(url: str) -> str:
    """The events table (PostgreSQL: schema-qualified, as the application names it)."""
    if url not in _TABLES:
        app = open_application(parse_store_url(url))
        recorder: Any = app.recorder
        schema = getattr(getattr(recorder, "datastore", None), "schema", None)
        table = recorder.events_table_name
        app.close()
        _TABLES[url] = f"{schema}.{table}" if url.startswith("postgres") and schema else table
    return _TABLES[url]


def delete_event(url: str, patient_id: str, version: int) -> None:
    _sql(
        url,
        f"DELETE FROM {_table(url)} WHERE originator_id = ? AND originator_version = ?",
        (_key(url, patient_id), version),
    )


def garble_event(url: str, patient_id: str, version: int) -> None:
    _sql(
        url,
        f"UPDATE {_table(url)} SET state = ? WHERE originator_id = ? AND originator_version = ?",
        (b"{not json", _key(url, patient_id), version),
    )


def _views(service: CourseService, url: str) -> Views:
    return Views(service.log, parse_store_url(url), batch_size=23)


def _rows(views: Views) -> dict[str, dict[str, Any]]:
    return {r["patient_id"]: r for r in queries.board(views.db, limit=1000)}


def test_a_patient_without_its_registration_is_skipped_not_the_board(
    service: CourseService, url: str
) -> None:
    _demo(service)
    victim = "P-0003"
    versions = service.record(victim).version
    delete_event(url, victim, 1)
    views = _views(service, url)
    try:
        views.rebuild()  # before: "unexpected ValueError: event Screened of unknown stream"
        assert views.position() == views.log_position()  # not stuck at 0
        rows = _rows(views)
        assert sorted(rows) == [f"P-{i:04d}" for i in range(1, 11) if i != 3]
        for pid, row in rows.items():
            rec = service.record(pid)
            assert (row["state"], row["version"]) == (rec.state, rec.version)
        summary = queries.skipped_summary(views.db)
        assert summary["events"] == versions - 1
        (stream,) = summary["streams"]
        assert stream["stream_id"] == str(stream_id(victim))
        assert stream["patient_id"] is None  # its registration, which names it, is gone
        assert (stream["first_version"], stream["last_version"]) == (2, versions)
        assert "registration (v1) is not in the log" in stream["reason"]
        assert views.lag()["skipped_events"] == versions - 1
        text = metrics_text(views)
        assert f"cart_course_view_skipped_events {versions - 1}" in text
        assert f'stream_id="{stream_id(victim)}"' in text and 'first_version="2"' in text
        # the skip is written with the position, once: a second rebuild gives the same rows
        before = views.dump()
        views.rebuild()
        assert views.dump() == before
    finally:
        views.close()


def test_an_unreadable_event_is_skipped_and_named_never_blamed_on_a_key(
    service: CourseService, url: str
) -> None:
    _demo(service)
    victim = "P-0002"
    versions = service.record(victim).version
    garble_event(url, victim, 3)
    views = _views(service, url)
    try:
        views.rebuild()  # before: "the stored events do not decrypt with this key"
        row = _rows(views)[victim]
        assert (row["version"], row["state"]) == (2, "screened")  # as of the last event read
        (stream,) = queries.skipped_summary(views.db)["streams"]
        assert (stream["patient_id"], stream["first_version"], stream["events"]) == (
            victim,
            3,
            versions - 2,
        )
        assert "does not read" in stream["reason"] and "key" not in stream["reason"]
        first, *later = queries.skipped(views.db)
        assert first["version"] == 3 and "ApheresisRecorded" in first["topic"]
        assert all("after v3 of this stream" in s["reason"] for s in later)

        # Not stuck: a new event of another patient is applied, the damaged stream stays skipped.
        more = list(cohort(1, 8, start=dt.datetime(2025, 6, 2, 8, tzinfo=dt.UTC)))
        for c in more:
            c["patient_id"] = "N-0001"
        _record(service, more)
        views.catch_up()
        assert views.position() == views.log_position()
        assert _rows(views)["N-0001"]["version"] == service.record("N-0001").version
        assert queries.skipped_summary(views.db)["events"] == versions - 2
    finally:
        views.close()


def test_a_gap_in_a_stream_stops_its_row_before_the_gap(service: CourseService, url: str) -> None:
    _demo(service)
    delete_event(url, "P-0004", 4)
    views = _views(service, url)
    try:
        views.catch_up()
        assert _rows(views)["P-0004"]["version"] == 3
        first = queries.skipped(views.db)[0]
        assert (first["patient_id"], first["version"]) == ("P-0004", 5)
        assert "v4 is missing from the log" in first["reason"]
    finally:
        views.close()


def test_history_damaged_after_the_views_read_it(service: CourseService, url: str) -> None:
    """A follower that restarts reloads a patient's record from the store: if that history no
    longer reads, the patient's new events are skipped (and said so), not the batch."""
    patients = {
        pid: _Patient(pid, dt.datetime(2025, 3, 3, 8, tzinfo=dt.UTC), random.Random(1))
        for pid in ("S-1", "S-2")
    }
    for p in patients.values():
        p.screen()
    _record(service, [c for p in patients.values() for c in p.commands])
    first = _views(service, url)
    try:
        first.catch_up()
    finally:
        first.close()
    victim = "S-1"
    version = service.record(victim).version
    for p in patients.values():
        p.commands.clear()
        p.apheresis()
    _record(service, [c for p in patients.values() for c in p.commands])
    garble_event(url, victim, version)  # read by the views already
    restarted = _views(service, url)  # an empty cache: reloads from the store
    try:
        restarted.catch_up()
        assert restarted.position() == restarted.log_position()
        rows = _rows(restarted)
        assert rows["S-2"]["state"] == "apheresed"
        assert (rows[victim]["version"], rows[victim]["state"]) == (version, "screened")
        (skip,) = queries.skipped(restarted.db)
        assert (skip["patient_id"], skip["version"]) == (victim, version + 1)
        assert f"history up to v{version} no longer reads" in skip["reason"]
    finally:
        restarted.close()


def test_an_event_that_does_not_apply_is_skipped_with_the_row_before_it(
    service: CourseService, url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from cart_course.views import runner

    _demo(service, 3)
    real = runner.apply_event

    def half_applied(record: Any, event: Any) -> Any:
        if record is not None and record.patient_id == "P-0002" and event.originator_version == 5:
            record.state = "garbage"  # half-way through, then it fails
            raise KeyError("outcome")
        return real(record, event)

    monkeypatch.setattr(runner, "apply_event", half_applied)
    views = _views(service, url)
    try:
        views.catch_up()
        row = _rows(views)["P-0002"]
        assert (row["version"], row["state"]) == (4, "infused_d1")  # not the half-applied record
        first = queries.skipped(views.db)[0]
        assert first["version"] == 5 and "does not apply (KeyError: 'outcome')" in first["reason"]
    finally:
        views.close()


def test_a_damaged_first_event_is_not_a_key_error(service: CourseService, url: str) -> None:
    _demo(service, 3)
    garble_event(url, "P-0001", 1)  # the store's very first event
    views = _views(service, url)  # before: CipherKeyError "do not decrypt with this key"
    try:
        views.catch_up()
        assert sorted(_rows(views)) == ["P-0002", "P-0003"]
        (stream,) = queries.skipped_summary(views.db)["streams"]
        assert stream["first_version"] == 1 and "does not read" in stream["reason"]
    finally:
        views.close()


def test_a_wrong_key_for_the_whole_store_is_still_a_key_error(tmp_path: Path) -> None:
    plain = parse_store_url(str(tmp_path / "plain.sqlite"))
    svc = CourseService(open_application(plain))
    _demo(svc, 2)
    svc.close()
    keyed = open_application(plain, cipher_key=new_cipher_key())
    with pytest.raises(CipherKeyError, match="not encrypted but CART_COURSE_CIPHER_KEY is set"):
        Views(EventLog(keyed), plain)
    secret = parse_store_url(str(tmp_path / "secret.sqlite"))
    svc = CourseService(open_application(secret, cipher_key=new_cipher_key()))
    _demo(svc, 2)
    svc.close()
    for app in (open_application(secret, cipher_key=new_cipher_key()), open_application(secret)):
        with pytest.raises(CipherKeyError, match="do not decrypt with this key"):
            Views(EventLog(app), secret)


def _cli(db: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [CLI, "--db", str(db), *args], capture_output=True, text=True, timeout=120
    )


def test_the_monitor_sees_the_skip_and_a_working_board(tmp_path: Path) -> None:
    """The reviewer's cases through the CLI: one registration row deleted, one event garbled."""
    db = tmp_path / "trial.sqlite"
    assert _cli(db, "demo", "--patients", "10", "--seed", "3").returncode == 0
    orphan, garbled = str(stream_id("P-0003")), "P-0005"
    delete_event(str(db), "P-0003", 1)
    garble_event(str(db), garbled, 6)

    rebuilt = _cli(db, "views", "rebuild")
    assert rebuilt.returncode == 0, rebuilt.stderr
    assert "event(s) skipped (unreadable)" in rebuilt.stdout
    assert orphan in rebuilt.stderr and f"patient {garbled}" in rebuilt.stderr

    status = _cli(db, "status")
    assert status.returncode == 0, status.stderr
    assert "unexpected" not in status.stderr and "decrypt" not in status.stderr
    assert status.stderr.startswith("warning: the views skipped")
    assert orphan in status.stderr and "registration (v1)" in status.stderr
    assert f"patient {garbled} (stream {stream_id(garbled)}): v6-" in status.stderr
    assert "9 patient(s)" in status.stdout and "unreadable event(s) skipped" in status.stdout

    data = json.loads(_cli(db, "status", "--json").stdout)
    assert data["views"]["position"] == data["views"]["log_position"]
    assert {s["stream_id"] for s in data["skipped"]["streams"]} == {orphan, str(stream_id(garbled))}
    assert data["views"]["skipped_events"] == data["skipped"]["events"] > 0

    listed = json.loads(_cli(db, "views", "skipped", "--json").stdout)
    assert len(listed["events"]) == data["skipped"]["events"]
    metrics = _cli(db, "views", "metrics").stdout
    assert f"cart_course_view_skipped_events {data['skipped']['events']}" in metrics
    assert f'patient_id="{garbled}",first_version="6"' in metrics
    for command in (("views", "cohort"), ("views", "watchlist"), ("watch", "--once")):
        done = _cli(db, *command)
        assert done.returncode == 0 and orphan in done.stderr, (command, done.stderr)
