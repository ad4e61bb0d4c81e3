"""Data queries: a monitor's question about a recorded value, the site's answer, the monitor's
close or re-open, decided as pure protocol code (issue 17).

A query lives on the patient's course (its events are in the course's stream: hash chain,
timeline and as-of come with it) and never changes the protocol state. Its id is
``Q-<version>``, the version of the event that opened it: given by the server, stable, and the
same on an idempotent retry. Statuses, like a ticket::

    open --answer--> answered --close--> closed
      ^                 |                  |
      +----reopen-------+------reopen------+      (re-opened --answer--> answered ...)

``open`` and ``reopened`` wait for the site, ``answered`` for the monitor; every query that is
not ``closed`` is *unresolved* (what the board counts as the patient's open queries).

No I/O: the caller gives the record (its ``queries``) and, for a query on a recorded value,
what that version recorded (:data:`EventLookup`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, Literal

import attrs

from .errors import ProtocolInputError, RecordConflictInputError, key_name
from .record import PatientRecord, opened_clinical
from .text import free_text_problem

Status = Literal["open", "answered", "closed", "reopened"]
STATUSES: tuple[Status, ...] = ("open", "answered", "closed", "reopened")
#: Statuses of a query not yet resolved (the board's "open queries").
UNRESOLVED: frozenset[str] = frozenset({"open", "answered", "reopened"})
#: Statuses in which the site is to answer.
AWAITING_SITE: frozenset[str] = frozenset({"open", "reopened"})

#: Who may act on queries, by command (the registry's ``roles``).
MONITOR_ROLES = ("monitor", "data_manager")
SITE_ROLES = ("clinician",)
#: Actor ids the system itself records under: no person, token or command may take one (the
#: query rules tell their own steps by it).
SYSTEM_ACTOR_PREFIX = "system:"
#: The actor of the queries the query rules open and close (``protocol/query_rules.py``).
RULES_ACTOR = SYSTEM_ACTOR_PREFIX + "query-rules"
RULES_ROLE = "system"


def system_actor_problem(actor_id: str) -> str | None:
    """Why ``actor_id`` may not be a person's (a token's, a command's), or None."""
    if actor_id.strip().lower().startswith(SYSTEM_ACTOR_PREFIX):
        return (
            f"actor ids beginning with {SYSTEM_ACTOR_PREFIX!r} are the system's own (e.g. "
            f"{RULES_ACTOR!r}, the query rules); a person's id is e.g. nurse.jones"
        )
    return None


OPEN_KEYS = ("text", "on_version", "field")
ANSWER_KEYS = ("query_id", "text", "correction")
CLOSE_KEYS = ("query_id",)
REOPEN_KEYS = ("query_id", "text")
TEXT_MAX = 2000
FIELD_MAX = 300

#: What a version of the patient's course recorded, for a query on it: (its event type, its
#: addressable fields as a mapping: ``payload`` (or ``changes`` of a correction), ``occurred_at``
#: and ``reason``), or None when the course has no such version.
EventLookup = Callable[[int], tuple[str, Mapping[str, Any]] | None]


def query_id_of(version: int) -> str:
    """The id of the query opened by the event at ``version``."""
    return f"Q-{version}"


@attrs.frozen(kw_only=True)
class QueryChange:
    """What a query event records (the ``Query*`` events' fields besides who, when, why)."""

    command: str
    action: Literal["open", "answer", "close", "reopen"]
    query_id: str
    status: Status
    text: str | None = None
    on_version: int | None = None
    field: str | None = None
    correction: int | None = None
    rule: str | None = None

    def fields(self) -> dict[str, Any]:
        return attrs.asdict(self)

    def outcome(self) -> dict[str, Any]:
        out: dict[str, Any] = {"query_id": self.query_id, "status": self.status}
        for key in ("on_version", "field", "correction", "rule"):
            value = getattr(self, key)
            if value is not None:
                out[key] = value
        return out


