"""The timeline: every event of a patient, in order, with who/when/why, and what it corrected or
signed. A signature of an event that was later corrected is shown as covering the superseded
version (nothing is silently voided)."""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from typing import Any

from ..protocol.record import DEFAULT_SITE
from .log import CORRECTED, MOVED, QUERIED, REGISTERED, SIGNED, LoggedEvent, site_after
from .product import PRODUCT_MOVES, ids_of

#: CSV columns of the timeline (also the order of the table's fields).
COLUMNS = (
    "patient_id",
    "version",
    "event",
    "recorded_at",
    "occurred_at",
    "actor",
    "role",
    "reason",
    "move",
    "from_state",
    "to_state",
    "protocol_version",
    "facts",
    "payload",
    "deviations",
    "corrects",
    "changes",
    "milestone",
    "signs_version",
    "meaning",
    "printed_name",
    "signed_hash",
    "notes",
    "hash",
    "prev_hash",
    # the cell product a step names (issue 15): its collection, lot and bag
    "collection_id",
    "lot_id",
    "bag_id",
    # a multi-site trial (issue 17): the patient's site after the event (S00: none named)
    "site",
)


def timeline(patient_id: str, events: list[LoggedEvent]) -> Iterator[dict[str, Any]]:
    """One row per event (a stream is small: two passes over it)."""
    corrected_by: dict[int, list[int]] = {}
    signed_by: dict[int, list[LoggedEvent]] = {}
    for e in events:
        if e.kind == CORRECTED:
            corrected_by.setdefault(int(e.get("corrects")), []).append(e.version)
        elif e.kind == SIGNED:
            signed_by.setdefault(int(e.get("signs_version")), []).append(e)
    hashes = {e.version: e.hash for e in events}
    # the site: the first screening's from the registration on (both are recorded together)
    site = site_after(events[1], DEFAULT_SITE) if len(events) > 1 else DEFAULT_SITE
    for e in events:
        before, site = site, site_after(e, site)
        notes: list[str] = []
        row: dict[str, Any] = {
            "patient_id": patient_id,
            "version": e.version,
            "event": e.type,
            "recorded_at": e.recorded_at,
            "occurred_at": e.get("occurred_at"),
            "actor": e.get("actor"),
            "role": e.get("role"),
            "reason": e.get("reason"),
            "move": None,
            "from_state": None,
            "to_state": None,
            "protocol_version": e.get("protocol_version"),
            "facts": None,
            "payload": None,
            "deviations": [],
            "corrects": None,
            "changes": None,
            "milestone": None,
            "signs_version": None,
            "meaning": None,
            "printed_name": None,
            "signed_hash": None,
            "notes": notes,
            "hash": e.hash,
            "prev_hash": e.get("prev_hash"),
            "collection_id": None,
            "lot_id": None,
            "bag_id": None,
            "site": site,
        }
        if e.kind == MOVED and e.get("trigger") == "transfer_site":
            notes.append(f"transferred from site {before} to site {site}")
        if e.kind == REGISTERED:
            row["move"] = "register"
            row["to_state"] = "candidate"
            notes.append(f"patient {e.get('patient_id')} registered")
        elif e.kind == MOVED:
            row.update(
                move=e.get("trigger"),
                from_state=e.get("from_state"),
                to_state=e.get("to_state"),
                facts=e.get("facts"),
                payload=e.get("payload"),
                deviations=list((e.get("outcome") or {}).get("deviations", [])),
            )
            row.update(product_ids(e))
        elif e.kind == CORRECTED:
            row.update(
                move="correct",
                corrects=e.get("corrects"),
                changes=e.get("changes"),
                facts=e.get("facts"),
                payload=e.get("payload"),
                deviations=list(e.get("findings") or []),
            )
            notes.append(f"corrects v{e.get('corrects')} ({e.get('trigger')})")
        elif e.kind == SIGNED:
            signs = int(e.get("signs_version"))
            row.update(
                move="sign",
                milestone=e.get("milestone"),
                signs_version=signs,
                meaning=e.get("meaning"),
                printed_name=e.get("printed_name"),
                signed_hash=e.get("signed_hash"),
            )
            intact = hashes.get(signs) == e.get("signed_hash")
            notes.append(
                f"{e.get('meaning')} signature by {e.get('printed_name')} ({e.get('actor')}) "
                f"of the {e.get('milestone')} at v{signs}; signed hash "
                + ("matches" if intact else "DOES NOT MATCH")
                + f" v{signs} as stored"
            )
            later = [c for c in corrected_by.get(signs, []) if c > e.version]
            if later:
                notes.append(
                    f"the signature covers v{signs} as recorded before correction "
                    + ", ".join(f"v{c}" for c in later)
                    + " (superseded version); the corrected facts are not signed"
                )
        elif e.kind == QUERIED:
            row["move"] = f"{e.get('action')}_query"
            notes.append(query_note(e))
        for c in corrected_by.get(e.version, []):
            notes.append(f"corrected by v{c}")
        for s in signed_by.get(e.version, []):
            late = [c for c in corrected_by.get(e.version, []) if c > s.version]
            notes.append(
                f"signed ({s.get('meaning')}) by {s.get('printed_name')} at v{s.version}"
                + (
                    "; that signature covers this version as first recorded (corrected later by "
                    + ", ".join(f"v{c}" for c in late)
                    + ")"
                    if late
                    else ""
                )
            )
        yield row


