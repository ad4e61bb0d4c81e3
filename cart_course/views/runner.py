"""The monitors' views: catch up from the notification log, answer queries, wait for a position.

Processing is exactly-once and resumable: each batch of notifications is applied to the view
tables and the tracking position is advanced **in the same transaction**. A batch is read,
decoded and evolved into the touched patients' records before the write lock is taken; under the
lock the position is checked again (a runner that lost the race drops what it evolved and reads
again), so two runners (a follower process and a query's own catch-up) never apply a
notification twice.
A runner killed mid-batch leaves no trace of that batch: the next one starts from the position.

A stored event the views cannot read (damaged bytes, an unknown type) or apply (its stream's
registration or an earlier version missing from the log) never stops the board: the event is
**skipped**, and so is every later event of its stream, since the patient's record cannot be
evolved past a gap. Each skipped event is written to ``view_skipped`` (position, stream, patient
when known, version, why) in the same transaction as the position, so the skip is exactly-once
and reported by every query (``queries.skipped_summary``, the ``views`` commands, the metrics);
the patient's board row stays as of the last event applied.
"""

from __future__ import annotations

import datetime as dt
import math
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from eventsourcing.persistence import PersistenceError

from ..bulk import bulk_gc
from ..course import PatientCourse
from ..errors import CartCourseError, CipherKeyError, StoreError
from ..eventlog import EventLog, store_errors
from ..protocol.record import PatientRecord
from ..storage import StoreSettings, parse_store_url
from .projection import (
    BOARD_COLUMNS,
    DEVIATION_COLUMNS,
    QUERY_COLUMNS,
    TOXICITY_COLUMNS,
    apply_event,
    board_row,
    cohort_keys,
    cohort_keys_of,
    deviation_rows,
    query_rows,
    toxicity_rows,
)
from .store import TRACKING, VIEW_TABLES, ViewDB

DEFAULT_BATCH = 5000
_IN_CHUNK = 500


class ViewsDifferError(CartCourseError):
    """A check (``views verify``, ``audit verify``) found view rows that differ from the log."""

    code = "views_differ"
    title = "The views differ from the log"

    def __init__(self, patients: list[str], found_at: str) -> None:
        self.patients = patients
        shown = ", ".join(patients[:20]) + (
            f" and {len(patients) - 20} more" if len(patients) > 20 else ""
        )
        super().__init__(
            f"the read model's rows of {shown} differ from the log (found by a check at "
            f"{found_at}); not served until rebuilt: run 'cart-course views rebuild'"
        )


class ViewsTimeoutError(CartCourseError):
    """Read-your-writes gave up: the views did not reach the asked position in time."""

    code = "views_timeout"
    title = "Views not up to date"

    def __init__(self, position: int, reached: int, timeout: float) -> None:
        super().__init__(
            f"the views reached position {reached}, not {position}, within {timeout:g} s "
            "(is `cart-course views follow` running? or query without --no-catch-up)"
        )
        self.position = position
        self.reached = reached


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _why(exc: BaseException) -> str:
    """One line about an exception (bounded: the views store it)."""
    text = f"{type(exc).__name__}: {exc}".strip().rstrip(":")
    text = " ".join(text.split())
    return text if len(text) <= 300 else text[:297] + "..."


def _gap(record: PatientRecord | None, event: Any) -> str | None:
    """Why ``event`` cannot follow ``record`` in its stream (None: it can)."""
    version = event.originator_version
    if record is None:
        if version != 1:
            return (
                f"v{version} ({type(event).__name__}) of a stream whose registration (v1) is "
                "not in the log or does not read"
            )
        return None
    if isinstance(event, PatientCourse.Registered):
        return f"a second registration (v{version}) of patient {record.patient_id}"
    if version != record.version + 1:
        return (
            f"v{version} ({type(event).__name__}) follows v{record.version}: "
            f"{'v' + str(record.version + 1) + ' is' if version > record.version + 1 else 'versions are'}"
            f"{' missing from the log' if version > record.version + 1 else ' out of order'}"
        )
    return None