# ----------------------------------------------------------------------------------------------
# Payloads
# ----------------------------------------------------------------------------------------------


def _only(payload: Mapping[str, Any], keys: tuple[str, ...]) -> None:
    extra = sorted(set(payload) - set(keys), key=str)
    if extra:
        raise ProtocolInputError(
            f"payload.{key_name(extra[0])}", "unknown key; allowed: " + ", ".join(keys)
        )


def _text(payload: Mapping[str, Any], key: str, what: str) -> str:
    value = payload.get(key)
    if not isinstance(value, str) or not value.strip():
        raise ProtocolInputError(f"payload.{key}", f"is required: {what} (1-{TEXT_MAX} characters)")
    if len(value) > TEXT_MAX:
        raise ProtocolInputError(f"payload.{key}", f"must be at most {TEXT_MAX} characters")
    problem = free_text_problem(value)
    if problem is not None:
        raise ProtocolInputError(f"payload.{key}", problem)
    return value


def _version(value: Any, version_now: int, field: str, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ProtocolInputError(field, f"must be the version of {what} (1..{version_now})")
    if value > version_now:
        raise RecordConflictInputError(
            field, f"version {value} is not on this patient's record (1..{version_now})"
        )
    return value


def unresolved(record: PatientRecord) -> list[dict[str, Any]]:
    """The patient's queries that are not closed, oldest first."""
    return [q for q in record.queries.values() if q["status"] in UNRESOLVED]


def _query(record: PatientRecord, payload: Mapping[str, Any]) -> dict[str, Any]:
    qid = payload.get("query_id")
    if not isinstance(qid, str) or not qid.strip():
        raise ProtocolInputError("payload.query_id", "is required: the query's id, e.g. Q-7")
    query = record.queries.get(qid)
    if query is None:
        known = ", ".join(record.queries) or "none"
        raise RecordConflictInputError(
            "payload.query_id",
            f"{qid[:40]!r} is not a query of patient {record.patient_id}; its queries: {known}",
        )
    return query


# ----------------------------------------------------------------------------------------------
# Field paths: what a query may point at in a recorded event
# ----------------------------------------------------------------------------------------------


def field_paths(fields: Mapping[str, Any]) -> list[str]:
    """Every path a query may name in an event's addressable fields: each key and nested key
    (``payload.cells``, ``payload.cells.value``), in order."""
    out: list[str] = []

    def walk(prefix: str, value: Any) -> None:
        out.append(prefix)
        if isinstance(value, Mapping):
            for k, v in value.items():
                walk(f"{prefix}.{k}", v)

    for key, value in fields.items():
        if value is None:
            continue
        walk(key, value)
    return out


def _has_path(fields: Mapping[str, Any], path: str) -> bool:
    value: Any = fields
    for part in path.split("."):
        if not isinstance(value, Mapping) or part not in value or value[part] is None:
            return False
        value = value[part]
    return True


def _check_field(on_version: int, path: Any, lookup: EventLookup) -> tuple[str, str | None]:
    """(the event type at ``on_version``, the field path checked against it)."""
    found = lookup(on_version)
    if found is None:
        raise RecordConflictInputError(
            "payload.on_version", f"version {on_version} is not on this patient's record"
        )
    event_type, fields = found
    if path is None:
        return event_type, None
    if not isinstance(path, str) or not path.strip() or len(path) > FIELD_MAX:
        raise ProtocolInputError(
            "payload.field",
            f"must be a field path of version {on_version}, e.g. payload.cells "
            f"(at most {FIELD_MAX} characters)",
        )
    if not _has_path(fields, path):
        paths = field_paths(fields)
        raise RecordConflictInputError(
            "payload.field",
            f"{path[:80]!r} is not a field of version {on_version} ({event_type}); its fields: "
            + (", ".join(paths) if paths else "none"),
        )
    return event_type, path


# ----------------------------------------------------------------------------------------------
# Decisions
# ----------------------------------------------------------------------------------------------


def decide_open(
    record: PatientRecord,
    payload: Mapping[str, Any],
    version_now: int,
    lookup: EventLookup,
) -> QueryChange:
    """``open_query``: a monitor's question, on the patient or on a recorded value."""
    _only(payload, OPEN_KEYS)
    text = _text(payload, "text", "the question, e.g. 'D2 cells: the source says 1.8e7'")
    on = payload.get("on_version")
    field = payload.get("field")
    if on is None:
        if field is not None:
            raise ProtocolInputError(
                "payload.on_version", "is required with payload.field: the version it names"
            )
        return QueryChange(
            command="open_query",
            action="open",
            query_id=query_id_of(version_now + 1),
            status="open",
            text=text,
        )
    version = _version(on, version_now, "payload.on_version", "the event the query is about")
    event_type, path = _check_field(version, field, lookup)
    if event_type.startswith("Query"):
        raise RecordConflictInputError(
            "payload.on_version",
            f"version {version} is a query event ({event_type}), not a recorded fact; "
            "answer or re-open that query instead",
        )
    return QueryChange(
        command="open_query",
        action="open",
        query_id=query_id_of(version_now + 1),
        status="open",
        text=text,
        on_version=version,
        field=path,
    )


def decide_answer(
    record: PatientRecord,
    payload: Mapping[str, Any],
    version_now: int,
    lookup: EventLookup,
) -> QueryChange:
    """``answer_query``: the site's answer, optionally naming the ``correct`` it recorded."""
    _only(payload, ANSWER_KEYS)
    query = _query(record, payload)
    text = _text(payload, "text", "the site's answer")
    status = query["status"]
    if status not in AWAITING_SITE:
        why = (
            "is closed: a monitor re-opens it (reopen_query) if it needs another answer"
            if status == "closed"
            else "is answered already and waits for the monitor (close_query or reopen_query)"
        )
        raise RecordConflictInputError("payload.query_id", f"{query['id']} {why}")
    correction = payload.get("correction")
    if correction is not None:
        correction = _version(
            correction, version_now, "payload.correction", "the correction the site recorded"
        )
        found = lookup(correction)
        if found is None or found[0] != "FactCorrected":
            raise RecordConflictInputError(
                "payload.correction",
                f"version {correction} is {found[0] if found else 'not on record'}, not a "
                "correction (a correct command's event)",
            )
        _check_corrects(query, correction, found[1], lookup)
    return QueryChange(
        command="answer_query",
        action="answer",
        query_id=query["id"],
        status="answered",
        text=text,
        correction=correction,
    )


def _check_corrects(
    query: Mapping[str, Any], correction: int, fields: Mapping[str, Any], lookup: EventLookup
) -> None:
    """A query on an event takes, as its answer's correction, only a correction of that event
    (or of the event that event corrects, when the query is on a correction)."""
    on = query.get("on_version")
    if on is None:
        return  # a query on the patient: any correction of the patient's record
    corrects = fields.get("corrects")
    about = {on}
    queried = lookup(on)
    if queried is not None and queried[0] == "FactCorrected":
        about.add(queried[1].get("corrects"))
    if corrects not in about:
        raise RecordConflictInputError(
            "payload.correction",
            f"version {correction} corrects version {corrects}, but {query['id']} is about "
            f"version {on}: name a correction of version {on}, or answer without one",
        )


def decide_close(
    record: PatientRecord, payload: Mapping[str, Any], reason: str | None
) -> QueryChange:
    """``close_query``: the monitor accepts the answer (an unanswered query: with a reason)."""
    _only(payload, CLOSE_KEYS)
    query = _query(record, payload)
    status = query["status"]
    if status == "closed":
        raise RecordConflictInputError(
            "payload.query_id", f"{query['id']} is closed already (nothing recorded)"
        )
    if status != "answered" and not (reason and reason.strip()):
        raise ProtocolInputError(
            "reason",
            f"{query['id']} is {status}, not answered: closing it without the site's answer "
            "needs a reason (why the question no longer stands)",
        )
    return QueryChange(command="close_query", action="close", query_id=query["id"], status="closed")


def decide_reopen(record: PatientRecord, payload: Mapping[str, Any]) -> QueryChange:
    """``reopen_query``: the monitor does not accept the answer (or the close): asks again."""
    _only(payload, REOPEN_KEYS)
    query = _query(record, payload)
    text = _text(payload, "text", "what is still wrong or missing")
    if query["status"] in AWAITING_SITE:
        raise RecordConflictInputError(
            "payload.query_id",
            f"{query['id']} is {query['status']}: it waits for the site's answer already",
        )
    return QueryChange(
        command="reopen_query", action="reopen", query_id=query["id"], status="reopened", text=text
    )


# ----------------------------------------------------------------------------------------------
# What a query event does to the record (assign only)
# ----------------------------------------------------------------------------------------------


def evolve_query(
    record: PatientRecord,
    *,
    action: str,
    query_id: str,
    status: str,
    text: str | None,
    on_version: int | None,
    field: str | None,
    correction: int | None,
    rule: str | None,
    actor: str,
    role: str,
    reason: str | None,
    occurred_at: str,
    recorded_at: str,
    version: int,
) -> None:
    record.version = version
    step = {
        "version": version,
        "action": action,
        "status": status,
        "by": actor,
        "role": role,
        "at": recorded_at,
        "occurred_at": occurred_at,
        **({"text": text} if text is not None else {}),
        **({"reason": reason} if reason else {}),
        **({"correction": correction} if correction is not None else {}),
    }
    if action == "open":
        record.queries[query_id] = {
            "id": query_id,
            "status": status,
            "on_version": on_version,
            "field": field,
            "text": text,
            "rule": rule,
            "opened_by": actor,
            "opened_role": role,
            "opened_at": recorded_at,
            #: The clinical time it was opened (the open_query's ``occurred_at``: when the
            #: monitor raised it; a rule's query: the triggering command's): its age counts
            #: from it. ``opened_at`` is the record time.
            "opened_occurred_at": occurred_at,
            "opened_version": version,
            "updated_at": recorded_at,
            "history": [step],
        }
        return
    query = record.queries.get(query_id)
    if query is None:  # replay never guards: a step of a query not on record is kept apart
        return
    query["status"] = status
    query["updated_at"] = recorded_at
    query["history"].append(step)
    if action == "answer":
        query["answer"] = text
        if correction is not None:
            query["correction"] = correction
    elif action == "close":
        query["closed_at"] = recorded_at
        query["closed_by"] = actor
    elif action == "reopen":
        query.pop("closed_at", None)
        query.pop("closed_by", None)


def summary(record: PatientRecord) -> dict[str, Any]:
    """The patient's queries in brief: unresolved count, the oldest unresolved, by status."""
    return record.queries_summary()


def query_view(query: Mapping[str, Any], patient_id: str) -> dict[str, Any]:
    """One query as the monitors and the site read it."""
    return {
        "patient_id": patient_id,
        "query_id": query["id"],
        "status": query["status"],
        "unresolved": query["status"] in UNRESOLVED,
        "awaiting": "site"
        if query["status"] in AWAITING_SITE
        else ("monitor" if query["status"] == "answered" else None),
        "on_version": query.get("on_version"),
        "field": query.get("field"),
        "text": query.get("text"),
        "rule": query.get("rule"),
        "opened_by": query.get("opened_by"),
        "opened_at": query.get("opened_at"),
        "opened_occurred_at": opened_clinical(query),
        "updated_at": query.get("updated_at"),
        "answer": query.get("answer"),
        "correction": query.get("correction"),
        "closed_at": query.get("closed_at"),
        "history": [dict(s) for s in query.get("history", ())],
    }
