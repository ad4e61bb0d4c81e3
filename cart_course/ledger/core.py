"""Issue signed checkpoints, verify the log against one an auditor holds, prove one event.

- :func:`issue` extends the last stored checkpoint by the rows recorded since (the frontier of
  the tree is kept with each checkpoint, so issuing reads only the new rows), signs the new tree
  head with the service's key, and stores it with the new leaf hashes.
- :func:`verify_checkpoint` recomputes every row's leaf and checks that the tree of today's log
  starts with the checkpointed tree (its first ``size`` leaves give the signed root) and extends
  it (an RFC 9162 consistency proof, verified), and that every stored checkpoint signed by a key
  the auditor gives agrees too. When something differs it names the first position: with the
  stored leaf hashes when they hash to a signed root (then they are the signed rows), or the
  range between the last signed checkpoint that still agrees and the first that does not.
- :func:`prove` gives an inclusion proof of one event against a checkpoint; :func:`check_proof`
  verifies one offline (the checkpoint, the public key and the proof, nothing of the store).
"""

from __future__ import annotations

import base64
import datetime as dt
import json
import logging
import threading
import time
import uuid
from collections.abc import Sequence
from typing import Any

import attrs

from .. import signing
from ..audit.integrity import Problem
from ..audit.log import REGISTERED_TOPIC, Decoder, high_water_mark
from ..eventlog import EventLog
from ..keys import PublicKey, SigningKey
from ..storage import CANONICAL_MARK
from .checkpoint import (
    DEFAULT_ORIGIN,
    Checkpoint,
    CheckpointFormatError,
    new_checkpoint,
    parse_checkpoint,
)
from .log import LEAF_FORMAT, LogRow, leaf_bytes, rows, state_bytes
from .merkle import (
    Frontier,
    consistency_proof,
    inclusion_proof,
    leaf_hash,
    verify_consistency,
    verify_inclusion,
)
from .store import LeafRow, LedgerStore, StoredCheckpoint

#: Defaults: a checkpoint after this many events, or this many minutes after the last one
#: (checked when events are saved).
CHECKPOINT_EVERY_EVENTS = 1000
CHECKPOINT_EVERY_MINUTES = 10.0
logger = logging.getLogger(__name__)
PROOF_FORMAT = "cart-course-inclusion-proof/1"


class LedgerError(Exception):
    """The ledger cannot do what was asked (no key, nothing checkpointed, ...): says why."""


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _patient(app: EventLog, row: LogRow) -> str | None:
    """The patient id a registration row names (None: not a registration, or unreadable)."""
    if row.version != 1 or row.topic != REGISTERED_TOPIC:
        return None
    pid = Decoder(app).row(row.stream, 1, row.topic, row.state).get("patient_id")
    return pid if isinstance(pid, str) else None


def issue(
    app: EventLog,
    store: LedgerStore,
    key: SigningKey,
    *,
    origin: str = DEFAULT_ORIGIN,
    now: dt.datetime | None = None,
) -> Checkpoint:
    """Sign the tree of the log up to its high-water mark and store it (the last checkpoint
    again when nothing was recorded since)."""
    keep_patient_ids = app.cipher is None  # an encrypted store keeps none in the clear
    with store.writing():
        last = store.latest()
        frontier = Frontier()
        after = 0
        if last is not None:
            frontier = Frontier.from_json(last.frontier)
            if frontier.size != last.size or frontier.root().hex() != last.root:
                raise LedgerError(
                    f"the stored state of checkpoint {last.size} does not give its root: the "
                    "cart_course_checkpoints table was altered; run `cart-course audit verify "
                    "--checkpoint` with the last checkpoint you hold"
                )
            after = last.up_to
        mark = high_water_mark(app)
        if last is not None and mark <= last.up_to:
            return parse_checkpoint(last.note)
        added: list[LeafRow] = []
        for row in rows(app, after=after, up_to=mark):
            leaf = row.leaf
            added.append(
                (
                    frontier.size,
                    row.notification_id,
                    row.stream,
                    str(row.version),
                    _patient(app, row) if keep_patient_ids else None,
                    leaf.hex(),
                )
            )
            frontier.append(leaf)
        checkpoint = new_checkpoint(
            origin, frontier.size, frontier.root(), mark, now or dt.datetime.now(dt.UTC)
        ).signed(key)
        store.add(
            StoredCheckpoint(
                size=checkpoint.size,
                up_to=mark,
                root=checkpoint.root.hex(),
                issued_at=checkpoint.issued_at,
                frontier=frontier.to_json(),
                note=checkpoint.text(),
            ),
            added,
        )
    return checkpoint


