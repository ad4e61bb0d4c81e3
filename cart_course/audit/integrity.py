"""Tamper evidence: re-compute every stream's hash chain, the log digest, and compare to a seal.

What each check proves (see ``docs/audit.md``):

- **chain**: each event stores ``prev_hash``, the hash of the previous event of its patient's
  stream (the first one: ``genesis_hash(patient_id)``). Modifying, deleting, reordering or
  inserting a row inside a stream breaks the link at (or right after) that row.
- **registrations**: every stored row must belong to a registered stream (a deleted ``Registered``
  row would otherwise hide the whole stream); versions run 1, 2, 3 ... without gaps; record times
  never go backwards within a stream.
- **signatures**: each ``MilestoneSigned.signed_hash`` must equal the hash of the event it signs.
- **snapshots**: the application restores a long stream from its latest stored snapshot (one
  every 50 events, less often as a history grows past 1000), not from the log. Each stored snapshot must equal the state replayed from the
  log at its version: the record, the chain head, the idempotency keys and the times. A tampered
  snapshot would otherwise change what the service shows while the log still verifies. A snapshot
  taken under older replay rules (``course.REPLAY_RULES``) is not used by the service, so it
  cannot change what the service shows, and is not compared.
- **seal**: the chain cannot see the *last* event of a stream deleted or altered (nothing after it
  points to it). ``seal`` writes each stream's head (version and hash) and the log digest to a file
  kept outside the database; ``verify --seal FILE`` then requires every sealed head to be present
  and unchanged. Events recorded after the seal are checked by the chain only.

A live store can be verified (and sealed): each run first reads the log's high-water mark (the
highest notification id; ids are given in commit order) and checks exactly the rows at or below it,
a consistent prefix of the log. Writes made while it runs are not problems; the next run covers
them. ``VerifyReport.up_to`` says which position was verified.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import uuid
from collections.abc import Callable, Iterator, Sequence
from typing import IO, Any

import attrs
from eventsourcing.persistence import StoredEvent

from ..course import REPLAY_RULES, genesis_hash, stream_id
from ..eventlog import EventLog
from ..protocol.record import PatientRecord
from ..storage import snapshot_rules
from .log import (
    PAGE,
    REGISTERED,
    SIGNED,
    UNDECODABLE,
    Decoder,
    LoggedEvent,
    Replayer,
    Row,
    StreamRead,
    UnreadableEventError,
    count_events,
    high_water_mark,
    is_version,
    registrations,
    require_readable,
    scan,
)

SEAL_FORMAT = "cart-course-seal/1"


@attrs.frozen(kw_only=True)
class Problem:
    patient_id: str
    version: int | None
    check: str
    message: str

    def to_json(self) -> dict[str, Any]:
        return {
            "patient_id": self.patient_id,
            "version": self.version,
            "check": self.check,
            "message": self.message,
        }

    def __str__(self) -> str:
        where = (
            f"{self.patient_id} v{self.version}" if self.version is not None else self.patient_id
        )
        return f"{where}: [{self.check}] {self.message}"


@attrs.define(kw_only=True)
class StreamHead:
    notification_id: int
    patient_id: str
    version: int
    head: str
    events: int
    hashes: dict[int, str] = attrs.Factory(dict)

    def line(self) -> str:
        return f"{self.notification_id}:{self.patient_id}:{self.version}:{self.head}\n"


@attrs.frozen(kw_only=True)
class SnapshotState:
    """A stored snapshot, decoded (``error`` when it no longer decodes)."""

    version: int
    state: dict[str, Any] = attrs.Factory(dict)
    error: str | None = None


def decode_snapshots(log: EventLog, stream: str, rows: list[Row]) -> list[SnapshotState]:
    if not rows or not log.keeps_snapshots:
        return []
    decoded = []
    for version, topic, state in rows:
        try:
            stored = StoredEvent(
                originator_id=uuid.UUID(stream),
                originator_version=version,
                topic=topic,
                state=state if isinstance(state, bytes) else bytes(state, "utf-8"),
            )
            snapshot: Any = log.to_snapshot(stored)
            decoded.append(SnapshotState(version=version, state=dict(snapshot.state)))
        except Exception as exc:  # altered into something that no longer decodes
            decoded.append(SnapshotState(version=version, error=f"{type(exc).__name__}: {exc}"))
    return decoded


def _iso(value: Any) -> str | None:
    return value.isoformat() if isinstance(value, dt.datetime) else None


def _snapshot_problem(
    patient_id: str,
    snapshot: SnapshotState,
    record: PatientRecord,
    head: LoggedEvent,
    first: LoggedEvent,
    idempotency: dict[str, list[Any]],
) -> Problem | None:
    """How a stored snapshot differs from the state replayed from the log at its version."""
    where = f"the stored snapshot at v{snapshot.version}"
    if snapshot.error is not None:
        return Problem(
            patient_id=patient_id,
            version=snapshot.version,
            check="snapshot",
            message=f"{where} cannot be decoded ({snapshot.error}): it was altered in the database",
        )
    state = snapshot.state
    if snapshot_rules(state) != REPLAY_RULES:  # not used by the service: nothing it could change
        return None
    differs: list[str] = []
    stored = state.get("record")
    stored_json = stored.to_json() if isinstance(stored, PatientRecord) else {}
    replayed = record.to_json()
    fields = sorted(
        k for k in set(stored_json) | set(replayed) if stored_json.get(k) != replayed.get(k)
    )
    if fields:
        differs.append("record (" + ", ".join(fields) + ")")
    if state.get("chain_head") != head.hash:
        differs.append("chain head")
    if state.get("idempotency") != idempotency:
        differs.append("idempotency keys")
    if _iso(state.get("_modified_on")) != head.recorded_at:
        differs.append("last record time")
    if _iso(state.get("_created_on")) != first.recorded_at:
        differs.append("registration time")
    if not differs:
        return None
    return Problem(
        patient_id=patient_id,
        version=snapshot.version,
        check="snapshot",
        message=f"{where} differs from the log replayed to v{snapshot.version} in: "
        + "; ".join(differs)
        + " (the snapshot was altered: the service would show the altered state)",
    )


@attrs.define(kw_only=True)
class VerifyReport:
    streams: int = 0
    events: int = 0
    snapshots: int = 0
    rows: int | None = None
    log_digest: str = ""
    problems: list[Problem] = attrs.Factory(list)
    sealed: dict[str, Any] | None = None
    replayed: bool = True
    #: The log position checked: every row at or below this notification id (the log's
    #: high-water mark when the check started); rows recorded after it are left for the next one.
    up_to: int = 0
    #: Stored snapshots of events after ``up_to`` (taken later): not checked by this run.
    later_snapshots: int = 0
    #: Stored snapshots taken under older replay rules: not used by the service, not compared
    #: (``snapshots`` counts those compared).
    older_snapshots: int = 0

    @property
    def ok(self) -> bool:
        return not self.problems

    def to_json(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "streams": self.streams,
            "events": self.events,
            "snapshots": self.snapshots,
            "older_snapshots": self.older_snapshots,
            "rows_in_store": self.rows,
            "verified_up_to_notification": self.up_to,
            "log_digest": self.log_digest,
            "seal": self.sealed,
            "problems": [p.to_json() for p in self.problems],
        }


def check_stream(
    patient_id: str,
    events: list[LoggedEvent],
    *,
    replay: bool = True,
    stream: str | None = None,
    snapshots: Sequence[SnapshotState] = (),
    stream_of: Callable[[str], uuid.UUID] = stream_id,
) -> list[Problem]:
    """The first broken link of one stream (and any bad signature or snapshot); empty when
    intact. ``stream``: the stored stream id, checked against the patient id. ``snapshots``: the
    stream's stored snapshots, each compared with the replayed state at its version (needs
    ``replay``). ``stream_of``: the store's stream id of a patient (``EventLog.stream_id``:
    keyed on an encrypted store)."""
    problems: list[Problem] = []
    # Only a registration that decodes names a patient (otherwise the loop below names the row).
    registered = any(
        e.version == 1 and e.kind == REGISTERED and UNDECODABLE not in e.data for e in events
    )
    if stream is not None and registered and str(stream_of(patient_id)) != stream:
        problems.append(
            Problem(
                patient_id=patient_id,
                version=1,
                check="registration",
                message=f"stream {stream} is registered as {patient_id}, whose stream id is "
                f"{stream_of(patient_id)}: the registration row was modified",
            )
        )
        return problems
    renumbered = (
        []
        if all(type(e.version) is int for e in events)  # as stored: none (is_version)
        else [e for e in events if not is_version(e.version)]
    )
    if renumbered:
        numbers = {e.version for e in events if is_version(e.version)}
        gaps = [v for v in range(1, max(numbers, default=0) + 1) if v not in numbers]
        problems.append(
            Problem(
                patient_id=patient_id,
                version=gaps[0] if gaps else None,
                check="sequence",
                message=f"a stored row has the version {renumbered[0].version!r}, not a whole "
                "number"
                + (f" (v{gaps[0]} is missing)" if gaps else "")
                + ": it was renumbered in the database",
            )
        )
        return problems
    if events and events[0].version < 1:
        e = events[0]
        problems.append(
            Problem(
                patient_id=patient_id,
                version=e.version,
                check="sequence",
                message=f"a {e.type} row is stored at v{e.version}, before the registration "
                "(v1): it was inserted in the database",
            )
        )
        return problems
    pending = {s.version: s for s in snapshots} if replay else {}
    idempotency: dict[str, list[Any]] = {}
    expected_prev = genesis_hash(patient_id)
    previous: LoggedEvent | None = None
    hashes: dict[int, str] = {}
    replayer = Replayer(patient_id) if replay else None
    for index, e in enumerate(events, start=1):
        if UNDECODABLE in e.data:
            problems.append(
                Problem(
                    patient_id=patient_id,
                    version=e.version,
                    check="decode",
                    message=f"the stored row cannot be decoded ({e.data[UNDECODABLE]}): "
                    "it was altered in the database",
                )
            )
            return problems
        if index == 1 and e.kind != REGISTERED:
            problems.append(
                Problem(
                    patient_id=patient_id,
                    version=e.version,
                    check="registration",
                    message="the stream does not start with its registration",
                )
            )
            return problems
        if e.version != index:
            missing = f"v{index}" if e.version == index + 1 else f"v{index}..v{e.version - 1}"
            problems.append(
                Problem(
                    patient_id=patient_id,
                    version=index,
                    check="sequence",
                    message=f"{missing} missing: the stream jumps from v{index - 1} to "
                    f"v{e.version} (a row was deleted or renumbered)",
                )
            )
            return problems
        if e.data.get("prev_hash") != expected_prev:
            if previous is None:
                msg = (
                    "the registration's content does not match this patient's genesis hash "
                    "(the row was modified or forged)"
                )
                broken = e.version
            else:
                msg = (
                    f"v{e.version} records the hash of v{previous.version} as "
                    f"{str(e.get('prev_hash'))[:12]}..., but v{previous.version} now hashes to "
                    f"{previous.hash[:12]}...: v{previous.version} was modified, replaced, "
                    f"reordered or inserted (or v{e.version}'s link was altered)"
                )
                broken = previous.version
            problems.append(
                Problem(patient_id=patient_id, version=broken, check="chain", message=msg)
            )
            return problems
        if previous is not None and e.recorded_at < previous.recorded_at:
            problems.append(
                Problem(
                    patient_id=patient_id,
                    version=e.version,
                    check="record_time",
                    message=f"recorded at {e.recorded_at}, before v{previous.version} "
                    f"({previous.recorded_at}): the record clock went backwards",
                )
            )
            return problems
        if e.kind == SIGNED:
            signs = e.get("signs_version")
            if hashes.get(signs) != e.get("signed_hash"):
                problems.append(
                    Problem(
                        patient_id=patient_id,
                        version=e.version,
                        check="signature",
                        message=f"the signature's hash does not match v{signs} as stored",
                    )
                )
        if replayer is not None:
            try:
                replayer.apply(e)
            except UnreadableEventError as exc:  # a history the record cannot be rebuilt from
                problems.append(
                    Problem(
                        patient_id=patient_id, version=e.version, check="replay", message=exc.detail
                    )
                )
                return problems
            if pending:
                key = e.get("idempotency_key")
                if key is not None:
                    idempotency[key] = [e.get("digest"), e.version]
                snapshot = pending.pop(e.version, None)
                if snapshot is not None:
                    problem = _snapshot_problem(
                        patient_id, snapshot, replayer.record, e, events[0], idempotency
                    )
                    if problem is not None:
                        problems.append(problem)
        hashes[e.version] = e.hash
        expected_prev = e.hash
        previous = e
    for snapshot in pending.values():
        problems.append(
            Problem(
                patient_id=patient_id,
                version=snapshot.version,
                check="snapshot",
                message=f"a snapshot is stored at v{snapshot.version} but the stream ends at "
                f"v{previous.version if previous else 0} (forged, or its events were deleted)",
            )
        )
    return problems


def _snapshots_up_to(log: EventLog, read: StreamRead) -> tuple[list[Row], int]:
    """The stream's stored snapshots within the checked part of the log, and how many were left
    out. A snapshot beyond the stream's last checked event is left out when the stream now
    reaches its version (it was taken after the mark); otherwise it stays, and the check reports
    it as beyond the end of the stream."""
    head = read.events[-1].version if read.events else 0
    rows = [row for row in read.snapshots if row[0] <= head]
    later = [row for row in read.snapshots if row[0] > head]
    if not later:
        return rows, 0
    latest = log.stream(uuid.UUID(read.stream), desc=True, limit=1)
    live = latest[0].originator_version if latest else 0
    beyond = [row for row in later if row[0] > live]
    return rows + beyond, len(later) - len(beyond)


def heads(
    log: EventLog, report: VerifyReport | None = None, *, up_to: int | None = None
) -> Iterator[StreamHead]:
    """Every stream's head, in registration order, checking each stream on the way (and its
    stored snapshots, when the report replays). ``up_to``: only the log at or below that
    notification id (streams registered up to it, their events up to it)."""
    with_snapshots = report is not None and report.replayed
    for read in scan(log, snapshots=with_snapshots, up_to=up_to):
        pid, events = read.patient_id, read.events
        if report is not None:
            snapshot_rows, later = (
                (read.snapshots, 0) if up_to is None else _snapshots_up_to(log, read)
            )
            report.later_snapshots += later
            snapshots = decode_snapshots(log, read.stream, snapshot_rows)
            report.streams += 1
            report.events += len(events)
            older = sum(
                1 for s in snapshots if s.error is None and snapshot_rules(s.state) != REPLAY_RULES
            )
            report.older_snapshots += older
            report.snapshots += len(snapshots) - older
            report.problems.extend(
                check_stream(
                    pid,
                    events,
                    replay=report.replayed,
                    stream=read.stream,
                    snapshots=snapshots,
                    stream_of=log.stream_id,
                )
            )
        nid = read.notification_id
        # The head is the last row of a version number (a row renumbered to text sorts last
        # in SQLite; the check above names it).
        numbered = (
            events
            if all(type(e.version) is int for e in events)  # as stored: every one (is_version)
            else [e for e in events if is_version(e.version)]
        )
        last = numbered[-1] if numbered else None
        yield StreamHead(
            notification_id=nid,
            patient_id=pid,
            version=last.version if last else 0,
            head=last.hash if last else "",
            events=len(events),
            hashes={e.version: e.hash for e in numbered},
        )


def _orphans(log: EventLog, up_to: int | None = None) -> list[Problem]:
    """Rows of streams that have no registration (failure path only: holds a set of streams),
    among the rows at or below notification ``up_to``."""
    registered = {str(log.stream_id(pid)) for _nid, pid in registrations(log, up_to)}
    decode = Decoder(log)
    found: dict[str, list[int]] = {}
    for page in log.pages(0, page=PAGE, up_to=up_to):
        for n in page:
            sid = decode(n).stream
            if sid not in registered:
                found.setdefault(sid, []).append(n.originator_version)
    return [
        Problem(
            patient_id=f"stream {sid}",
            version=min(versions),
            check="registration",
            message=f"{len(versions)} stored event(s) (v{min(versions)}..v{max(versions)}) belong "
            "to no registered patient: the registration row was deleted, or the rows were inserted",
        )
        for sid, versions in found.items()
    ]


def verify(
    log: EventLog,
    seal: IO[str] | None = None,
    *,
    replay: bool = True,
    up_to: int | None = None,
) -> VerifyReport:
    """Check every stream, the whole log, and (optionally) a seal written earlier.

    A live store can be verified: the check covers the log up to its high-water mark when it
    starts (``report.up_to``), a consistent prefix; events recorded meanwhile are not problems,
    they are checked by the next run. ``up_to``: check only the log up to that earlier
    notification id instead (e.g. to recompute the digest a report or seal gave for it)."""
    require_readable(log)
    sealed = _read_seal(seal) if seal is not None else None
    report = VerifyReport(replayed=replay)
    digest = hashlib.sha256()
    # Counted before the mark is taken: every snapshot counted is then of an event at or below
    # the mark (a snapshot is taken after its event is committed), so the scan accounts for it.
    stored_snapshots = log.count_snapshots() if replay else None
    mark = high_water_mark(log)
    up_to = report.up_to = mark if up_to is None else max(0, min(up_to, mark))
    summary: dict[str, Any] | None = None
    sealed_iter: Iterator[dict[str, Any]] | None = None
    pending: dict[str, Any] | None = None
    if sealed is not None:
        summary, sealed_iter = sealed
        pending = next(sealed_iter, None)
    for head in heads(log, report, up_to=up_to):
        digest.update(head.line().encode())
        if sealed_iter is None or summary is None:
            continue
        while pending is not None and pending["notification_id"] < head.notification_id:
            report.problems.append(_missing(pending))
            pending = next(sealed_iter, None)
        if pending is not None and pending["notification_id"] == head.notification_id:
            problem = _compare(pending, head)
            if problem is not None:
                report.problems.append(problem)
            pending = next(sealed_iter, None)
        elif head.notification_id <= summary["max_notification_id"]:
            report.problems.append(
                Problem(
                    patient_id=head.patient_id,
                    version=1,
                    check="seal",
                    message="this patient's registration sits inside the sealed part of the log "
                    "but is not in the seal: it was inserted after sealing",
                )
            )
    if sealed_iter is not None:
        while pending is not None:
            if pending["notification_id"] <= up_to:  # beyond the mark: not verified this time
                report.problems.append(_missing(pending))
            pending = next(sealed_iter, None)
        report.sealed = summary
    report.log_digest = digest.hexdigest()
    report.rows = count_events(log, up_to)
    # Live, every snapshot counted is of a registered stream's event at or below the mark. At an
    # earlier position the count also holds snapshots of later streams and events: not compared.
    if up_to < mark:
        stored_snapshots = None
    accounted = report.snapshots + report.older_snapshots
    if stored_snapshots is not None and stored_snapshots > accounted:
        report.problems.append(
            Problem(
                patient_id="(snapshots)",
                version=None,
                check="snapshot",
                message=f"the store holds {stored_snapshots} snapshots but the registered "
                f"streams account for {accounted}: snapshots of unregistered "
                "streams were inserted (or their registrations deleted)",
            )
        )
    if report.rows is not None and report.rows != report.events:
        report.problems.extend(_orphans(log, up_to))
        if report.rows > report.events and not any(
            p.check == "registration" for p in report.problems
        ):
            report.problems.append(
                Problem(
                    patient_id="(log)",
                    version=None,
                    check="registration",
                    message=f"the store holds {report.rows} events up to notification {up_to} "
                    f"but the registered streams account for {report.events}",
                )
            )
    # A deletion that left no other trace (a whole patient, a stream's last events): the gap in
    # SQLite's ids names it. (A deletion already named, e.g. a missing version, is not repeated.)
    if log.gapless_ids and report.rows is not None and report.rows < up_to and not report.problems:
        report.problems.extend(_gaps(log, up_to))
    return report


def _gaps(log: EventLog, up_to: int) -> list[Problem]:
    """SQLite gives notification ids without gaps (a rolled-back insert takes none): a gap is a
    deleted row, even one no seal or checkpoint covers yet. (PostgreSQL's sequence may skip ids:
    not checked there.) Read only when the count of rows says some are missing."""
    problems: list[Problem] = []
    decode = Decoder(log)
    expected = 1
    for page in log.pages(0, page=PAGE, up_to=up_to):
        for n in page:
            if n.id > expected:
                missing = (
                    f"notification {expected}"
                    if n.id == expected + 1
                    else f"notifications {expected}..{n.id - 1}"
                )
                pid = decode(n).get("patient_id") if n.originator_version == 1 else None
                if not isinstance(pid, str):
                    pid = _patient_of(log, n.originator_id)
                problems.append(
                    Problem(
                        patient_id="(log)",
                        version=None,
                        check="gap",
                        message=f"{missing} missing before {pid} v{n.originator_version} "
                        f"(notification {n.id}): SQLite numbers rows without gaps, so rows "
                        "were deleted there",
                    )
                )
                if len(problems) >= MAX_GAPS:
                    return problems
            expected = n.id + 1
    return problems


#: At most this many gaps are named (the first ones).
MAX_GAPS = 20


def _patient_of(log: EventLog, stream: Any) -> str:
    try:
        first = log.stream(stream, lte=1)
    except Exception:
        first = []
    pid = Decoder(log)(first[0]).get("patient_id") if first else None
    return pid if isinstance(pid, str) else f"stream {stream}"


def _missing(sealed: dict[str, Any]) -> Problem:
    return Problem(
        patient_id=sealed["patient_id"],
        version=1,
        check="seal",
        message=f"sealed with {sealed['version']} event(s) but its registration is gone from "
        "the log (the stream's rows were deleted)",
    )


def _compare(sealed: dict[str, Any], head: StreamHead) -> Problem | None:
    pid = sealed["patient_id"]
    if pid != head.patient_id:
        return Problem(
            patient_id=head.patient_id,
            version=1,
            check="seal",
            message=f"the registration sealed for {pid} now names {head.patient_id}",
        )
    version = int(sealed["version"])
    if head.version < version:
        return Problem(
            patient_id=pid,
            version=head.version + 1,
            check="seal",
            message=f"sealed at v{version} but the stream now ends at v{head.version}: "
            + (
                f"v{version} was deleted"
                if head.version + 1 == version
                else f"v{head.version + 1}..v{version} were deleted"
            ),
        )
    current = head.hashes.get(version)
    if current is None:  # that version is gone: the chain check names it
        return None
    if current != sealed["head"]:
        return Problem(
            patient_id=pid,
            version=version,
            check="seal",
            message=f"v{version} was sealed with hash {sealed['head'][:12]}... and now hashes to "
            f"{current[:12]}...: it was modified after sealing",
        )
    return None


def seal(log: EventLog, out: IO[str], *, now: dt.datetime | None = None) -> VerifyReport:
    """Write every stream's head and the log digest (JSON Lines); verifies on the way. Seals
    the log up to its high-water mark when it starts (a live store can be sealed)."""
    require_readable(log)
    report = VerifyReport(replayed=False)
    up_to = report.up_to = high_water_mark(log)
    digest = hashlib.sha256()
    max_nid = 0
    for head in heads(log, report, up_to=up_to):
        digest.update(head.line().encode())
        max_nid = max(max_nid, head.notification_id)
        out.write(
            json.dumps(
                {
                    "notification_id": head.notification_id,
                    "patient_id": head.patient_id,
                    "version": head.version,
                    "head": head.head,
                },
                separators=(",", ":"),
            )
            + "\n"
        )
    report.log_digest = digest.hexdigest()
    report.rows = count_events(log, up_to)
    stamp = (now or dt.datetime.now(dt.UTC)).isoformat()
    summary = {
        "seal": SEAL_FORMAT,
        "sealed_at": stamp,
        "streams": report.streams,
        "events": report.events,
        "max_notification_id": max_nid,
        "up_to_notification": up_to,
        "log_digest": report.log_digest,
        "problems_at_sealing": len(report.problems),
    }
    out.write(json.dumps(summary, separators=(",", ":")) + "\n")
    report.sealed = summary
    return report


_HEAD_FIELDS: dict[str, type] = {
    "notification_id": int,
    "patient_id": str,
    "version": int,
    "head": str,
}
_SUMMARY_FIELDS: dict[str, type] = {
    "streams": int,
    "max_notification_id": int,
    "log_digest": str,
}


def _seal_items(lines: Iterator[str]) -> Iterator[tuple[int, dict[str, Any]]]:
    """(line number, item) of every non-blank line: a stream head or the summary, each checked
    for the fields (and their types) ``verify`` reads."""
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            item = json.loads(line)
        except json.JSONDecodeError as exc:
            raise SealFormatError(f"seal line {number}: not JSON ({exc.msg})") from None
        if isinstance(item, dict) and "seal" in item:
            fields = _SUMMARY_FIELDS
        elif isinstance(item, dict) and set(_HEAD_FIELDS) <= set(item):
            fields = _HEAD_FIELDS
        else:
            raise SealFormatError(f"seal line {number}: expected a stream head or the seal summary")
        for name, kind in fields.items():
            value = item.get(name)
            if not isinstance(value, kind) or isinstance(value, bool):
                raise SealFormatError(
                    f"seal line {number}: {name} is {value!r}, not a {kind.__name__}"
                )
        yield number, item


def _check_seal(lines: Iterator[str]) -> dict[str, Any]:
    """The seal's summary, once the whole file was checked to be a complete seal: stream heads
    in log order, then the summary line ``seal`` writes last, whose stream count and digest the
    heads reproduce. A seal cut short, missing a line or altered is bad input
    (:class:`SealFormatError`), never evidence about the log."""
    summary: dict[str, Any] | None = None
    count = 0
    last_nid = 0
    digest = hashlib.sha256()
    for number, item in _seal_items(lines):
        if summary is not None:
            raise SealFormatError(
                f"seal line {number}: the seal file goes on after its summary line "
                "(the last line `audit seal` writes)"
            )
        if "seal" in item:
            summary = item
            continue
        if item["notification_id"] <= last_nid:
            raise SealFormatError(
                f"seal line {number}: stream heads out of log order "
                f"(notification {item['notification_id']} after {last_nid})"
            )
        last_nid = item["notification_id"]
        count += 1
        digest.update(
            f"{item['notification_id']}:{item['patient_id']}:{item['version']}:{item['head']}\n".encode()
        )
    if summary is None:
        raise SealFormatError(
            "the seal file is incomplete: "
            + (
                "it is empty"
                if count == 0
                else f"it ends after {count} stream head(s) without its summary line (the last "
                "line `audit seal` writes): it was cut short"
            )
        )
    if summary["streams"] != count:
        raise SealFormatError(
            f"the seal file is incomplete: its summary counts {summary['streams']} stream(s) but "
            f"it holds {count} stream head(s)"
        )
    if summary["log_digest"] != digest.hexdigest():
        raise SealFormatError(
            "the seal file was altered: its stream heads do not give the log digest its summary "
            "line records"
        )
    return summary


def _read_seal(fh: IO[str]) -> tuple[dict[str, Any], Iterator[dict[str, Any]]]:
    """Check the whole seal file first (:func:`_check_seal`), then its stream heads in order
    (read again from the file when it can seek; else held)."""
    if fh.seekable():
        start = fh.tell()
        summary = _check_seal(iter(fh))
        fh.seek(start)
        lines: Iterator[str] = iter(fh)
    else:
        held = fh.readlines()
        summary = _check_seal(iter(held))
        lines = iter(held)
    return summary, (item for _n, item in _seal_items(lines) if "seal" not in item)


class SealFormatError(ValueError):
    pass