def query_note(e: LoggedEvent) -> str:
    """A step of a data query in words: ``query Q-7 opened on v5 payload.cells: "..."``."""
    action = str(e.get("action"))
    verb = {"open": "opened", "answer": "answered", "close": "closed", "reopen": "re-opened"}
    text = f"query {e.get('query_id')} {verb.get(action, action)}"
    if action == "open" and e.get("on_version") is not None:
        text += f" on v{e.get('on_version')}" + (f" {e.get('field')}" if e.get("field") else "")
    if e.get("rule"):
        text += f" by the query rule {e.get('rule')}"
    if e.get("correction") is not None:
        text += f" (pointing to the correction v{e.get('correction')})"
    if e.get("text"):
        text += f": {compact(e.get('text'), 300)}"
    return text


def product_ids(e: LoggedEvent) -> dict[str, str | None]:
    """The collection, lot and bag a move names (all None for a move of no product)."""
    if e.get("trigger") not in PRODUCT_MOVES:
        return {}
    collection, lot, bags = ids_of(dict(e.get("facts") or {}))
    bag = e.get("facts", {}).get("bag_id") if isinstance(e.get("facts"), dict) else None
    if collection is None and lot is None and not bags:
        return {}
    return {"collection_id": collection, "lot_id": lot, "bag_id": bag}


def compact(value: Any, limit: int = 0) -> str:
    if value is None or value == [] or value == {}:
        return ""
    text = value if isinstance(value, str) else json.dumps(value, separators=(",", ":"))
    if limit and len(text) > limit:
        return text[: limit - 3] + "..."
    return text


#: What a spreadsheet takes for the start of a formula (OWASP, "CSV injection").
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def spreadsheet_safe(text: str) -> str:
    """A CSV cell a spreadsheet shows as text: a cell that would start a formula (a reason such
    as ``=HYPERLINK(...)`` typed by a user) gets a leading ``'``, which spreadsheets read as
    "this is text" and do not display. Numbers are written as numbers (``-1.5`` stays)."""
    if text.startswith(_FORMULA_START):
        try:
            float(text)
        except ValueError:
            return "'" + text
    return text


def csv_row(row: dict[str, Any]) -> list[str]:
    out = []
    for column in COLUMNS:
        value = row.get(column)
        if column == "notes" or column == "deviations":
            out.append(" | ".join(value or []))
        elif isinstance(value, dict | list):
            out.append(json.dumps(value, separators=(",", ":"), sort_keys=True))
        elif value is None:
            out.append("")
        else:
            out.append(str(value))
    return [spreadsheet_safe(cell) for cell in out]


def render_table(rows: Iterable[dict[str, Any]]) -> Iterator[str]:
    """A readable timeline: one header line per event, details indented below it."""
    yield f"{'v':>3}  {'recorded (UTC)':<19}  {'occurred':<25}  {'actor (role)':<28}  event / move"
    for row in rows:
        recorded = str(row["recorded_at"])[:19].replace("T", " ")
        who = f"{row['actor']} ({row['role']})"
        if row["from_state"] is not None:
            move = f"{row['event']}: {row['move']} {row['from_state']} -> {row['to_state']}"
        else:
            move = str(row["event"])
        yield f"{row['version']:>3}  {recorded:<19}  {row['occurred_at'] or '':<25}  {who:<28}  {move}"
        pad = " " * 5
        if row["reason"]:
            yield f"{pad}reason: {row['reason']}"
        if row["payload"]:
            yield f"{pad}entered: {compact(row['payload'], 110)}"
        if row["changes"]:
            yield f"{pad}changes: {compact(row['changes'], 110)}"
        for text in row["deviations"]:
            yield f"{pad}deviation: {text}"
        for text in row["notes"]:
            yield f"{pad}{text}"
