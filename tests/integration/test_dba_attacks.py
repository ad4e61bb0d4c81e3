"""The database administrator as attacker (issue 14), on SQLite and PostgreSQL.

The attacker has write access to every table and the source code, but not the service's signing
key. Each attack first beats what the hash chain alone can see where it can (``audit verify``
without a checkpoint says OK), and is then caught by ``audit verify --checkpoint`` against the
last checkpoint the auditor holds, which names what was broken (exit 1). An untouched store
that kept growing after the checkpoint verifies (exit 0).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import sqlite3
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import attrs
import pytest
from click.testing import CliRunner
from integration_helpers import Sql, raw_sql

from cart_course.audit import verify
from cart_course.bootstrap import Settings, build_service
from cart_course.cli import cli
from cart_course.contract import parse_command
from cart_course.course import canonical, genesis_hash, stream_id
from cart_course.demo import cohort
from cart_course.keys import generate, write_key_pair
from cart_course.ledger.core import issue
from cart_course.service import CourseService
from cart_course.storage import parse_store_url
from cart_course.views.runner import Views, ViewsDifferError

SIGNED_TOPIC = "cart_course.course:PatientCourse.MilestoneSigned"


@attrs.define
class World:
    kind: str
    url: str
    service: CourseService
    sql: Sql
    public_key: Path
    held: Path
    tmp: Path

    def sid(self, patient_id: str) -> Any:
        sid = stream_id(patient_id)
        return sid.hex if self.kind == "sqlite" else sid

    def record(self, commands: Iterator[dict[str, Any]]) -> None:
        parsed = [parse_command(c) for c in commands]
        for i in range(0, len(parsed), 200):
            self.service.execute_batch(parsed[i : i + 200])

    def hold_checkpoint(self) -> None:
        ledger = self.service.ledger
        self.held.write_text(issue(self.service.log, ledger.store, ledger.key).text())

    def audit(self) -> tuple[int, str]:
        """``cart-course audit verify --checkpoint`` as the auditor runs it (no signing key)."""
        result = CliRunner().invoke(
            cli,
            [
                "--db",
                self.url,
                "audit",
                "verify",
                "--checkpoint",
                str(self.held),
                "--public-key",
                str(self.public_key),
            ],
            env={"CART_COURSE_SIGNING_KEY": None},
        )
        return result.exit_code, result.output

    def chain_alone_ok(self) -> bool:
        return verify(self.service.log).ok

    def chain_alone_sees_only_the_gap(self) -> bool:
        """A deletion: the chain alone cannot see it (a shorter chain is still a chain, a
        missing stream leaves nothing to check), except that on SQLite, whose ids have no gaps,
        plain verify names the hole it left in the log."""
        problems = verify(self.service.log).problems
        if self.kind != "sqlite":
            return not problems
        return bool(problems) and all(p.check == "gap" for p in problems)

    def rows(self, patient_id: str) -> list[tuple[int, str, dict[str, Any]]]:
        found = self.sql(
            "SELECT originator_version, topic, state FROM stored_events "
            "WHERE originator_id = %s ORDER BY originator_version",
            (self.sid(patient_id),),
        )
        return [(v, topic, json.loads(bytes(state))) for v, topic, state in found]

    def rewrite(
        self,
        patient_id: str,
        edit: Callable[[list[tuple[str, dict[str, Any]]]], list[tuple[str, dict[str, Any]]]],
    ) -> None:
        """Rewrite a stream as the attacker would: edit its events, renumber them, recompute
        every hash of the chain from the patient's genesis, write the rows back in place
        (and insert or delete at the end)."""
        old = self.rows(patient_id)
        new = edit([(topic, state) for _v, topic, state in old])
        prev = genesis_hash(patient_id)
        sid = self.sid(patient_id)
        for version, (topic, state) in enumerate(new, start=1):
            state = {**state, "originator_version": version, "prev_hash": prev}
            data = canonical(state)
            prev = hashlib.sha256(data).hexdigest()
            if version <= len(old):
                self.sql(
                    "UPDATE stored_events SET topic = %s, state = %s "
                    "WHERE originator_id = %s AND originator_version = %s",
                    (topic, data, sid, version),
                )
            else:
                self.sql(
                    "INSERT INTO stored_events (originator_id, originator_version, topic, state) "
                    "VALUES (%s, %s, %s, %s)",
                    (sid, version, topic, data),
                )
        self.sql(
            "DELETE FROM stored_events WHERE originator_id = %s AND originator_version > %s",
            (sid, len(new)),
        )


def _sql_for(kind: str, url: str, table: str) -> Sql:
    plain = raw_sql(kind, url)

    def sql(statement: str, args: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        return plain(statement.replace("stored_events", table), args)

    return sql


@pytest.fixture(params=["sqlite", "postgres"])
def world(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[World]:
    kind = request.param
    url = str(tmp_path / "ledger.sqlite") if kind == "sqlite" else request.getfixturevalue("pg_url")
    private, public = write_key_pair(generate("site-key"), tmp_path / "keys")
    service = build_service(Settings(store=parse_store_url(url), signing_key=str(private)))
    table = service.app.recorder.events_table_name  # type: ignore[attr-defined]
    w = World(
        kind=kind,
        url=url,
        service=service,
        sql=_sql_for(kind, url, table),
        public_key=public,
        held=tmp_path / "held.checkpoint",
        tmp=tmp_path,
    )
    w.record(cohort(12, seed=3))
    w.hold_checkpoint()
    # The log keeps growing after the checkpoint the auditor took home.
    w.record(cohort(3, seed=5, prefix="Q"))
    try:
        yield w
    finally:
        service.close()


def test_untouched_store_that_grew_after_the_checkpoint_verifies(world: World) -> None:
    code, out = world.audit()
    assert code == 0, out
    assert "unchanged and extends them" in out
    assert "consistency proof verified" in out


def test_modified_event_with_recomputed_chain(world: World) -> None:
    def edit(events: list[tuple[str, dict[str, Any]]]) -> list[tuple[str, dict[str, Any]]]:
        events[2][1]["actor"] = "someone.else"
        return events

    world.rewrite("P-0004", edit)
    assert world.chain_alone_ok()  # the chain was recomputed: the chain alone sees nothing
    code, out = world.audit()
    assert code == 1, out
    assert "P-0004 v3: [checkpoint]" in out
    assert "modified" in out


def test_inserted_event_with_recomputed_chain(world: World) -> None:
    def edit(events: list[tuple[str, dict[str, Any]]]) -> list[tuple[str, dict[str, Any]]]:
        extra = (events[1][0], {**events[1][1], "reason": "inserted"})
        return [*events[:2], extra, *events[2:]]

    world.rewrite("P-0005", edit)
    code, out = world.audit()
    assert code == 1, out
    assert "P-0005 v3: [checkpoint]" in out


def test_reordered_events_with_recomputed_chain(world: World) -> None:
    def edit(events: list[tuple[str, dict[str, Any]]]) -> list[tuple[str, dict[str, Any]]]:
        events[3], events[4] = events[4], events[3]
        return events

    world.rewrite("P-0006", edit)
    code, out = world.audit()
    assert code == 1, out
    assert "P-0006 v4: [checkpoint]" in out


def test_deleted_last_event(world: World) -> None:
    last = world.rows("P-0007")[-1][0]
    world.sql(
        "DELETE FROM stored_events WHERE originator_id = %s AND originator_version = %s",
        (world.sid("P-0007"), last),
    )
    assert world.chain_alone_sees_only_the_gap()  # a shorter chain is still a chain
    code, out = world.audit()
    assert code == 1, out
    assert f"P-0007 v{last}: [checkpoint]" in out
    assert "deleted" in out


def test_deleted_patient(world: World) -> None:
    world.sql("DELETE FROM stored_events WHERE originator_id = %s", (world.sid("P-0003"),))
    assert world.chain_alone_sees_only_the_gap()  # no registration, no stream: nothing to check
    code, out = world.audit()
    assert code == 1, out
    assert "P-0003 v1: [checkpoint]" in out
    assert "deleted" in out


def test_forged_signature(world: World) -> None:
    rows = world.rows("Q-0001")
    signable = next(
        (v, state)
        for v, _topic, state in rows
        if state.get("trigger") in ("screen", "infuse_d1", "assess_response")
    )
    version, state = signable
    signed_hash = hashlib.sha256(canonical(state)).hexdigest()
    now = dt.datetime.now(dt.UTC).isoformat()

    def edit(events: list[tuple[str, dict[str, Any]]]) -> list[tuple[str, dict[str, Any]]]:
        forged = {
            "originator_id": str(stream_id("Q-0001")),
            "type": "PatientCourse.MilestoneSigned",
            "timestamp": now,
            "milestone": "eligibility" if state["trigger"] == "screen" else "infusion",
            "signs_version": version,
            "signed_hash": signed_hash,
            "meaning": "approval",
            "printed_name": "J. Lee, MD",
            "actor": "dr.lee",
            "role": "clinician",
            "reason": None,
            "occurred_at": now,
            "idempotency_key": "forged-by-the-dba",
            "digest": "0" * 64,
        }
        if forged["milestone"] == "infusion" and state["trigger"] == "assess_response":
            forged["milestone"] = "response_assessment"
        return [*events, (SIGNED_TOPIC, forged)]

    world.rewrite("Q-0001", edit)
    assert world.chain_alone_ok()  # its hash matches the signed event, its chain is whole
    code, out = world.audit()
    assert code == 1, out
    assert f"Q-0001 v{len(rows) + 1}: [esignature]" in out


def test_copied_signature_fails(world: World) -> None:
    """A genuine e-signature's service signature copied onto a made-up one."""
    ledger = world.service.ledger
    world.service.execute(
        parse_command(
            {
                "command": "sign",
                "patient_id": "Q-0002",
                "actor": {"id": "dr.lee", "role": "clinician", "name": "J. Lee, MD"},
                "occurred_at": "2026-03-01T10:00:00+00:00",
                "payload": {
                    "milestone": "eligibility",
                    "signs_version": 2,
                    "meaning": "approval",
                    "printed_name": "J. Lee, MD",
                },
            }
        )
    )
    assert ledger is not None
    code, out = world.audit()
    assert code == 0, out  # the genuine one verifies
    rows = world.rows("Q-0002")
    genuine = rows[-1][2]
    assert genuine["service_signature"].startswith("site-key ")

    def edit(events: list[tuple[str, dict[str, Any]]]) -> list[tuple[str, dict[str, Any]]]:
        events[-1][1]["printed_name"] = "A. Nother, MD"
        return events

    world.rewrite("Q-0002", edit)
    assert world.chain_alone_ok()
    code, out = world.audit()
    assert code == 1, out
    assert f"Q-0002 v{len(rows)}: [esignature]" in out


