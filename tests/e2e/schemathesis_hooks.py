"""schemathesis hooks of ``test_schemathesis.py`` (loaded with ``SCHEMATHESIS_HOOKS``).

The OpenAPI document states every constraint JSON Schema and OpenAPI can state. A few rules of
the server they cannot (a bound relative to the clock or to the log, a rule between two
parameters); each is stated in the document's descriptions, and here each generated request is
kept to it just before it is sent (``before_call``: schemathesis then judges again whether the
request is schema-valid). Nothing else is changed, so every check still sees every other
request as generated.

1. A JSON integer is written without a fraction: ``4.0`` is refused where an integer is due
   (JSON Schema counts 4.0 as an integer). Integral floats are sent as integers.
2. A clinical time (``occurred_at``) is not more than 5 minutes in the future.
3. A header and its twin in the body agree (``If-Match`` / ``expected_version``,
   ``Idempotency-Key`` / ``idempotency_key``): when both are sent and differ, the header is left
   out.
4. ``as-of`` takes exactly one of ``version``, ``recorded_at``, ``occurred_at``.
5. ``wait_for`` names a position the log has reached; the overdue board's ``after`` is a place
   in its order (the ``after`` of a previous page), and a sorted board is not paged (``after``
   is "not with sort"): left out here.
6. The event stream is endless: it is asked for at most 3 events after position 0.

Payload rules between two values that no JSON Schema can state (each is named in its payload
schema's description, "Not stated by this schema"):

7. The last systemic glucocorticoid dose is on or before the screening date (occurred_at's date).
8. An ICE score (a CAPD score, issue 20) given with its items equals their sum (the score is left out).
9. A dose in cells/kg times the course's weight is at most 1e12 cells (kept to 2.5e9 cells/kg,
   1e12 cells at the heaviest plausible weight of 400 kg).
10. A response assessment records the values its classification needs, or a clinician's
    response with a reason: a ``clinician_response`` ("NR") and a reason are added when absent.
11. An idempotency key names one command: a key sent again with a different command is an
    ``idempotency_conflict`` (422, as the IETF Idempotency-Key draft says). The generated key
    (body and header) gets the digest of the command, its path's parameters and the role
    appended, so one key is one command of one role. Rules 3 and 7-15 change positive cases
    only: a negative case changed is judged again by schemathesis (and rule 3 once turned a
    negative case into a valid one, recorded with its key as generated).
12. A data cut-off (``as_of`` of the CDISC exports) is not before the first event was recorded
    nor in the future: a generated one outside is moved to the first event's record time.
13. A checkpoint to verify is signed by a key given (by default the service's own): no schema
    can state a signature, so a generated checkpoint (of the document's pattern) is replaced
    with the one the service signed, and generated public keys with the service's key.
14. A signature's ``printed_name`` is the name registered with the signer's token (21 CFR
    11.50): a rule between the body and the token, set to the token's registered name.
15. A DIN's last character is its ISO 7064 MOD 37-2 check character: recomputed.
16. A site becomes aware of an event (``aware_at`` of an adverse event or a death) at or after
    it happened (``occurred_at``): an earlier one is set to ``occurred_at``.
17. A token is limited to sites the trial defines (the demo's S01-S03), and only a service,
    clinician or monitor token (issue 17): a generated site list (an empty one too: it is
    refused, never read as "no limit") is replaced by ["S01"], or left out for another role.
18. A screening or a transfer names a site the trial defines: which sites exist is the
    trial's state, not something a schema states; a generated site is replaced by "S02".
19. A view's ``site`` filter (the board, its CSV, the watchlist, counts, deviations) names a
    site the trial defines (another is refused, 422): a generated one is replaced by "S02".
20. The audit report's and the conformance's ``as_of`` (a record time) is not before the
    patient was registered: which time that is is the log's state; a generated one is "now".
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import re
from collections.abc import MutableMapping
from typing import Any

import schemathesis

from cart_course.protocol.product import din_check_character
from cart_course.protocol.sites import SITE_ID_PATTERN

#: The log's last position when the run starts (it only grows).
LAST_POSITION = int(os.environ.get("CART_COURSE_TEST_LAST_POSITION", "0"))
#: When the log's first event was recorded (RFC 3339).
FIRST_RECORDED = os.environ.get("CART_COURSE_TEST_FIRST_RECORDED", "")
#: A checkpoint the service signed, and the service's public key line.
CHECKPOINT = os.environ.get("CART_COURSE_TEST_CHECKPOINT", "")
PUBLIC_KEY = os.environ.get("CART_COURSE_TEST_PUBLIC_KEY", "")
#: The name registered with the run's token (a signature's printed name).
SIGNER_NAME = os.environ.get("CART_COURSE_TEST_SIGNER_NAME", "")
PAST = "2026-01-02T03:04:05Z"


def _integers(value: Any) -> Any:
    if isinstance(value, float) and value.is_integer() and abs(value) < 2**63:
        return int(value)
    if isinstance(value, dict):
        return {k: _integers(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_integers(v) for v in value]
    return value


def _time(value: Any) -> dt.datetime | None:
    """An RFC 3339 time with its offset, or None."""
    if not isinstance(value, str):
        return None
    try:
        when = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return when if when.tzinfo is not None else None


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _in_the_future(value: Any) -> bool:
    when = _time(value)
    return when is not None and when > _now()


def _pairs(a: Any, b: Any) -> list[tuple[Any, Any]]:
    """The leaves of two JSON values of the same shape, side by side."""
    if isinstance(a, dict) and isinstance(b, dict):
        return [p for k in a.keys() & b.keys() for p in _pairs(a[k], b[k])]
    if isinstance(a, list) and isinstance(b, list):
        return [p for x, y in zip(a, b, strict=False) for p in _pairs(x, y)]
    return [(a, b)]


def _number(value: Any) -> int | None:
    """A query value as a whole number (schemathesis may hold it as text), or None."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, str) and value.isdigit():
        return int(value)
    return None