@attrs.define(kw_only=True)
class Ledger:
    """The service's checkpointing: a checkpoint every ``every_events`` events or
    ``every_minutes`` minutes (judged when events are saved; the first save after start
    issues one when the store has none, e.g. a store from before this release)."""

    app: EventLog
    store: LedgerStore
    key: SigningKey
    origin: str = DEFAULT_ORIGIN
    every_events: int = CHECKPOINT_EVERY_EVENTS
    every_minutes: float = CHECKPOINT_EVERY_MINUTES
    _pending: int = 0
    _last: float | None = None
    _lock: threading.Lock = attrs.Factory(threading.Lock)

    def after_save(self, events: int) -> None:
        with self._lock:
            self._pending += events
            if self._last is None:  # this process's first save: how far is the last one?
                self._catch_up_with_store()
            assert self._last is not None
            due = (
                self._pending >= self.every_events
                or time.monotonic() - self._last >= self.every_minutes * 60
            )
            if not due:
                return
            try:
                self.checkpoint()
            except Exception:  # the events are saved; the next save tries again
                logger.warning("checkpoint not issued (the events are saved)", exc_info=True)

    def _catch_up_with_store(self) -> None:
        """Start counting from the latest stored checkpoint (none: one is due now)."""
        try:
            latest = self.store.latest()
            if latest is None:
                raise LookupError
            issued = dt.datetime.fromisoformat(latest.issued_at.replace("Z", "+00:00"))
            age = (dt.datetime.now(dt.UTC) - issued).total_seconds()
            self._pending = max(self._pending, high_water_mark(self.app) - latest.up_to)
            self._last = time.monotonic() - max(0.0, age)
        except Exception:  # no checkpoint yet (a store from before the ledger), or unreadable
            self._pending = self.every_events
            self._last = time.monotonic()

    def checkpoint(self) -> Checkpoint:
        checkpoint = issue(self.app, self.store, self.key, origin=self.origin)
        self._pending = 0
        self._last = time.monotonic()
        return checkpoint

    def close(self) -> None:
        self.store.close()

    def sign_esignature(self, course: Any, fields: dict[str, Any]) -> dict[str, Any]:
        """The record time and the service's signature of an e-signature about to be recorded
        as ``course``'s next event (``cart_course.signing``)."""
        from ..course import PatientCourse

        stamp = course.next_timestamp(PatientCourse.MilestoneSigned)
        bound = {**fields, "prev_hash": course.chain_head}
        value = signing.sign(self.key, str(course.id), course.version + 1, stamp.isoformat(), bound)
        return {"timestamp": stamp, signing.FIELD: value}


# -- verification --------------------------------------------------------------------------------


def read_checkpoint(text: str, keys: Sequence[PublicKey]) -> tuple[Checkpoint, PublicKey]:
    """The checkpoint, once its signature verified with one of ``keys``
    (:class:`CheckpointFormatError` otherwise: bad input, not evidence about the log)."""
    checkpoint = parse_checkpoint(text)
    if not keys:
        raise CheckpointFormatError(
            "no public key to check the checkpoint's signature with: give --public-key FILE "
            "(the service's key if CART_COURSE_SIGNING_KEY is set)"
        )
    signer = checkpoint.verified_by(keys)
    if signer is None:
        raise CheckpointFormatError(
            "the checkpoint's signature does not verify with the public key(s) given "
            f"(signed by {', '.join(checkpoint.key_names)}; given "
            f"{', '.join(f'{k.name} ({k.id_hex})' for k in keys)}): it was altered, or "
            "signed with another key"
        )
    return checkpoint, signer