def test_rolled_back_to_a_backup(world: World) -> None:
    backup = world.tmp / "backup.sqlite"
    mark = world.sql("SELECT COUNT(*) FROM stored_events")[0][0]
    if world.kind == "sqlite":
        with sqlite3.connect(world.url) as live, sqlite3.connect(backup) as copy:
            live.backup(copy)
    world.record(cohort(2, seed=7, prefix="R"))
    world.hold_checkpoint()  # the auditor's latest checkpoint covers the R patients
    if world.kind == "sqlite":
        with sqlite3.connect(backup) as copy, sqlite3.connect(world.url) as live:
            copy.backup(live)
    else:  # as a restore of the dump taken at ``mark`` leaves it
        ids = "notification_id"
        world.sql(f"DELETE FROM stored_events WHERE {ids} > %s", (mark,))
        world.sql("DELETE FROM cart_course_leaves WHERE position >= %s", (mark,))
        world.sql("DELETE FROM cart_course_checkpoints WHERE size > %s", (mark,))
    code, out = world.audit()
    assert code == 1, out
    assert "rolled back" in out
    assert "R-0001 v1" in out or f"holds {mark} rows" in out


def test_edited_view_row(world: World) -> None:
    views = Views(world.service.log, parse_store_url(world.url))
    try:
        views.catch_up()
    finally:
        views.close()
    code, out = world.audit()
    assert code == 0, out
    # A dead patient shown as screened (any other patient when the cohort has no death).
    pid, _state = world.sql(
        "SELECT patient_id, state FROM view_board WHERE state <> 'screened' "
        "ORDER BY CASE WHEN state = 'died' THEN 0 ELSE 1 END, patient_id"
    )[0]
    world.sql("UPDATE view_board SET state = 'screened' WHERE patient_id = %s", (pid,))
    code, out = world.audit()
    assert code == 1, out
    assert f"{pid}: [views]" in out
    assert "view_board (state)" in out
    # Found once: the board no longer serves the views (names the patient) until rebuilt.
    views = Views(world.service.log, parse_store_url(world.url))
    try:
        views.catch_up()
        with pytest.raises(ViewsDifferError) as refused:
            views.check_not_differing()
        assert refused.value.patients == [pid] and "views rebuild" in refused.value.message
        views.rebuild()
        views.check_not_differing()
        assert views.db.fetchone("SELECT state FROM view_board WHERE patient_id = ?", (pid,)) != (
            "screened",
        )
    finally:
        views.close()
    code, out = world.audit()
    assert code == 0, out


