"""The monitors' views: catch up from the notification log, answer queries, wait for a position.

Processing is exactly-once and resumable: each batch of notifications is applied to the view
tables and the tracking position is advanced **in the same transaction**. A batch is read,
decoded and evolved into the touched patients' records before the write lock is taken; under the
lock the position is checked again (a runner that lost the race drops what it evolved and reads
again), so two runners (a follower process and a query's own catch-up) never apply a
notification twice.
A runner killed mid-batch leaves no trace of that batch: the next one starts from the position.
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

from ..bulk import bulk_gc
from ..errors import CartCourseError, CipherKeyError, StoreError
from ..protocol.record import PatientRecord
from ..service import store_errors
from ..storage import CourseApplication, StoreSettings, parse_store_url
from .decode import EventDecoder
from .projection import (
    BOARD_COLUMNS,
    DEVIATION_COLUMNS,
    TOXICITY_COLUMNS,
    apply_event,
    board_row,
    cohort_keys,
    cohort_keys_of,
    deviation_rows,
    toxicity_rows,
)
from .store import TRACKING, VIEW_TABLES, ViewDB

DEFAULT_BATCH = 5000
_IN_CHUNK = 500


class ViewsTimeoutError(CartCourseError):
    """Read-your-writes gave up: the views did not reach the asked position in time."""

    code = "views_timeout"
    http_status = 504
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


class _Touched:
    """A patient changed by the batch: the record and what its rows were before."""

    __slots__ = (
        "cohort_before",
        "deviations_before",
        "position",
        "record",
        "recorded_at",
        "stream_id",
        "tox_dirty",
    )

    def __init__(self, stream_id: str, record: PatientRecord | None) -> None:
        self.stream_id = stream_id
        self.record = record
        #: record time (``timestamp``) of the patient's last event in the batch
        self.recorded_at: dt.datetime | None = None
        self.position = 0
        self.tox_dirty = False
        if record is None:
            self.cohort_before: list[tuple[str, str]] = []
            self.deviations_before: tuple[int, int] = (0, 0)
        else:
            self.cohort_before = cohort_keys_of(record)
            self.deviations_before = (id(record.deviations), len(record.deviations))


_TOXICITY_TRIGGERS = frozenset({"report_toxicity", "resolve_toxicity"})


class Views:
    """The read models of one store, fed from its application's notification log."""

    def __init__(
        self,
        app: CourseApplication,
        store: StoreSettings,
        *,
        batch_size: int = DEFAULT_BATCH,
        db: ViewDB | None = None,
        cache_size: int = 50_000,
    ) -> None:
        self.app = app
        # The views hold what the events say: a process that cannot read the events (another
        # key or compression setting) reads no views either (one row read).
        with store_errors("the store"):
            problem = app.settings_mismatch()
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
        self.in_memory = db is None and store.kind != "memory" and app.mapper.cipher is not None
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
        self._decode = EventDecoder(app.mapper)
        self._lock = threading.RLock()
        #: Test hook: called after the batch is evolved, before the write lock is taken.
        self.before_lock: Callable[[], None] | None = None
        #: Test hook: called inside the transaction after the rows are written, before commit.
        self.before_commit: Callable[[], None] | None = None

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
        with store_errors("the store"):
            return int(self.app.recorder.max_notification_id() or 0)

    def lag(self, now: dt.datetime | None = None) -> dict[str, Any]:
        """How far behind the log the views are, in events and in seconds of record time."""
        position, last_recorded, updated_at = self.db.tracking()
        head = self.log_position()
        seconds = 0.0
        if head > position:
            with store_errors("the store"):
                first = self.app.recorder.select_notifications(
                    start=position, limit=1, inclusive_of_start=False
                )
                first_event: Any = self.app.mapper.to_domain_event(first[0]) if first else None
            if first_event is not None:
                waiting_since = first_event.timestamp
                seconds = max(0.0, ((now or _now()) - waiting_since).total_seconds())
        return {
            "position": position,
            "log_position": head,
            "lag_events": max(0, head - position),
            "lag_seconds": round(seconds, 3),
            "last_event_recorded_at": last_recorded,
            "updated_at": updated_at,
        }

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
                notes = self.app.recorder.select_notifications(
                    start=start, limit=limit, inclusive_of_start=False
                )
                if not notes:
                    return 0
                touched: dict[Any, _Touched] = {}
                try:
                    recorded = self._evolve(notes, touched)
                    if self.before_lock is not None:
                        self.before_lock()
                    with self.db.transaction():
                        if self.db.tracking(lock=True)[0] != start:
                            raise _Moved
                        self._write(touched, notes[-1].id, recorded)
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
                return len(notes)
        raise RuntimeError("the views' position kept moving under this runner; try again")

    def _load(self, stream_ids: Sequence[str]) -> dict[str, PatientRecord]:
        """Each stream's record as of the view's position: from this runner's cache when its
        version matches the board's, else replayed from the store at the board's version."""
        found: dict[str, PatientRecord] = {}
        cache = self._cache
        for i in range(0, len(stream_ids), _IN_CHUNK):
            chunk = stream_ids[i : i + _IN_CHUNK]
            marks = ",".join("?" * len(chunk))
            for sid, version in self.db.fetchall(
                f"SELECT stream_id, version FROM view_board WHERE stream_id IN ({marks})", chunk
            ):
                cached = cache.get(sid)
                if cached is None or cached.version != version:
                    course: Any = self.app.repository.get(uuid.UUID(sid), version=version)
                    cached = course.record
                found[sid] = cached
        return found

    def _evolve(self, notes: Sequence[Any], touched: dict[Any, _Touched]) -> dt.datetime:
        """Decode the batch one notification at a time and evolve each touched patient's
        record; returns the record time of the last event."""
        # A stream whose first event here is not its first (version 1: Registered) was seen
        # before: its record is loaded as of the board.
        seen: set[Any] = set()
        earlier: list[str] = []
        for note in notes:
            oid = note.originator_id
            if oid not in seen:
                seen.add(oid)
                if note.originator_version != 1:
                    earlier.append(str(oid))
        loaded = self._load(earlier) if earlier else {}
        decode = self._decode
        event: Any = None
        for note in notes:
            event = decode(note)
            oid = event.originator_id
            t = touched.get(oid)
            if t is None:
                sid = str(oid)
                t = touched[oid] = _Touched(sid, loaded.get(sid))
            t.record = apply_event(t.record, event)
            t.recorded_at = event.timestamp
            t.position = note.id
            if getattr(event, "trigger", None) in _TOXICITY_TRIGGERS:
                t.tox_dirty = True
        stamp: dt.datetime = event.timestamp
        return stamp

    def _write(self, touched: dict[Any, _Touched], position: int, recorded: dt.datetime) -> None:
        db = self.db
        boards: list[tuple[Any, ...]] = []
        cohort_delta: dict[tuple[str, str], int] = {}
        tox_replace: list[str] = []
        tox_rows: list[tuple[Any, ...]] = []
        dev_replace: list[str] = []
        dev_rows: list[tuple[Any, ...]] = []
        for t in touched.values():
            record = t.record
            assert record is not None
            assert t.recorded_at is not None
            row = board_row(record, t.stream_id, t.recorded_at.isoformat(), t.position)
            boards.append(row)
            for key in t.cohort_before:
                cohort_delta[key] = cohort_delta.get(key, 0) - 1
            for key in cohort_keys(row):
                cohort_delta[key] = cohort_delta.get(key, 0) + 1
            if t.tox_dirty:
                tox_replace.append(record.patient_id)
                tox_rows.extend(toxicity_rows(record))
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
        db.execute(
            "UPDATE view_tracking SET position = ?, last_recorded_at = ?, updated_at = ? "
            "WHERE name = ?",
            (position, recorded.isoformat(), _now().isoformat(), TRACKING),
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
            self.db.execute(
                "UPDATE view_tracking SET position = 0, last_recorded_at = NULL, updated_at = NULL "
                "WHERE name = ?",
                (TRACKING,),
            )
        self._cache.clear()

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
        """Keep the views up to date until ``stop()``; yields each new position reached."""
        while not stop():
            n = self.process_batch()
            if n:
                position = self.position()
                if on_batch is not None:
                    on_batch(n, position)
                yield position
                continue
            time.sleep(interval)

    def dump(self) -> dict[str, list[tuple[Any, ...]]]:
        return self.db.dump()


class _Moved(Exception):
    """The tracking position moved between reading the batch and taking the lock."""