def _header(headers: dict[str, Any], name: str) -> str | None:
    for key in list(headers):
        if key.lower() == name.lower():
            return key
    return None


def _version_of(tag: Any) -> int | None:
    if isinstance(tag, str) and tag.strip('"').isdigit():
        return int(tag.strip('"'))
    return None


def _positive(case: Any) -> bool:
    """Rules 7-11 keep schema-valid requests to them; a negative case (one schemathesis made
    invalid, e.g. without its Authorization header) is left as generated: changing it would make
    schemathesis judge it again and send the header it meant to leave out."""
    mode = getattr(getattr(getattr(case, "meta", None), "generation", None), "mode", None)
    return mode is None or not getattr(mode, "is_negative", False)


def _valid_key(value: Any) -> bool:
    """A key as the document states it (1-200 characters, not blank): rewritten, it stays one."""
    return isinstance(value, str) and 0 < len(value) <= 200 and bool(value.strip())


def _one_key_one_command(
    body: dict[str, Any], headers: Any, path: str, path_parameters: Any
) -> None:
    """Rule 11 (in place). The digest holds the path's parameters (the patient of a
    per-patient route) and the role: every role's run shares one server, and a key of another
    actor is a conflict (issue 14), not a retry."""
    content = {k: v for k, v in body.items() if k != "idempotency_key"}
    digest = hashlib.sha256(
        json.dumps(
            [path, path_parameters, content, os.environ.get("CART_COURSE_TEST_ROLE", "")],
            sort_keys=True,
            default=str,
        ).encode()
    ).hexdigest()[:12]
    key = body.get("idempotency_key")
    if _valid_key(key) and not key.endswith(f"-{digest}"):  # (a case sent again: once)
        body["idempotency_key"] = f"{key[:150]}-{digest}"
    if isinstance(headers, MutableMapping):
        name = _header(dict(headers), "Idempotency-Key")
        value = headers.get(name) if name is not None else None
        if name is not None and _valid_key(value) and not value.endswith(f"-{digest}"):
            headers[name] = f"{value[:150]}-{digest}"


def _payload_rules(body: dict[str, Any]) -> None:
    """Rules 7-10 and 14-16 (in place)."""
    payload = body.get("payload")
    if not isinstance(payload, dict):
        return
    screening = payload.get("screening")
    occurred = body.get("occurred_at")
    if isinstance(screening, dict) and isinstance(occurred, str) and len(occurred) >= 10:
        last = screening.get("last_systemic_glucocorticoid")
        if isinstance(last, str) and last != "none" and last > occurred[:10]:
            screening["last_systemic_glucocorticoid"] = occurred[:10]
    toxicity = payload.get("toxicity")
    if isinstance(toxicity, dict):
        observations = toxicity.get("observations")
        if isinstance(observations, dict) and isinstance(observations.get("ice_items"), dict):
            observations.pop("ice_score", None)
        if isinstance(observations, dict) and isinstance(observations.get("capd_items"), dict):
            observations.pop("capd_score", None)  # the CAPD items and their sum (issue 20)
    cells = payload.get("cells")
    if isinstance(cells, dict) and cells.get("unit") == "cells/kg":
        value = cells.get("value")
        if isinstance(value, int | float) and value > 2.5e9:
            cells["value"] = 2.5e9
    for holder in (payload, payload.get("adverse_event")):
        if isinstance(holder, dict) and isinstance(occurred, str):
            aware, event = _time(holder.get("aware_at")), _time(occurred)
            if aware is not None and event is not None and aware < event:
                holder["aware_at"] = occurred
    din = payload.get("din")
    if isinstance(din, str):
        compact = din.replace(" ", "").upper()
        if len(compact) == 14 and compact[:13].isascii() and compact[:13].isalnum():
            payload["din"] = compact[:13] + din_check_character(compact[:13])
    if isinstance(payload.get("site"), str):
        # rule 18: a site the trial defines (the demo's S01-S03)
        payload["site"] = "S02"
    if isinstance(payload.get("printed_name"), str) and SIGNER_NAME:
        payload["printed_name"] = SIGNER_NAME
    if "assessment" in payload:
        if "clinician_response" not in payload:
            payload["clinician_response"] = "NR"
        if not isinstance(body.get("reason"), str) or not body["reason"].strip():
            body["reason"] = "assessed by the clinician"