def test_leaf_hashes_rewritten_too(world: World) -> None:
    """The attacker also rewrites the stored leaf hashes to match: the range is named from the
    signed checkpoints that still agree and the first that does not."""

    def edit(events: list[tuple[str, dict[str, Any]]]) -> list[tuple[str, dict[str, Any]]]:
        events[1][1]["actor"] = "someone.else"
        return events

    world.rewrite("P-0002", edit)
    from cart_course.ledger.log import rows as log_rows

    for position, row in enumerate(log_rows(world.service.log)):
        world.sql(
            "UPDATE cart_course_leaves SET leaf = %s WHERE position = %s",
            (row.leaf.hex(), position),
        )
    code, out = world.audit()
    assert code == 1, out
    assert "the range is tampered" in out


def test_patient_deleted_after_the_last_checkpoint(world: World) -> None:
    """Rows no checkpoint covers yet: on SQLite the gap in the notification ids names them (a
    rolled-back insert takes no id there); PostgreSQL's sequence may skip ids, so there only the
    next checkpoint covers them."""
    world.sql("DELETE FROM stored_events WHERE originator_id = %s", (world.sid("Q-0002"),))
    assert world.chain_alone_sees_only_the_gap()
    code, out = world.audit()
    if world.kind == "sqlite":
        assert code == 1, out
        assert "[gap]" in out and "missing before Q-0003 v1" in out
    else:
        assert code == 0, out


