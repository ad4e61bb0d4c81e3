"""How a course ended is stated by the move that ended it; snapshots taken under older replay
rules are neither used by the service nor judged by the audit (the course replays from its
events, and its audit is the log's)."""

from __future__ import annotations

import json
import sqlite3
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from integration_helpers import Course, crs

from cart_course.audit.integrity import verify
from cart_course.course import REPLAY_RULES
from cart_course.service import CourseService, stream_id
from cart_course.storage import open_application, parse_store_url


def test_how_a_course_ended_stays_when_its_toxicity_resolves_later(
    service: CourseService,
) -> None:
    p = Course(service, "END-1")
    p.screen()
    p.apheresis()
    p.infuse(1, days=14)
    reported = p.do("report_toxicity", {"toxicity": crs(3)}, hours=6)
    p.do("discontinue", reason="severe cytokine release syndrome (grade 3)", hours=2)
    ended = service.summary("END-1")["ended"]
    assert ended["state"] == "discontinued"
    assert ended["reason"] == "severe cytokine release syndrome (grade 3)"
    tox_id = reported.outcome["toxicity_id"]
    p.do("resolve_toxicity", {"toxicity_id": tox_id}, days=3)
    assert service.summary("END-1")["ended"] == ended  # the resolution does not restate it
    assert service.summary("END-1")["state"] == "discontinued"


def _snapshot_rows(path: Path) -> list[tuple[int, bytes]]:
    with sqlite3.connect(path) as db:
        rows = db.execute("SELECT originator_version, state FROM stored_snapshots").fetchall()
    db.close()
    return rows


def _apheresed_with_a_snapshot(path: Path, pid: str) -> tuple[Course, dict[str, Any]]:
    """A patient screened and apheresed, snapshotted at v3; the stored snapshot, decoded."""
    service = CourseService(open_application(parse_store_url(str(path))))
    p = Course(service, pid)
    p.screen()
    p.apheresis()
    service.app.take_snapshot(stream_id(pid))
    service.close()
    [(_version, raw)] = _snapshot_rows(path)
    snapshot: dict[str, Any] = json.loads(raw)
    return p, snapshot


def _store_snapshot(path: Path, snapshot: dict[str, Any]) -> None:
    """Write the snapshot at v3 back as the database holds it (an edit outside the service)."""
    with sqlite3.connect(path) as db:
        db.execute(
            "UPDATE stored_snapshots SET state = ? WHERE originator_version = 3",
            (json.dumps(snapshot).encode(),),
        )
    db.close()


def test_a_snapshot_under_older_replay_rules_is_not_used_nor_judged(tmp_path: Path) -> None:
    path = tmp_path / "old.sqlite"
    p, snapshot = _apheresed_with_a_snapshot(path, "OLD-1")
    assert snapshot["state"]["replay_rules"] == REPLAY_RULES  # kept in every new snapshot
    # a snapshot as an older version wrote it (no replay_rules), whose state those rules gave
    del snapshot["state"]["replay_rules"]
    snapshot["state"]["record"]["_data_"]["state"] = "screened"
    _store_snapshot(path, snapshot)

    service = CourseService(open_application(parse_store_url(str(path))))
    assert service.summary("OLD-1")["state"] == "apheresed"  # replayed from the events
    report = verify(service.log)
    assert report.ok, report.problems
    assert (report.snapshots, report.older_snapshots) == (0, 1)  # said, not "checked"
    # a new snapshot under today's rules replaces it when one is taken
    Course(service, "OLD-1", start=p.t).infuse(1, days=14)
    service.app.take_snapshot(stream_id("OLD-1"))
    assert len(_snapshot_rows(path)) == 2
    service.close()
    fresh = CourseService(open_application(parse_store_url(str(path))))
    assert fresh.summary("OLD-1")["state"] == "infused_d1"
    assert verify(fresh.log).ok
    fresh.close()


def test_a_current_snapshot_altered_is_still_tampering(tmp_path: Path) -> None:
    path = tmp_path / "cur.sqlite"
    _p, snapshot = _apheresed_with_a_snapshot(path, "CUR-1")
    snapshot["state"]["record"]["_data_"]["state"] = "screened"
    _store_snapshot(path, snapshot)
    service = CourseService(open_application(parse_store_url(str(path))))
    report = verify(service.log)
    service.close()
    assert not report.ok
    assert any("snapshot" in str(problem) for problem in report.problems)