def _signed_checkpoint(body: dict[str, Any]) -> None:
    """Rule 13 (in place)."""
    if isinstance(body.get("checkpoint"), str) and CHECKPOINT:
        body["checkpoint"] = CHECKPOINT
    keys = body.get("public_keys")
    if isinstance(keys, list) and keys and PUBLIC_KEY:
        body["public_keys"] = [PUBLIC_KEY for _ in keys]


@schemathesis.hook
def before_call(context: Any, case: Any, kwargs: dict[str, Any]) -> None:
    path = case.operation.path
    body = case.body
    if isinstance(body, (dict, list)):
        fixed = _integers(body)
        if isinstance(fixed, dict) and _in_the_future(fixed.get("occurred_at")):
            fixed["occurred_at"] = PAST
        if isinstance(fixed, dict) and _positive(case):
            _payload_rules(fixed)
            if path == "/v1/audit/verify":
                _signed_checkpoint(fixed)
            _one_key_one_command(fixed, case.headers, path, case.path_parameters)
        if fixed != body or any(type(a) is not type(b) for a, b in _pairs(fixed, body)):
            case.body = fixed
        body = fixed
    headers = case.headers if isinstance(case.headers, MutableMapping) else None
    # Rule 3 on positive cases only: dropping a header of a negative case made it a valid one,
    # which was then recorded with its generated key as it was ("0", the same in every role's
    # run: the clinician's run then met the service's key, issue 21)
    if headers is not None and isinstance(body, dict) and _positive(case):
        key = _header(headers, "If-Match")
        if key is not None:
            header_version = _version_of(headers[key])
            body_version = body.get("expected_version")
            if (
                header_version is not None
                and isinstance(body_version, int)
                and header_version != body_version
            ):
                del headers[key]
        key = _header(headers, "Idempotency-Key")
        body_key = body.get("idempotency_key")
        if key is not None and isinstance(body_key, str) and headers[key] != body_key:
            del headers[key]
    if (
        path == "/v1/tokens"
        and isinstance(body, dict)
        and "sites" in body
        and (_positive(case) or body["sites"] == [])  # [] is schema-valid, and refused
    ):
        _token_sites(body)
        case.body = body
    query = case.query if isinstance(case.query, MutableMapping) else None
    if query is None:
        return
    if path.endswith("/as-of"):
        given = [k for k in ("version", "recorded_at", "occurred_at") if k in query]
        for extra in given[1:]:
            del query[extra]
        if not given:
            query["version"] = 1
    site = query.get("site")
    if site is not None and re.fullmatch(SITE_ID_PATTERN, str(site)):
        query["site"] = "S02"  # rule 19: a site the trial defines (a malformed one stays)
    wait_for = _number(query.get("wait_for"))
    if wait_for is not None and wait_for > LAST_POSITION:
        query["wait_for"] = LAST_POSITION
    if (
        path == "/v1/board"
        and (query.get("overdue") in (True, "true") or "sort" in query)
        and "after" in query
    ):
        del query["after"]
    cutoff = query.get("as_of")
    if path.startswith("/v1/exports/") and isinstance(cutoff, str) and FIRST_RECORDED:
        when = _time(cutoff)
        first = _time(FIRST_RECORDED)
        if when is not None and first is not None and not first <= when <= _now():
            query["as_of"] = FIRST_RECORDED
    audited = path.endswith(("/report.html", "/conformance"))
    if audited and _time(cutoff) is not None:  # a well-formed time (a malformed one stays)
        query["as_of"] = _now().isoformat()  # rule 20: at or after the patient's registration
    if path == "/v1/events/stream":
        query["after"] = 0
        max_events = _number(query.get("max_events"))
        if max_events is None or max_events > 3:
            query["max_events"] = 3


def _token_sites(body: dict[str, Any]) -> None:
    """Rule 12: a token's sites are the trial's, for the roles that may be limited."""
    if body.get("role") in ("service", "clinician", "monitor"):
        body["sites"] = ["S01"]
    else:
        del body["sites"]