def test_record_time_in_the_future_of_its_checkpoint(world: World) -> None:
    """A record time set ahead by hand before the service signed the tree (or a clock ahead of
    the service's): the checkpoint that covers the row was issued before that time."""
    future = (dt.datetime.now(dt.UTC) + dt.timedelta(days=1)).isoformat()
    last = len(world.rows("Q-0003"))

    def edit(events: list[tuple[str, dict[str, Any]]]) -> list[tuple[str, dict[str, Any]]]:
        events[-1][1]["timestamp"] = future
        return events

    world.rewrite("Q-0003", edit)
    world.hold_checkpoint()  # the service signs the log as it finds it
    code, out = world.audit()
    assert code == 1, out
    assert f"Q-0003 v{last}: [record_time] recorded at {future}" in out


def test_an_altered_event_gets_no_inclusion_proof(world: World) -> None:
    from cart_course.keys import read_public_keys
    from cart_course.ledger.core import LedgerError, check_proof, prove

    ledger = world.service.ledger
    held = world.held.read_text()
    sid = str(stream_id("P-0004"))
    proof = prove(world.service.log, ledger.store, sid, 3, checkpoint_text=held)
    check_proof(proof, held, read_public_keys([world.public_key]))

    def edit(events: list[tuple[str, dict[str, Any]]]) -> list[tuple[str, dict[str, Any]]]:
        events[2][1]["actor"] = "someone.else"
        return events

    world.rewrite("P-0004", edit)
    with pytest.raises(LedgerError, match="not the row the checkpoint signed"):
        prove(world.service.log, ledger.store, sid, 3, checkpoint_text=held)