@attrs.define(kw_only=True)
class LedgerReport:
    checkpoint: Checkpoint
    signer: PublicKey
    tree_size: int = 0
    root: bytes = b""
    up_to: int = 0
    consistency: list[bytes] = attrs.Factory(list)
    stored_checkpoints: int = 0
    problems: list[Problem] = attrs.Factory(list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def to_json(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "checkpoint": {
                "origin": self.checkpoint.origin,
                "size": self.checkpoint.size,
                "root": _b64(self.checkpoint.root),
                "issued_at": self.checkpoint.issued_at,
                "up_to_notification": self.checkpoint.up_to,
                "signed_by": f"{self.signer.name} ({self.signer.id_hex})",
            },
            "tree_size": self.tree_size,
            "root": _b64(self.root),
            "verified_up_to_notification": self.up_to,
            "consistency_proof": [_b64(p) for p in self.consistency],
            "stored_checkpoints_checked": self.stored_checkpoints,
            "problems": [p.to_json() for p in self.problems],
        }


class _Namer:
    """Names positions of the log: the current row there, and the row signed there."""

    def __init__(self, app: EventLog, store: LedgerStore, current: list[LogRow]):
        self.app = app
        self.store = store
        self.current = current
        self._patients: dict[str, str | None] = {}

    def patient(self, stream: str) -> str | None:
        if stream not in self._patients:
            pid = self.store.patient_of(stream)
            if pid is None:
                try:
                    first = self.app.stream(uuid.UUID(stream), lte=1)
                except Exception:
                    first = []
                if first:
                    decoded = Decoder(self.app)(first[0]).get("patient_id")
                    pid = decoded if isinstance(decoded, str) else None
            self._patients[stream] = pid
        return self._patients[stream]

    def who(self, stream: str, version: Any) -> tuple[str, int | None, str]:
        pid = self.patient(stream)
        name = pid or f"stream {stream}"
        v = int(version) if str(version).isdigit() else None
        return name, v, f"{name} v{version}"

    def current_at(self, i: int) -> tuple[str, int | None, str]:
        row = self.current[i]
        pid, v, text = self.who(row.stream, row.version)
        return pid, v, f"{text} (notification {row.notification_id})"

    def signed_stream(self, i: int) -> str | None:
        stored = self.store.leaf_row(i)
        return stored[2] if stored else None

    def signed_at(self, i: int) -> tuple[str, int | None, str] | None:
        stored = self.store.leaf_row(i)
        if stored is None:
            return None
        _p, nid, sid, version, pid, _leaf = stored
        name = pid or self.patient(sid) or f"stream {sid}"
        v = int(version) if version.isdigit() else None
        return name, v, f"{name} v{version} (notification {nid})"


#: At most this many differences from the signed log are named (one per stream).
MAX_DIFFERENCES = 50


def _differences(
    namer: _Namer, signed: list[bytes], current: list[bytes], size: int, what: str
) -> list[Problem]:
    """Where today's rows differ from the signed leaves below ``size``: the first difference of
    each stream, walking both in order (a row inserted or deleted realigns the walk)."""
    n = len(current)
    at_current: dict[bytes, int] = {}
    for k, leaf in enumerate(current):
        at_current.setdefault(leaf, k)
    at_signed: dict[bytes, int] = {}
    for k, leaf in enumerate(signed[:size]):
        at_signed.setdefault(leaf, k)
    problems: list[Problem] = []
    named: set[str] = set()

    def add(stream: str | None, pid: str, version: int | None, message: str) -> None:
        if stream is not None and stream in named:
            return
        if stream is not None:
            named.add(stream)
        problems.append(
            Problem(patient_id=pid, version=version, check="checkpoint", message=message)
        )

    i = j = 0
    while j < size and len(problems) < MAX_DIFFERENCES:
        if i < n and current[i] == signed[j]:
            i += 1
            j += 1
            continue
        expected = namer.signed_at(j)
        exp_text = expected[2] if expected else f"position {j}"
        exp_stream = namer.signed_stream(j)
        if i >= n:
            add(
                None,
                expected[0] if expected else "(log)",
                expected[1] if expected else None,
                f"the log ends after {n} rows but {what} covers {size}: the signed rows from "
                f"position {j} on ({size - j} row(s), the first {exp_text}) were deleted, or "
                "the store was rolled back to an older copy",
            )
            break
        pid, version, cur_text = namer.current_at(i)
        later = at_current.get(signed[j], -1)
        earlier = at_signed.get(current[i], -1)
        if later > i:
            add(
                namer.current[i].stream,
                pid,
                version,
                f"position {i}: {cur_text} is not in the signed log: {later - i} row(s) were "
                f"inserted before {exp_text} (or the rows were reordered)",
            )
            i = later
        elif earlier > j:
            add(
                exp_stream,
                expected[0] if expected else pid,
                expected[1] if expected else version,
                f"position {j}: the signed row(s) at positions {j}..{earlier - 1} (the first "
                f"{exp_text}) are gone: deleted (the log goes on with {cur_text}, signed at "
                f"position {earlier})",
            )
            j = earlier
        else:
            add(
                namer.current[i].stream,
                pid,
                version,
                f"position {i}: {cur_text} differs from the row {what} signed there "
                f"({exp_text}): it was modified, replaced or reordered",
            )
            i += 1
            j += 1
    return problems


def verify_checkpoint(
    app: EventLog,
    store: LedgerStore,
    text: str,
    keys: Sequence[PublicKey],
) -> LedgerReport:
    """Check today's log against a checkpoint the auditor holds (see the module)."""
    checkpoint, signer = read_checkpoint(text, keys)
    report = LedgerReport(checkpoint=checkpoint, signer=signer)
    mark = report.up_to = high_water_mark(app)
    current_rows = list(rows(app, up_to=mark))
    current = [r.leaf for r in current_rows]
    n = report.tree_size = len(current)
    # The references: the auditor's checkpoint, and every stored one signed by a key given.
    references: dict[int, tuple[bytes, str]] = {
        checkpoint.size: (checkpoint.root, f"the checkpoint you hold (size {checkpoint.size})")
    }
    stored_ok: list[Checkpoint] = []
    for stored in store.checkpoints():
        report.stored_checkpoints += 1
        try:
            note = parse_checkpoint(stored.note)
        except CheckpointFormatError as exc:
            note = None
            why = str(exc)
        if note is None or note.verified_by(keys) is None:
            report.problems.append(
                Problem(
                    patient_id="(checkpoints)",
                    version=None,
                    check="checkpoint",
                    message=f"the stored checkpoint of size {stored.size} is not signed by a "
                    "key given"
                    + (f" ({why})" if note is None else f" (signed by {note.key_names})")
                    + ": forged or altered in the database",
                )
            )
            continue
        if note.size != stored.size or note.root.hex() != stored.root:
            report.problems.append(
                Problem(
                    patient_id="(checkpoints)",
                    version=None,
                    check="checkpoint",
                    message=f"the stored checkpoint row of size {stored.size} does not match "
                    "its signed note: altered in the database",
                )
            )
        if note.size not in references:
            references[note.size] = (note.root, f"the stored checkpoint of {note.issued_at}")
        stored_ok.append(note)
    sizes = sorted(s for s in references if s <= n)
    roots: dict[int, bytes] = {}
    frontier = Frontier()
    wanted = iter(sizes)
    want = next(wanted, None)
    if want == 0:
        roots[0] = frontier.root()
        want = next(wanted, None)
    for leaf in current:
        frontier.append(leaf)
        while want is not None and frontier.size == want:
            roots[want] = frontier.root()
            want = next(wanted, None)
    report.root = frontier.root()
    good = 0  # the largest signed size the log agrees with
    bad: int | None = None
    for size in sorted(references):
        if size <= n and roots[size] == references[size][0]:
            good = max(good, size)
            continue
        bad = size
        break
    report.problems.extend(_esignatures(app, current_rows, keys, protected=max(references)))
    # Gaps in SQLite's notification ids: reported by the chain's verify (audit.integrity).
    signed_times = sorted(
        (size, issued)
        for size, issued in (
            (checkpoint.size, checkpoint.issued_at),
            *((s.size, s.issued_at) for s in stored_ok),
        )
        if size <= n
    )
    report.problems.extend(_future_times(app, current_rows, signed_times))
    if bad is None:
        if checkpoint.size > 0:
            report.consistency = consistency_proof(current, checkpoint.size, n)
            if not verify_consistency(
                checkpoint.size, n, checkpoint.root, report.root, report.consistency
            ):  # cannot happen when the roots agree; checked as the auditor would
                raise AssertionError("consistency proof does not verify")
        return report
    what = references[bad][1]
    namer = _Namer(app, store, current_rows)
    signed = store.leaves(bad)
    if len(signed) >= bad and _root(signed, bad) == references[bad][0]:
        report.problems.extend(_differences(namer, signed, current, bad, what))
        return report
    # The stored leaves do not give the signed root (altered, or rolled back with the log):
    # say between which signed sizes the log changed.
    first = namer.current_at(good) if good < n and n >= bad else None
    if n < bad:
        cause = (
            f"the log holds {n} rows but {what} covers {bad}: rows were deleted or the store "
            f"was rolled back to an older copy (the log agrees with the signed tree up to "
            f"position {good})"
        )
    else:
        cause = (
            f"the log agrees with the signed tree up to position {good} but not with {what}: "
            f"rows at positions {good}..{bad - 1}"
            + (f" (from {first[2]})" if first else "")
            + " were altered, inserted, reordered or deleted"
        )
    report.problems.append(
        Problem(
            patient_id="(log)",
            version=None,
            check="checkpoint",
            message=cause + "; the stored leaf hashes (cart_course_leaves) do not give the "
            "signed root either: the range is tampered",
        )
    )
    return report


SIGNED_TOPIC = REGISTERED_TOPIC.replace("Registered", "MilestoneSigned")


def _esignatures(
    app: EventLog, current: list[LogRow], keys: Sequence[PublicKey], *, protected: int
) -> list[Problem]:
    """Every e-signature's service signature (``cart_course.signing``): each one present must
    verify; one recorded after the signed part of the log (``protected`` rows, which the tree
    covers) must be there."""
    decode = Decoder(app)
    problems: list[Problem] = []
    namer: dict[str, Any] = {}
    for position, row in enumerate(current):
        if row.topic != SIGNED_TOPIC or not isinstance(row.version, int):
            continue
        event = decode.row(row.stream, row.version, row.topic, row.state)
        if event.get(signing.FIELD) is None and position < protected:
            continue  # recorded before the service signed: the signed tree covers it
        why = signing.check(
            keys, row.recorded or row.stream, row.version, event.recorded_at, event.data
        )
        if why is None:
            continue
        if row.stream not in namer:
            namer[row.stream] = _stream_patient(app, row.stream)
        problems.append(
            Problem(
                patient_id=namer[row.stream],
                version=row.version,
                check="esignature",
                message=f"the e-signature (notification {row.notification_id}): {why}"
                + (
                    " (recorded after the signed checkpoints, where the service signs each one)"
                    if event.get(signing.FIELD) is None
                    else ""
                ),
            )
        )
    return problems


#: How far a record time may lie after the checkpoint that covers it (servers' clocks differ).
CLOCK_TOLERANCE = dt.timedelta(seconds=5)
_TIMESTAMP = b'"timestamp":"'


def _record_time(decode: Decoder, row: LogRow) -> str:
    """A row's record time: read off a plain canonical row (its top-level ``timestamp`` is the
    last one: the keys after it hold text), else decoded."""
    state = row.state
    at = state.rfind(_TIMESTAMP) if state[:1] == b"{" and CANONICAL_MARK in state else -1
    if at != -1:
        end = state.find(b'"', at + len(_TIMESTAMP))
        return state[at + len(_TIMESTAMP) : end].decode("ascii", "replace")
    return decode.row(row.stream, row.version, row.topic, row.state).recorded_at


def _future_times(
    app: EventLog, current: list[LogRow], signed: list[tuple[int, str]]
) -> list[Problem]:
    """Record times never lie in the future of the checkpoint that covers them (the first
    signed size above the row's position): one that does was recorded with a clock ahead of
    the service's, or set by hand before the tree was signed."""
    problems: list[Problem] = []
    decode = Decoder(app)
    start = 0
    for size, issued in signed:
        try:
            limit = dt.datetime.fromisoformat(issued.replace("Z", "+00:00")) + CLOCK_TOLERANCE
        except ValueError:
            continue
        bound = limit.isoformat()
        for row in current[start:size]:
            text = _record_time(decode, row)
            if text[:19] <= bound[:19]:  # the same second or before: fine
                continue
            try:
                when = dt.datetime.fromisoformat(text)
            except ValueError:
                continue
            if when > limit:
                problems.append(
                    Problem(
                        patient_id=_stream_patient(app, row.stream),
                        version=row.version if isinstance(row.version, int) else None,
                        check="record_time",
                        message=f"recorded at {text}, after the checkpoint of {issued} that "
                        "covers it: the record clock was ahead of the service's, or the time "
                        "was set by hand",
                    )
                )
                if len(problems) >= MAX_DIFFERENCES:
                    return problems
        start = max(start, size)
    return problems


def _stream_patient(app: EventLog, stream: str) -> str:
    try:
        first = app.stream(uuid.UUID(stream), lte=1)
    except Exception:
        first = []
    pid = Decoder(app)(first[0]).get("patient_id") if first else None
    return pid if isinstance(pid, str) else f"stream {stream}"


def _root(leaves: list[bytes], size: int) -> bytes:
    frontier = Frontier()
    frontier.extend(leaves[:size])
    return frontier.root()


# -- inclusion proofs ----------------------------------------------------------------------------


def prove(
    app: EventLog,
    store: LedgerStore,
    stream: str,
    version: int,
    *,
    checkpoint_text: str | None = None,
) -> dict[str, Any]:
    """An inclusion proof of the event (stream, version) against a checkpoint: the one given,
    or the latest stored one."""
    if checkpoint_text is None:
        latest = store.latest()
        if latest is None:
            raise LedgerError(
                "no checkpoint was issued yet: run `cart-course audit checkpoint` first"
            )
        checkpoint_text = latest.note
    checkpoint = parse_checkpoint(checkpoint_text)
    size = checkpoint.size
    found = _prove_from_stored(app, store, stream, version, size, checkpoint.root)
    if found is None:
        found = _prove_from_log(app, stream, version, size)
    leaf, index, data, proof = found
    return {
        "format": PROOF_FORMAT,
        "origin": checkpoint.origin,
        "tree_size": size,
        "root": _b64(checkpoint.root),
        "leaf_index": index,
        "stream_id": _header_stream(data, stream),
        "version": version,
        "leaf_data": _b64(data),
        "leaf_hash": _b64(leaf),
        "path": [_b64(p) for p in proof],
        "checkpoint": checkpoint.text(),
    }


def _header_stream(data: bytes, stream: str) -> str:
    """The stream id a leaf's header names (the one its row was recorded under)."""
    try:
        header = json.loads(data.split(b"\n", 2)[1])
    except (IndexError, ValueError):
        return stream
    return (
        header[0] if isinstance(header, list) and header and isinstance(header[0], str) else stream
    )


def _prove_from_stored(
    app: EventLog, store: LedgerStore, stream: str, version: int, size: int, root: bytes
) -> tuple[bytes, int, bytes, list[bytes]] | None:
    """The stored leaves (when the event's path from them leads to the signed root), its position and
    its row as stored now, which must be the row signed there; None: find it in the log."""
    leaves = store.leaves(size)
    index = store.position_of(stream, str(version), size)
    if len(leaves) < size or index is None:
        return None
    # The path from the stored leaves must lead to the signed root (then every hash on it is
    # the signed tree's; one pass, rather than the root of all leaves and then the path).
    path = inclusion_proof(leaves, index, size)
    if not verify_inclusion(leaves[index], index, size, path, root):
        return None
    stored = app.stream(uuid.UUID(stream), gt=version - 1, lte=version)
    if not stored:
        return None
    row = stored[0]
    data = leaf_bytes(stream, version, str(row.topic), state_bytes(row.state))
    alias = app.stream_ids.aliases().get(stream) if app.stream_ids.migrated_up_to else None
    if leaf_hash(data) != leaves[index] and alias is not None:
        # recorded before the store's stream ids were migrated: its leaf names that id
        data = leaf_bytes(alias, version, str(row.topic), state_bytes(row.state))
    if leaf_hash(data) != leaves[index]:
        raise LedgerError(
            f"v{version} as stored now is not the row the checkpoint signed at position {index}: "
            "it was altered (`cart-course audit verify --checkpoint` names what changed)"
        )
    return leaves[index], index, data, path


def _prove_from_log(
    app: EventLog, stream: str, version: int, size: int
) -> tuple[bytes, int, bytes, list[bytes]]:
    leaves: list[bytes] = []
    index = None
    data = b""
    for row in rows(app):
        if len(leaves) >= size:
            break
        leaf = row.leaf
        if row.stream == stream and row.version == version:
            index, data = len(leaves), row.data
        leaves.append(leaf)
    if index is None:
        raise LedgerError(
            f"v{version} is not among the {size} events the checkpoint covers (recorded later? "
            "issue a new checkpoint with `cart-course audit checkpoint`)"
        )
    return leaves[index], index, data, inclusion_proof(leaves, index, size)


def check_proof(
    proof: dict[str, Any], checkpoint_text: str, keys: Sequence[PublicKey]
) -> tuple[Checkpoint, int]:
    """Verify an inclusion proof against a checkpoint signed by one of ``keys``; returns the
    checkpoint and the leaf index. :class:`CheckpointFormatError` when the checkpoint is not
    signed by them; :class:`LedgerError` when the proof does not prove inclusion."""
    checkpoint, _signer = read_checkpoint(checkpoint_text, keys)
    try:
        data = base64.b64decode(str(proof["leaf_data"]), validate=True)
        path = [base64.b64decode(str(p), validate=True) for p in proof["path"]]
        index = int(proof["leaf_index"])
        size = int(proof["tree_size"])
    except (KeyError, TypeError, ValueError) as exc:
        raise LedgerError(f"not an inclusion proof of `audit prove` ({exc})") from None
    if size != checkpoint.size:
        raise LedgerError(
            f"the proof is for a tree of {size} events, the checkpoint has {checkpoint.size}"
        )
    parts = data.split(b"\n", 2)
    try:
        header = json.loads(parts[1]) if len(parts) == 3 else None
    except ValueError:
        header = None
    if parts[0] + b"\n" != LEAF_FORMAT or not isinstance(header, list) or len(header) != 3:
        raise LedgerError("the proof's leaf data is not a stored event row")
    if header[:2] != [proof.get("stream_id"), proof.get("version")]:
        raise LedgerError("the proof's leaf data is another event than the one it names")
    if not verify_inclusion(leaf_hash(data), index, size, path, checkpoint.root):
        raise LedgerError(
            "the proof does not verify: this event is not leaf "
            f"{index} of the checkpointed tree (the event or the proof was altered)"
        )
    return checkpoint, index
