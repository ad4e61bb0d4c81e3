"""Each event names the canonical form its hash covers, and every hash is recomputed in that form.

What this protects: a later change of the canonical bytes can be introduced beside the old form
without breaking the stores written before it (their events keep verifying with the form they
were written in), and an event naming a form the code does not know is reported, not misread.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from cart_course import course, encoding
from cart_course.audit.integrity import verify
from cart_course.bootstrap import Settings, build_service
from cart_course.contract import parse_command
from cart_course.course import event_content, event_hash, stream_id
from cart_course.demo import cohort
from cart_course.encoding import (
    CANONICAL_FORM,
    FORM_FIELD,
    LEGACY_FORM,
    canonical_reference,
    content_bytes,
    decode_json,
    decoded_content_bytes,
    form_of,
)
from cart_course.service import CourseService
from cart_course.storage import parse_store_url


def _service(path: Path) -> CourseService:
    return build_service(Settings(store=parse_store_url(str(path))))


def _form_2(data: Any) -> bytes:
    """A test-only form 2: form 1 with spaces after separators (other bytes, other hashes)."""
    return json.dumps(
        data, sort_keys=True, separators=(", ", ": "), ensure_ascii=False, default=str
    ).encode()


def test_new_events_name_the_form_their_hash_covers(tmp_path: Path) -> None:
    service = _service(tmp_path / "f.sqlite")
    try:
        for c in cohort(2, seed=3):
            service.execute(parse_command(c))
        pid = next(iter(cohort(1, seed=3)))["patient_id"]
        events = list(service.app.events.get(stream_id(pid)))
        assert events
        for event in events:
            content = event_content(event)
            assert content[FORM_FIELD] == CANONICAL_FORM == 1
            assert event_hash(event) == hashlib.sha256(canonical_reference(content)).hexdigest()
    finally:
        service.close()


def test_an_event_without_a_form_is_form_1() -> None:
    content = {"type": "PatientCourse.Screened", "prev_hash": "ab", "payload": {"x": 1e-05}}
    assert form_of(content) == LEGACY_FORM == 1
    assert content_bytes(content) == canonical_reference(content)
    assert decoded_content_bytes(decode_json(canonical_reference(content))) == canonical_reference(
        content
    )


def test_an_unknown_form_cannot_be_hashed() -> None:
    for form in (3, "1", True, None):
        with pytest.raises(encoding.UnknownFormError):
            content_bytes({FORM_FIELD: form})


def _verified(db: Path) -> Any:
    """``audit verify`` of the store at ``db``, by a service of its own."""
    reader = _service(db)
    try:
        return verify(reader.log)
    finally:
        reader.close()


def _record_half(db: Path, start: int, commands: list[dict[str, Any]]) -> None:
    service = _service(db)
    try:
        for c in commands[start:]:
            service.execute(parse_command(c))
    finally:
        service.close()


def test_a_store_holding_two_forms_verifies_replays_and_takes_commands(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    db = tmp_path / "two.sqlite"
    commands = list(cohort(4, seed=9))
    half = len(commands) // 2
    _record_half(db, 0, commands[:half])  # written in form 1 by today's code
    with monkeypatch.context() as later:
        later.setitem(encoding.FORMS, 2, _form_2)
        later.setitem(encoding.DECODED_FORMS, 2, _form_2)
        later.setattr(course, "CANONICAL_FORM", 2)
        _record_half(db, half, commands)  # the rest written in form 2, on the same streams
        service = _service(db)
        try:
            forms = {
                e.__dict__.get(FORM_FIELD)
                for pid in {c["patient_id"] for c in commands}
                for e in service.app.events.get(stream_id(pid))
            }
            assert forms == {1, 2}
            report = verify(service.log)
            assert report.ok, report.problems
            # the chain runs across the forms: each prev_hash is the hash in its event's form
            pid = commands[-1]["patient_id"]
            events = list(service.app.events.get(stream_id(pid)))
            for before, after in itertools.pairwise(events):
                assert after.prev_hash == event_hash(before)
            loaded = service._load(pid, fresh=True)
            assert loaded is not None and loaded.chain_head == event_hash(events[-1])
        finally:
            service.close()
    # the code that knows only form 1 reports the form 2 events instead of misreading them
    assert not _verified(db).ok


def test_the_form_field_is_covered_by_the_hash(tmp_path: Path) -> None:
    db = tmp_path / "t.sqlite"
    _record_half(db, 0, list(cohort(2, seed=4)))
    with sqlite3.connect(db) as con:
        rowid, state = con.execute(
            "SELECT rowid, state FROM stored_events WHERE originator_version = 2 LIMIT 1"
        ).fetchone()
        values = json.loads(bytes(state))
        assert values[FORM_FIELD] == 1
        del values[FORM_FIELD]  # claims to be a legacy event: same form, other bytes
        con.execute(
            "UPDATE stored_events SET state = ? WHERE rowid = ?",
            (canonical_reference(values), rowid),
        )
    report = _verified(db)
    assert not report.ok
    assert any(p.version == 2 for p in report.problems), report.problems
