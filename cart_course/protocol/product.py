"""The cell product's chain of identity: collection, manufacture, release, bags, bedside check.

Pure protocol code (no I/O, no clock, no store), used by the command registry:

- the collection's identifier: an ISBT 128 donation identification number (DIN: 13 characters,
  validated with its ISO/IEC 7064 MOD 37-2 check character) or the site's own collection id;
- the payloads of the product's commands (``start_manufacture``, ``release_product``,
  ``repeat_apheresis``, and the bag, the second verifier and the thaw time of
  ``give_infusion``) as ``msgspec`` structs: a valid payload is converted at once, an invalid one
  is refused naming every invalid field;
- what the rules read from the record (the bags of this patient's lots, the lots' status) and
  what the product's moves do to it (:func:`evolve_product`; it assigns, it never checks).

The product's steps are moves recorded while the course waits in ``apheresed`` (or
``continued``, before the next course): the course's named states are kept. The product's own
status (collected, in manufacture, released, failed, infused) is derived from the record
(:func:`product_status`). Bags, lots and collections are the patient's own: a bag id that is not
on this patient's record is "not a bag of this patient's released lot", whoever it belongs to --
a refusal never names another patient.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Final, Literal

import msgspec

from .errors import ContextInputError, ProtocolInputError

if TYPE_CHECKING:
    from .building_blocks import Facts, Parsed, Payload
    from .record import PatientRecord

# ----------------------------------------------------------------------------------------------
# ISBT 128 donation identification number (DIN): ISO/IEC 7064 MOD 37-2 check character
# ----------------------------------------------------------------------------------------------

#: ISO 7064 values: 0-9 -> 0-9, A-Z -> 10-35, ``*`` -> 36 (the check character only).
_ISO7064 = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ*"
#: A DIN: 13 characters (facility 5, year 2, sequence 6); written with its check character.
DIN_LENGTH = 13


def din_check_character(din: str) -> str:
    """The eye-readable ISO/IEC 7064 MOD 37-2 check character of a 13-character DIN.

    >>> din_check_character("G123498654321")
    'H'
    """
    total = 0
    for char in din:
        total = ((total + _ISO7064.index(char)) * 2) % 37
    return _ISO7064[(38 - total) % 37]


def parse_din(value: Any, field: str) -> str:
    """A DIN with its check character: spaces are ignored, letters upper-cased; returns the 14
    characters (13 and the check character), or raises naming ``field``."""
    if not isinstance(value, str):
        raise ProtocolInputError(
            field, "must be a string: the 13-character ISBT 128 DIN and its check character"
        )
    text = value.replace(" ", "").upper()
    shape = (
        "an ISBT 128 DIN is 13 characters (facility code of 5 letters/digits, 2-digit year, "
        "6-digit sequence) followed by its ISO 7064 MOD 37-2 check character, e.g. "
        "'G1234 98 654321 H'"
    )
    if len(text) != DIN_LENGTH + 1:
        raise ProtocolInputError(field, f"has {len(text)} characters; {shape}")
    din, check = text[:DIN_LENGTH], text[DIN_LENGTH]
    if not all(c in _ISO7064[:36] for c in din) or not din[5:].isdigit():
        raise ProtocolInputError(field, f"{value!r} is not a DIN; {shape}")
    expected = din_check_character(din)
    if check != expected:
        raise ProtocolInputError(
            field,
            f"the check character of {din} is {expected}, not {check}: the number was misread "
            "or mistyped (ISO 7064 MOD 37-2)",
        )
    return text


# ----------------------------------------------------------------------------------------------
# Payloads: msgspec structs, converted at once; an invalid payload names every invalid field
# ----------------------------------------------------------------------------------------------

Text = str


class ReleaseTest(msgspec.Struct, forbid_unknown_fields=True):
    """One release test as the manufacturing lab reported it (the trial text sets no limits:
    the guard reads the lab's pass/fail)."""

    name: str
    result: str
    passed: bool


class BagLabel(msgspec.Struct, forbid_unknown_fields=True):
    bag_id: str
    #: The labelled count of the protocol's counted quantity (CAR-positive viable T cells).
    cells: float
    #: The fraction the bag is meant for: 1, 2 or 3 (D1 10 %, D2 30 %, D3 60 %).
    fraction: Literal[1, 2, 3]


class StartManufacture(msgspec.Struct, forbid_unknown_fields=True):
    lot_id: str
    #: The collection the lot is made from (default: the patient's latest collection).
    collection_id: str | None = None


class ReleaseProduct(msgspec.Struct, forbid_unknown_fields=True):
    lot_id: str
    decision: Literal["released", "rejected"]
    tests: list[ReleaseTest]
    #: Who released (or rejected) the lot: the qualified person of the manufacturing site.
    released_by: str
    #: The date the lot was manufactured (ISO date).
    manufactured_on: str
    #: The product's expiry (ISO date-time with its UTC offset); required for a released lot.
    expires_at: str | None = None
    bags: list[BagLabel] = []
    #: Why an out-of-specification lot is released all the same (recorded as a deviation).
    exception_reason: str | None = None


class BedsideCheck(msgspec.Struct, forbid_unknown_fields=True):
    """The product keys of ``give_infusion`` (its other keys are parsed by the infusion)."""

    bag_id: str
    #: The second person who verified patient and bag at the bedside (the first: the actor).
    verified_by: str
    #: When the bag was thawed (ISO date-time with its UTC offset).
    thawed_at: str


#: The product payloads by the names the schemas use (``schemas.py`` derives their schemas).
PRODUCT_PAYLOAD_TYPES: Final[dict[str, Any]] = {
    "start_manufacture": StartManufacture,
    "release_product": ReleaseProduct,
    "bedside_check": BedsideCheck,
}

_TEXT_MAX = 200


def _convert(payload: Mapping[str, Any], struct: type[Any], prefix: str = "payload") -> Any:
    """``payload`` as ``struct``: at once when valid; otherwise every invalid field is named."""
    try:
        return msgspec.convert(payload, struct, strict=True)
    except msgspec.ValidationError:
        pass
    problems: list[tuple[str, str]] = []
    fields = {f.name: f for f in msgspec.structs.fields(struct)}
    for key in payload:
        if key not in fields:
            problems.append((f"{prefix}.{key}", f"unknown; allowed keys: {', '.join(fields)}"))
    for name, f in fields.items():
        if name not in payload:
            if f.required:
                problems.append((f"{prefix}.{name}", "is required"))
            continue
        try:
            msgspec.convert(payload[name], f.type, strict=True)
        except msgspec.ValidationError as exc:
            where, _, what = str(exc).partition(" - at `$")
            inner = re.sub(r"\[(\d+)\]", r".\1", what.rstrip("`")) if what else ""
            path = f"{prefix}.{name}{inner}"
            missing = where.partition("missing required field `")[2].rstrip("`")
            if missing:
                path, where = f"{path}.{missing}", "is required"
            problems.append((path, where))
    if not problems:  # pragma: no cover - msgspec refused something no field check found
        problems.append((prefix, "is not valid"))
    first = problems[0][0]
    message = "; ".join(f"{p}: {m}" if p != first else m for p, m in problems)
    raise ProtocolInputError(first, message)


def _text(value: str, field: str, max_len: int = _TEXT_MAX) -> str:
    if not value.strip():
        raise ProtocolInputError(field, "must be a non-empty string")
    if len(value) > max_len:
        raise ProtocolInputError(field, f"must be at most {max_len} characters")
    return value.strip()


def _instant(value: str, field: str) -> dt.datetime:
    try:
        when = dt.datetime.fromisoformat(value)
    except ValueError:
        raise ProtocolInputError(
            field,
            f"must be an ISO date-time with its UTC offset, e.g. 2026-01-22T09:00:00+01:00, got {value!r}",
        ) from None
    if when.tzinfo is None:
        raise ProtocolInputError(field, "must carry its UTC offset (e.g. +01:00 or Z)")
    return when


def _date(value: str, field: str) -> dt.date:
    try:
        return dt.date.fromisoformat(value)
    except ValueError:
        raise ProtocolInputError(
            field, f"must be an ISO date, e.g. 2026-01-20, got {value!r}"
        ) from None


# ----------------------------------------------------------------------------------------------
# The collection (record_apheresis, repeat_apheresis)
# ----------------------------------------------------------------------------------------------


def parse_collection(payload: Mapping[str, Any]) -> dict[str, str] | None:
    """The collection's identifier from ``din`` (ISBT 128) or ``collection_id`` (the site's),
    or None when neither is given (a course whose product is not tracked)."""
    din = payload.get("din")
    site = payload.get("collection_id")
    if din is not None and site is not None:
        raise ProtocolInputError(
            "payload.collection_id",
            "give either din (ISBT 128) or collection_id (the site's own id), not both",
        )
    if din is not None:
        return {"id": parse_din(din, "payload.din"), "id_type": "isbt128"}
    if site is not None:
        if not isinstance(site, str):
            raise ProtocolInputError("payload.collection_id", "must be a non-empty string")
        return {"id": _text(site, "payload.collection_id"), "id_type": "site"}
    return None


def _check_new_collection(record: PatientRecord, collection: Mapping[str, str], field: str) -> None:
    if any(c["id"] == collection["id"] for c in record.collections):
        raise ContextInputError(field, f"collection {collection['id']} is already on record")


def parse_repeat_apheresis(
    record: PatientRecord, p: Payload, day: dt.date, ctx: Facts, seed: Facts
) -> Parsed:
    contraindication = p.get("apheresis_contraindication")
    if not isinstance(contraindication, bool):
        raise ProtocolInputError("payload.apheresis_contraindication", "must be true or false")
    collection = parse_collection(p)
    if collection is None:
        raise ProtocolInputError(
            "payload.din",
            "a new apheresis of a tracked product names its collection: din (ISBT 128) or "
            "collection_id (the site's own id)",
        )
    key = "din" if collection["id_type"] == "isbt128" else "collection_id"
    _check_new_collection(record, collection, f"payload.{key}")
    norm = {"apheresis_contraindication": contraindication, key: collection["id"]}
    facts = {
        "apheresis_contraindication": contraindication,
        "apheresis_date": day.isoformat(),
        "collection": collection,
    }
    return norm, facts


# ----------------------------------------------------------------------------------------------
# Manufacture and release
# ----------------------------------------------------------------------------------------------


def _lot_brief(record: PatientRecord) -> list[dict[str, Any]]:
    return [
        {"lot_id": k, "status": v["status"], "course_number": v["course_number"]}
        for k, v in record.lots.items()
    ]


def ctx_manufacture(record: PatientRecord) -> dict[str, Any]:
    return {
        "collections": [c["id"] for c in record.collections],
        "lots": _lot_brief(record),
        "course_number": len(record.courses) + 1,
        "consent_on_file": record.consent_on_file,
    }


def parse_start_manufacture(
    record: PatientRecord, p: Payload, day: dt.date, ctx: Facts, seed: Facts
) -> Parsed:
    data: StartManufacture = _convert(p, StartManufacture)
    lot_id = _text(data.lot_id, "payload.lot_id")
    if lot_id in record.lots:
        raise ContextInputError(
            "payload.lot_id", f"lot {lot_id} is already on record: a new lot has a new id"
        )
    collection = data.collection_id
    ids = [c["id"] for c in record.collections]
    if collection is None:
        if not ids:
            raise ContextInputError(
                "payload.collection_id",
                "no collection with an identifier is on record: record the apheresis with its "
                "din (ISBT 128) or collection_id first",
            )
        collection = ids[-1]
    else:
        wanted = collection.replace(" ", "").upper()
        match = [i for i in ids if i in (collection, wanted)]
        if not match:
            raise ContextInputError(
                "payload.collection_id",
                f"{collection!r} is not a collection of this patient; this patient's "
                f"collections: {', '.join(ids) or 'none'}",
            )
        collection = match[0]
    norm = {"lot_id": lot_id, "collection_id": collection}
    return norm, {**norm, "manufacture_started_on": day.isoformat()}


def ctx_release(record: PatientRecord) -> dict[str, Any]:
    return {"lots": _lot_brief(record), "course_number": len(record.courses) + 1}


def parse_release(
    record: PatientRecord, p: Payload, day: dt.date, ctx: Facts, seed: Facts
) -> Parsed:
    data: ReleaseProduct = _convert(p, ReleaseProduct)
    lot_id = _text(data.lot_id, "payload.lot_id")
    lot = record.lots.get(lot_id)
    if lot is None:
        raise ContextInputError(
            "payload.lot_id",
            f"no lot {lot_id!r} of this patient is on record; this patient's lots: "
            f"{', '.join(record.lots) or 'none'} (start_manufacture records a lot)",
        )
    if not data.tests:
        raise ProtocolInputError(
            "payload.tests",
            "a release decision lists the release tests as the manufacturing lab reported them "
            "(name, result, passed); none were given",
        )
    tests = []
    for i, t in enumerate(data.tests):
        tests.append(
            {
                "name": _text(t.name, f"payload.tests.{i}.name"),
                "result": _text(t.result, f"payload.tests.{i}.result", 500),
                "passed": t.passed,
            }
        )
    released_by = _text(data.released_by, "payload.released_by")
    manufactured = _date(data.manufactured_on, "payload.manufactured_on")
    if manufactured > day:
        raise ProtocolInputError(
            "payload.manufactured_on", f"{manufactured} is after the release decision ({day})"
        )
    started = lot.get("started_on")
    if isinstance(started, str) and manufactured < dt.date.fromisoformat(started):
        raise ProtocolInputError(
            "payload.manufactured_on",
            f"{manufactured} is before the lot's manufacture started ({started})",
        )
    norm: dict[str, Any] = {
        "lot_id": lot_id,
        "decision": data.decision,
        "tests": tests,
        "released_by": released_by,
        "manufactured_on": manufactured.isoformat(),
    }
    if data.decision == "released":
        if data.expires_at is None:
            raise ProtocolInputError(
                "payload.expires_at", "a released product has an expiry (ISO date-time)"
            )
        expires = _instant(data.expires_at, "payload.expires_at")
        if expires.date() <= manufactured:
            raise ProtocolInputError(
                "payload.expires_at",
                f"{data.expires_at} is not after manufacture ({manufactured}): an expiry "
                "follows the date of manufacture",
            )
        if not data.bags:
            raise ProtocolInputError(
                "payload.bags",
                "a released lot lists its bags (bag_id, labelled cells, fraction 1, 2 or 3)",
            )
        bags = []
        seen: set[str] = set()
        for i, b in enumerate(data.bags):
            bag_id = _text(b.bag_id, f"payload.bags.{i}.bag_id")
            if bag_id in seen or bag_id in record.bags:
                raise ContextInputError(
                    f"payload.bags.{i}.bag_id", f"bag {bag_id} is already on record"
                )
            seen.add(bag_id)
            if not (b.cells > 0 and b.cells < 1e12):
                raise ProtocolInputError(
                    f"payload.bags.{i}.cells", "must be a positive cell count below 1e12"
                )
            bags.append({"bag_id": bag_id, "cells": float(b.cells), "fraction": b.fraction})
        norm["expires_at"] = data.expires_at
        norm["bags"] = bags
    elif data.bags:
        raise ProtocolInputError("payload.bags", "a rejected lot has no bags to infuse")
    if data.exception_reason is not None:
        norm["exception_reason"] = _text(data.exception_reason, "payload.exception_reason", 2000)
    facts = {**norm, "lot_status": lot["status"]}
    return norm, facts


def release_outcome(
    trigger: str, facts: Mapping[str, Any], probe: Any, params: Any
) -> dict[str, Any]:
    failed = [t["name"] for t in facts["tests"] if not t["passed"]]
    out_of_spec = facts["decision"] == "released" and bool(failed)
    deviations = (
        [f"lot {facts['lot_id']} released out of specification: {', '.join(failed)} failed"]
        if out_of_spec
        else []
    )
    return {
        "lot_id": facts["lot_id"],
        "decision": facts["decision"],
        "failed_tests": failed,
        "out_of_specification": out_of_spec,
        "bags": [b["bag_id"] for b in facts.get("bags", ())],
        "deviations": deviations,
    }


# ----------------------------------------------------------------------------------------------
# The bedside check (give_infusion)
# ----------------------------------------------------------------------------------------------

BEDSIDE_KEYS = ("bag_id", "verified_by", "thawed_at")


def product_tracked(record: PatientRecord) -> bool:
    """A collection with an identifier is on record: every infusion names a released bag."""
    return bool(record.collections)


def with_product(context: Any) -> Any:
    """An infusion's context with what the bedside check reads from the record."""

    def build(record: PatientRecord) -> dict[str, Any]:
        facts: dict[str, Any] = context(record)
        if record.collections:
            number = facts.get("course_number")
            facts["product_tracked"] = True
            facts["bags_available"] = sum(
                1
                for b in record.bags.values()
                if b.get("infused_version") is None
                and record.lots[b["lot_id"]]["status"] == "released"
                and record.lots[b["lot_id"]]["course_number"] == number
                and b["fraction"] == facts.get("day")
            )
        return facts

    return build


def bag_facts(record: PatientRecord, bag_id: str) -> dict[str, Any] | None:
    """The bag as the rules read it (None: not a bag of this patient)."""
    bag = record.bags.get(bag_id)
    if bag is None:
        return None
    lot = record.lots[bag["lot_id"]]
    return {
        "bag_id": bag_id,
        "lot_id": bag["lot_id"],
        "collection_id": lot["collection_id"],
        "lot_status": lot["status"],
        "lot_course": lot["course_number"],
        "expires_at": lot.get("expires_at"),
        "cells": bag["cells"],
        "fraction": bag["fraction"],
        "infused_version": bag.get("infused_version"),
    }


def parse_bedside(
    record: PatientRecord, p: Mapping[str, Any], ctx: Mapping[str, Any] | None = None
) -> tuple[dict[str, Any], dict[str, Any]] | None:
    """The bedside keys of ``give_infusion`` (None when no bag is named). ``ctx`` holding the
    same bag: a recorded infusion read again (a correction), judged on the bag as it was when
    it was given (the record now says the bag was infused: by this very infusion)."""
    given = {k: p[k] for k in BEDSIDE_KEYS if k in p}
    if not given:
        return None
    check: BedsideCheck = _convert(given, BedsideCheck)
    bag_id = _text(check.bag_id, "payload.bag_id")
    verified_by = _text(check.verified_by, "payload.verified_by")
    _instant(check.thawed_at, "payload.thawed_at")
    recorded = ctx.get("bag") if ctx is not None and ctx.get("bag_id") == bag_id else None
    bag = dict(recorded) if isinstance(recorded, Mapping) else bag_facts(record, bag_id)
    if bag is None:
        raise ContextInputError("payload.bag_id", unknown_bag(bag_id))
    norm = {"bag_id": bag_id, "verified_by": verified_by, "thawed_at": check.thawed_at}
    return norm, {**norm, "bag": bag}


def default_cells(record: PatientRecord, p: Mapping[str, Any]) -> Mapping[str, Any]:
    """``give_infusion``'s payload with the named bag's labelled count as its cells when no
    count is given (no bag named: cells are required)."""
    if "cells" in p:
        return p
    bag = record.bags.get(p["bag_id"]) if isinstance(p.get("bag_id"), str) else None
    if bag is None:
        raise ProtocolInputError(
            "payload.cells",
            "is required for give_infusion unless a bag of this patient's released lot is "
            "named (bag_id: its labelled count is the default)",
        )
    return {**p, "cells": {"value": bag["cells"], "unit": "cells"}}


def unknown_bag(bag_id: str) -> str:
    """A bag not on this patient's record: whose it is, is not said (nor looked up)."""
    return (
        f"bag {bag_id!r} is not a bag of this patient's released lot for this course: do not "
        "infuse it; check the bag's label against the patient's identity"
    )


def bedside_problem(facts: Mapping[str, Any], thaw_minutes: int) -> str | None:
    """Why the bedside check fails for these facts (None: it holds). Never names another
    patient: a bag not on this patient's record is only "not a bag of this patient"."""
    if "bag_id" not in facts:
        if facts.get("product_tracked"):
            return (
                "this patient's product is tracked: name the bag of this patient's released lot "
                "(payload.bag_id), the second verifier (payload.verified_by) and the thaw time "
                "(payload.thawed_at)"
            )
        return None
    bag_id = facts["bag_id"]
    bag = facts.get("bag")
    if bag is None:
        return "payload.bag_id: " + unknown_bag(bag_id)
    if bag["lot_status"] != "released":
        status = "rejected (failed release)" if bag["lot_status"] == "rejected" else "not released"
        return f"payload.bag_id: bag {bag_id} is of lot {bag['lot_id']}, which is {status}"
    if bag["lot_course"] != facts.get("course_number"):
        return (
            f"payload.bag_id: bag {bag_id} was released for course {bag['lot_course']}, "
            f"not for course {facts.get('course_number')}"
        )
    if bag.get("infused_version") is not None:
        return (
            f"payload.bag_id: bag {bag_id} was already infused (version {bag['infused_version']})"
        )
    if bag["fraction"] != facts.get("day"):
        return f"payload.bag_id: bag {bag_id} is labelled for D{bag['fraction']}, not D{facts.get('day')}"
    infused = facts.get("infused_at")
    when = dt.datetime.fromisoformat(infused) if isinstance(infused, str) else None
    expires = bag.get("expires_at")
    if when is not None and isinstance(expires, str) and when > dt.datetime.fromisoformat(expires):
        return f"payload.bag_id: bag {bag_id} expired at {expires}; it is infused at {infused}"
    thawed = dt.datetime.fromisoformat(facts["thawed_at"])
    if when is not None and when.tzinfo is not None:
        if thawed > when:
            return f"payload.thawed_at: {facts['thawed_at']} is after the infusion ({infused})"
        minutes = (when - thawed).total_seconds() / 60
        if minutes > thaw_minutes:
            return (
                f"payload.thawed_at: bag {bag_id} was thawed {minutes:.0f} minutes before the "
                f"infusion; the thaw limit is {thaw_minutes} minutes"
            )
    first = str(facts.get("administered_by") or "").strip().casefold()
    second = str(facts.get("verified_by") or "").strip().casefold()
    if not second or second == first:
        return (
            "payload.verified_by: the second verifier at the bedside must be another person "
            f"than the one giving the infusion ({facts.get('administered_by')})"
        )
    return None


def count_problem(facts: Mapping[str, Any], tolerance: float) -> str | None:
    """Why the delivered count departs from the bag's label by more than ``tolerance``."""
    bag = facts.get("bag")
    cells = facts.get("cells")
    if not bag or not isinstance(cells, (int, float)):
        return None
    label = float(bag["cells"])
    if label > 0 and abs(cells - label) / label > tolerance + 1e-9:
        return (
            f"{cells:.3g} cells delivered against {label:.3g} on the label of bag "
            f"{bag['bag_id']} ({(cells - label) / label:+.0%}); the tolerance is ±{tolerance:.0%}"
        )
    return None


# ----------------------------------------------------------------------------------------------
# What the product's moves do to the record (assign only)
# ----------------------------------------------------------------------------------------------

PRODUCT_TRIGGERS = frozenset({"start_manufacture", "release_product", "repeat_apheresis"})


def evolve_product(
    record: PatientRecord,
    trigger: str,
    facts: Mapping[str, Any],
    outcome: Mapping[str, Any],
    occurred_at: str,
    version: int,
) -> None:
    if trigger in ("record_apheresis", "repeat_apheresis"):
        collection = facts.get("collection")
        if isinstance(collection, Mapping):
            record.collections.append(
                {
                    "id": collection["id"],
                    "id_type": collection["id_type"],
                    "collected_on": facts.get("apheresis_date"),
                    "version": version,
                }
            )
        if trigger == "repeat_apheresis":
            record.apheresis_date = facts.get("apheresis_date")
    elif trigger == "start_manufacture":
        record.lots[facts["lot_id"]] = {
            "lot_id": facts["lot_id"],
            "collection_id": facts["collection_id"],
            "course_number": facts.get("course_number", len(record.courses) + 1),
            "status": "in_manufacture",
            "started_on": facts.get("manufacture_started_on"),
            "version": version,
        }
    elif trigger == "release_product":
        lot = record.lots.get(facts["lot_id"])
        if lot is None:
            return
        lot.update(
            status=facts["decision"],
            decided_at=occurred_at,
            released_by=facts.get("released_by"),
            manufactured_on=facts.get("manufactured_on"),
            expires_at=facts.get("expires_at"),
            failed_tests=list(outcome.get("failed_tests", ())),
            exception_reason=facts.get("exception_reason"),
            release_version=version,
        )
        for b in facts.get("bags", ()):
            record.bags[b["bag_id"]] = {
                "bag_id": b["bag_id"],
                "lot_id": facts["lot_id"],
                "cells": b["cells"],
                "fraction": b["fraction"],
                "infused_version": None,
            }
        for text in outcome.get("deviations", ()):
            record.deviations.append(
                {
                    "version": version,
                    "trigger": trigger,
                    "course": lot["course_number"],
                    "deviation": text,
                    "reason": facts.get("exception_reason"),
                    "occurred_at": occurred_at,
                }
            )
    elif trigger.startswith("infuse_d"):
        bag = record.bags.get(str(facts.get("bag_id")))
        if bag is not None and bag.get("infused_version") is None:
            bag["infused_version"] = version
            bag["infused_at"] = occurred_at


def product_status(record: PatientRecord) -> str | None:
    """The patient's product as the monitors read it: collected, in manufacture, released,
    failed, infused (None: no product tracked); "in_manufacture" is written with an underscore."""
    if not record.collections:
        return None
    if not record.lots:
        return "collected"
    lot = list(record.lots.values())[-1]
    status = lot["status"]
    if status == "in_manufacture":
        return "in_manufacture"
    if status == "rejected":
        return "failed"
    bags = [b for b in record.bags.values() if b["lot_id"] == lot["lot_id"]]
    if bags and any(b.get("infused_version") is not None for b in bags):
        return "infused"
    return "released"


def manufacturing_failures(record: PatientRecord) -> int:
    return sum(1 for lot in record.lots.values() if lot["status"] == "rejected")


def vein_to_vein_days(record: PatientRecord) -> int | None:
    """Days from the apheresis of the first infused lot's collection to its D1."""
    for bag in record.bags.values():
        if bag.get("infused_version") is None:
            continue
        lot = record.lots[bag["lot_id"]]
        collected = next(
            (c["collected_on"] for c in record.collections if c["id"] == lot["collection_id"]),
            None,
        )
        infused = bag.get("infused_at")
        if isinstance(collected, str) and isinstance(infused, str):
            return (dt.date.fromisoformat(infused[:10]) - dt.date.fromisoformat(collected)).days
    return None


def product_summary(record: PatientRecord) -> dict[str, Any] | None:
    if not record.collections:
        return None
    return {
        "status": product_status(record),
        "collections": [dict(c) for c in record.collections],
        "lots": [dict(v) for v in record.lots.values()],
        "bags": [dict(v) for v in record.bags.values()],
        "manufacturing_failures": manufacturing_failures(record),
        "vein_to_vein_days": vein_to_vein_days(record),
    }