#: A skipped event: (position, stream id, patient id or None, version, topic, reason).
Skip = tuple[int, str, str | None, int, str, str]


class _Touched:
    """A patient changed by the batch: the record and what its rows were before."""

    __slots__ = (
        "cohort_before",
        "deviations_before",
        "position",
        "queries_dirty",
        "record",
        "recorded_at",
        "stream_id",
        "tox_dirty",
    )

    def __init__(self, stream_id: str, record: PatientRecord | None) -> None:
        self.stream_id = stream_id
        self.record = record
        #: record time (``timestamp``) of the patient's last event applied in the batch (None:
        #: none applied, the row is left as it is)
        self.recorded_at: dt.datetime | None = None
        self.position = 0
        self.tox_dirty = False
        self.queries_dirty = False
        if record is None:
            self.cohort_before: list[tuple[str, str]] = []
            self.deviations_before: tuple[int, int] = (0, 0)
        else:
            self.cohort_before = cohort_keys_of(record)
            self.deviations_before = (id(record.deviations), len(record.deviations))


#: Moves that change the toxicity rows (issue 16: a death may close an episode at grade 5).
_TOXICITY_TRIGGERS = frozenset({"report_toxicity", "resolve_toxicity", "record_death"})


class Views:
    """The read models of one store, fed from its notification log (read through its
    :class:`~cart_course.eventlog.EventLog`)."""

    def __init__(
        self,
        log: EventLog,
        store: StoreSettings,
        *,
        batch_size: int = DEFAULT_BATCH,
        db: ViewDB | None = None,
        cache_size: int = 50_000,
    ) -> None:
        self.log = log
        # The views hold what the events say: a process that cannot read the events (another
        # key or compression setting) reads no views either (one row read).
        with store_errors("the store"):
            problem = log.settings_mismatch()
            if problem is not None and self._first_event_alone_unreadable(log):
                problem = None  # one damaged row, not the key: skipped and reported
        if problem is not None:
            raise CipherKeyError(
                f"cannot read the store: the stored events do not decrypt with this key "
                f"({problem}). CART_COURSE_CIPHER_KEY (and CART_COURSE_COMPRESS) must be the "
                "ones the store was written with"
            )
        #: An encrypted store keeps its views in this process's memory: the views' tables hold
        #: patient ids, states, dates, toxicity terms and deviation texts as plain columns, which
        #: must not sit next to the encrypted events. They are rebuilt from the (encrypted) log
        #: when the process starts and kept up to date as usual.
        self.in_memory = db is None and store.kind != "memory" and log.cipher is not None
        if db is None:
            try:
                db = ViewDB.open(parse_store_url("memory:") if self.in_memory else store)
            except Exception as exc:  # unreachable server, unwritable file ...
                raise StoreError(f"cannot open the views in {store.display}: {exc}") from None
        self.db = db
        self.batch_size = batch_size
        #: stream id -> record as of the view's committed position (valid while versions match).
        self._cache: OrderedDict[str, PatientRecord] = OrderedDict()
        self.cache_size = cache_size
        self._decode = log.decoder()
        self._lock = threading.RLock()
        #: What the last batch skipped (:data:`Skip` rows), for a follower to report.
        self.last_skipped: list[Skip] = []
        #: Test hook: called after the batch is evolved, before the write lock is taken.
        self.before_lock: Callable[[], None] | None = None
        #: Test hook: called inside the transaction after the rows are written, before commit.
        self.before_commit: Callable[[], None] | None = None

    @staticmethod
    def _first_event_alone_unreadable(log: EventLog, probe: int = 20) -> bool:
        """The store's first event does not read with this key, but later ones do (or the store
        is plain JSON like this process expects): a damaged row, which the views skip and
        report, not a wrong key or compression setting (that reads none)."""
        notes = log.notifications(0, probe + 1)
        for note in notes[1:]:
            try:
                log.to_event(note)
            except Exception:  # any failure: this one does not read either
                continue
            return True
        if len(notes) > 1 or not notes:
            return False
        return (
            log.cipher is None
            and log.compressor is None
            and bytes(notes[0].state)[:1] in (b"{", b"[")
        )

    def close(self) -> None:
        self.db.close()

    # ------------------------------------------------------------------------------------------
    # Positions
    # ------------------------------------------------------------------------------------------

    def position(self) -> int:
        """The id of the last notification the views have processed."""
        return self.db.tracking()[0]

    def log_position(self) -> int:
        """The id of the last notification in the log (cheap: ``max_notification_id``)."""
        return self.log.max_notification_id()

    def lag(self, clock: dt.datetime | None = None) -> dict[str, Any]:
        """How far behind the log the views are, in events and in seconds of record time.

        Measured on the real clock (``clock`` is for tests only): the lag is the age of the
        oldest waiting event, never judged "as of" the ``--now`` of a query. ``lag_seconds`` is
        None when none of the first waiting events reads (they will be skipped)."""
        position, last_recorded, updated_at = self.db.tracking()
        head = self.log_position()
        seconds: float | None = 0.0
        if head > position:
            waiting = self.log.notifications(position, 20)
            seconds = None
            for note in waiting:
                try:
                    event: Any = self._decode(note)
                except Exception:  # unreadable: the next one tells the age
                    continue
                waiting_since = event.timestamp
                seconds = max(0.0, ((clock or _now()) - waiting_since).total_seconds())
                break
        return {
            "position": position,
            "log_position": head,
            "lag_events": max(0, head - position),
            "lag_seconds": None if seconds is None else round(seconds, 3),
            "last_event_recorded_at": last_recorded,
            "updated_at": updated_at,
            "skipped_events": self.skipped_count(),
        }

    def skipped_count(self) -> int:
        """How many events of the log the views skipped (unreadable or unappliable)."""
        row = self.db.fetchone("SELECT COUNT(*) FROM view_skipped")
        return int(row[0]) if row else 0

    # ------------------------------------------------------------------------------------------
    # Catch-up
    # ------------------------------------------------------------------------------------------

    def catch_up(self, *, max_events: int | None = None) -> int:
        """Process every notification after the position (or up to ``max_events``), with the
        collector set for bulk work (``bulk.bulk_gc``: a rebuild is 12-20 % faster)."""
        done = 0
        with bulk_gc() as settle:
            while max_events is None or done < max_events:
                limit = (
                    self.batch_size
                    if max_events is None
                    else min(self.batch_size, max_events - done)
                )
                n = self.process_batch(limit)
                settle()
                if n == 0:
                    break
                done += n
        return done

    def wait_for(self, position: int, timeout: float = 5.0, *, pull: bool = True) -> int:
        """Return once the views have processed ``position`` (read-your-writes).

        With ``pull`` this process catches up itself; without, it waits for a follower.
        Raises :class:`ViewsTimeoutError` after ``timeout`` seconds (a finite number >= 0:
        anything else is a :class:`ValueError`, never a wait without end).
        """
        if not math.isfinite(timeout) or timeout < 0:
            raise ValueError(f"timeout must be a finite number of seconds >= 0, not {timeout!r}")
        deadline = time.monotonic() + timeout
        while True:
            processed = self.process_batch(self.batch_size) if pull else 0
            reached = self.position()
            if reached >= position:
                return reached
            if time.monotonic() >= deadline:
                raise ViewsTimeoutError(position, reached, timeout)
            if not processed:  # nothing new yet: wait a little rather than spin
                time.sleep(min(0.02, max(0.0, deadline - time.monotonic())))

    def process_batch(self, limit: int | None = None) -> int:
        """Apply one batch; returns how many notifications it covered (0: up to date).

        The batch is decoded and each touched patient's record evolved *before* the write lock
        is taken (from records as of the position read); under the lock the position is checked
        again and only then are the rows and the new position written, in one transaction.
        """
        limit = limit or self.batch_size
        with self._lock, store_errors("the store"):
            for _ in range(50):
                start = self.position()
                notes = self.log.notifications(start, limit)
                if not notes:
                    return 0
                touched: dict[Any, _Touched] = {}
                skips: list[Skip] = []
                try:
                    recorded = self._evolve(notes, touched, skips)
                    if self.before_lock is not None:
                        self.before_lock()
                    with self.db.transaction():
                        if self.db.tracking(lock=True)[0] != start:
                            raise _Moved
                        self._write(touched, notes[-1].id, recorded, skips)
                        if self.before_commit is not None:
                            self.before_commit()
                except BaseException as exc:
                    # The records of this batch are not the committed ones: forget them.
                    for t in touched.values():
                        self._cache.pop(t.stream_id, None)
                    if isinstance(exc, _Moved):
                        continue  # another runner processed these meanwhile: read again
                    raise
                cache = self._cache
                for t in touched.values():
                    if t.record is not None:
                        cache[t.stream_id] = t.record
                        cache.move_to_end(t.stream_id)
                while len(cache) > self.cache_size:
                    cache.popitem(last=False)
                self.last_skipped = skips
                return len(notes)
        raise RuntimeError("the views' position kept moving under this runner; try again")

    def _load(
        self, stream_ids: Sequence[str]
    ) -> tuple[dict[str, PatientRecord], dict[str, tuple[str, str]]]:
        """Each stream's record as of the view's position: from this runner's cache when its
        version matches the board's, else replayed from the store at the board's version.
        Also the streams whose record no longer replays: stream id -> (patient id, why)."""
        found: dict[str, PatientRecord] = {}
        broken: dict[str, tuple[str, str]] = {}
        cache = self._cache
        for i in range(0, len(stream_ids), _IN_CHUNK):
            chunk = stream_ids[i : i + _IN_CHUNK]
            marks = ",".join("?" * len(chunk))
            for sid, version, pid in self.db.fetchall(
                "SELECT stream_id, version, patient_id FROM view_board "
                f"WHERE stream_id IN ({marks})",
                chunk,
            ):
                cached = cache.get(sid)
                if cached is None or cached.version != version:
                    try:
                        course: Any = self.log.course(uuid.UUID(sid), version)
                    except PersistenceError:
                        raise  # the store, not the stream: the batch is retried
                    except Exception as exc:  # damaged history: skip the stream
                        broken[sid] = (
                            pid,
                            f"its history up to v{version} no longer reads ({_why(exc)})",
                        )
                        continue
                    cached = course.record
                    # as of the stream's version (a just registered aggregate's record says 0)
                    cached.version = version
                found[sid] = cached
        return found, broken

    def _patient_of(self, stream_id: str) -> str | None:
        row = self.db.fetchone("SELECT patient_id FROM view_board WHERE stream_id = ?", [stream_id])
        return None if row is None else str(row[0])

    def _repair(self, t: _Touched, version: int) -> str:
        """After an event failed half-way through evolving ``t.record``: the record as of
        ``version`` (the last event applied), replayed from the store; if even that fails, the
        board row stays as committed (returns what to add to the reason, then)."""
        self._cache.pop(t.stream_id, None)
        try:
            course: Any = self.log.course(uuid.UUID(t.stream_id), version)
        except PersistenceError:
            raise
        except Exception as exc:  # the row stays as committed; the skip is reported
            t.record = None
            return f"; its row stays as before this batch: v{version} does not replay ({_why(exc)})"
        t.record = course.record
        t.record.version = version
        t.tox_dirty = True
        t.queries_dirty = True
        return ""

    def _evolve(
        self, notes: Sequence[Any], touched: dict[Any, _Touched], skips: list[Skip]
    ) -> dt.datetime | None:
        """Decode the batch one notification at a time and evolve each touched patient's
        record; returns the record time of the last event read (None: none read). What does
        not read or apply is appended to ``skips`` with every later event of its stream."""
        quarantined: dict[str, int] = {
            str(sid): int(v)
            for sid, v in self.db.fetchall(
                "SELECT stream_id, MIN(version) FROM view_skipped GROUP BY stream_id"
            )
        }
        # A stream whose first event here is not its first (version 1: Registered) was seen
        # before: its record is loaded as of the board.
        seen: set[Any] = set()
        earlier: list[str] = []
        for note in notes:
            oid = note.originator_id
            if oid not in seen:
                seen.add(oid)
                if note.originator_version != 1 and str(oid) not in quarantined:
                    earlier.append(str(oid))
        loaded, broken = self._load(earlier) if earlier else ({}, {})
        decode = self._decode
        stamp: dt.datetime | None = None

        def skip(note: Any, sid: str, patient: str | None, reason: str) -> None:
            quarantined.setdefault(sid, note.originator_version)
            skips.append((note.id, sid, patient, note.originator_version, note.topic, reason))

        for note in notes:
            oid = note.originator_id
            sid = str(oid)
            t = touched.get(oid)
            patient = t.record.patient_id if t is not None and t.record is not None else None
            if sid in quarantined:
                first = quarantined[sid]
                skip(
                    note,
                    sid,
                    patient or self._patient_of(sid),
                    f"after v{first} of this stream, which the views skipped",
                )
                continue
            if sid in broken:
                pid, reason = broken[sid]
                skip(note, sid, pid, reason)
                continue
            try:
                event: Any = decode(note)
            except Exception as exc:  # any unreadable row is skipped, reported
                skip(
                    note,
                    sid,
                    patient or self._patient_of(sid),
                    f"the stored event does not read ({_why(exc)})",
                )
                continue
            if t is None:
                t = touched[oid] = _Touched(sid, loaded.get(sid))
            record = t.record
            problem = _gap(record, event)
            if problem is None:
                try:
                    t.record = apply_event(record, event)
                except Exception as exc:  # the event does not apply: skipped
                    problem = f"{type(event).__name__} does not apply ({_why(exc)})"
                    if record is not None:
                        problem += self._repair(t, record.version)
            if problem is not None:
                skip(
                    note,
                    sid,
                    record.patient_id if record is not None else self._patient_of(sid),
                    problem,
                )
                continue
            t.recorded_at = stamp = event.timestamp
            t.position = note.id
            if getattr(event, "trigger", None) in _TOXICITY_TRIGGERS:
                t.tox_dirty = True
            elif isinstance(event, PatientCourse.QueryEvent):
                t.queries_dirty = True
        return stamp

    def _write(
        self,
        touched: dict[Any, _Touched],
        position: int,
        recorded: dt.datetime | None,
        skips: Sequence[Skip] = (),
    ) -> None:
        db = self.db
        boards: list[tuple[Any, ...]] = []
        cohort_delta: dict[tuple[str, str], int] = {}
        tox_replace: list[str] = []
        tox_rows: list[tuple[Any, ...]] = []
        dev_replace: list[str] = []
        dev_rows: list[tuple[Any, ...]] = []
        query_replace: list[str] = []
        query_list: list[tuple[Any, ...]] = []
        for t in touched.values():
            record = t.record
            if record is None or t.recorded_at is None:
                continue  # nothing of this stream applied: its row (if any) stays as it is
            row = board_row(record, t.stream_id, t.recorded_at.isoformat(), t.position)
            boards.append(row)
            for key in t.cohort_before:
                cohort_delta[key] = cohort_delta.get(key, 0) - 1
            for key in cohort_keys(row):
                cohort_delta[key] = cohort_delta.get(key, 0) + 1
            if t.tox_dirty:
                tox_replace.append(record.patient_id)
                tox_rows.extend(toxicity_rows(record))
            if t.queries_dirty:
                query_replace.append(record.patient_id)
                query_list.extend(query_rows(record))
            if (id(record.deviations), len(record.deviations)) != t.deviations_before:
                dev_replace.append(record.patient_id)
                dev_rows.extend(deviation_rows(record))
        cols = ", ".join(BOARD_COLUMNS)
        marks = ", ".join("?" * len(BOARD_COLUMNS))
        updates = ", ".join(f"{c} = excluded.{c}" for c in BOARD_COLUMNS[1:])
        db.executemany(
            f"INSERT INTO view_board ({cols}) VALUES ({marks}) "
            f"ON CONFLICT (patient_id) DO UPDATE SET {updates}",
            boards,
        )
        for table, replace, rows, columns in (
            ("view_toxicity", tox_replace, tox_rows, TOXICITY_COLUMNS),
            ("view_deviation", dev_replace, dev_rows, DEVIATION_COLUMNS),
            ("view_query", query_replace, query_list, QUERY_COLUMNS),
        ):
            db.executemany(f"DELETE FROM {table} WHERE patient_id = ?", [(p,) for p in replace])
            db.executemany(
                f"INSERT INTO {table} ({', '.join(columns)}) VALUES ({', '.join('?' * len(columns))})",
                rows,
            )
        changed = [(d, k, n) for (d, k), n in sorted(cohort_delta.items()) if n]
        db.executemany(
            "INSERT INTO view_cohort (dimension, key, patients) VALUES (?, ?, ?) "
            "ON CONFLICT (dimension, key) DO UPDATE SET patients = view_cohort.patients + excluded.patients",
            changed,
        )
        if any(n < 0 for _, _, n in changed):
            db.execute("DELETE FROM view_cohort WHERE patients = 0")
        db.executemany(
            "INSERT INTO view_skipped (position, stream_id, patient_id, version, topic, reason) "
            "VALUES (?, ?, ?, ?, ?, ?)",
            list(skips),
        )
        db.execute(
            "UPDATE view_tracking SET position = ?, "
            "last_recorded_at = COALESCE(?, last_recorded_at), updated_at = ? WHERE name = ?",
            (
                position,
                recorded.isoformat() if recorded is not None else None,
                _now().isoformat(),
                TRACKING,
            ),
        )

    # ------------------------------------------------------------------------------------------
    # Rebuild and follow
    # ------------------------------------------------------------------------------------------

    def reset(self) -> None:
        """Empty every view and rewind the position to the start of the log."""
        with self.db.transaction():
            self.db.tracking(lock=True)
            for table in VIEW_TABLES:
                self.db.execute(f"DELETE FROM {table}")
            self.db.execute("DELETE FROM view_differs")  # recomputed from the log: agree again
            self.db.execute(
                "UPDATE view_tracking SET position = 0, last_recorded_at = NULL, updated_at = NULL "
                "WHERE name = ?",
                (TRACKING,),
            )
        self._cache.clear()

    def check_not_differing(self) -> None:
        """Refuse (:class:`ViewsDifferError`, 503) while a check found rows that differ from
        the log: the board never serves them silently."""
        found = self.db.differing()
        if found:
            raise ViewsDifferError([pid for pid, _, _ in found], found[0][1])

    def rebuild(self) -> int:
        """Recompute every view from the whole log; returns the number of events processed."""
        self.reset()
        return self.catch_up()

    def follow(
        self,
        *,
        interval: float = 0.5,
        stop: Callable[[], bool] = lambda: False,
        on_batch: Callable[[int, int], None] | None = None,
    ) -> Iterator[int]:
        """Keep the views up to date until ``stop()``; yields each new position reached.

        Idle, it waits for the next event up to ``interval`` seconds: where the store pushes new
        events (PostgreSQL, memory: eventsourcing's ``subscribe``) it wakes as soon as one is
        recorded; SQLite is polled every ``interval``."""
        while not stop():
            n = self.process_batch()
            if n:
                position = self.position()
                if on_batch is not None:
                    on_batch(n, position)
                yield position
                continue
            self.log.wait_beyond(self.position(), interval)

    def dump(self) -> dict[str, list[tuple[Any, ...]]]:
        return self.db.dump()


class _Moved(Exception):
    """The tracking position moved between reading the batch and taking the lock."""
