"""A patient's site (issue 17), as the protocol sees it: pure, no store, no clock.

A patient belongs to one site from ``screen`` on (the screening payload's ``site``); a
``transfer_site`` moves them to another, with a reason. Which sites exist and which are active
is the trial's configuration, kept in the store beside the tokens (``cart_course.sites``); the
service checks a site against it before the protocol runs. Here: the form of a site id, the
default site of patients recorded before sites existed, and the payloads.

Patients screened before this change (stores of the previous release) carry no site: they are in
:data:`DEFAULT_SITE`, ``S00`` "Unassigned (before sites)", without any stored event being
rewritten (the record's default; a transfer moves them to a real site).
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Mapping
from typing import Any

from . import building_blocks as blocks
from .building_blocks import Facts, Parsed, Payload
from .errors import ProtocolInputError
from .machine import Probe
from .parameters import ProtocolParameters
from .record import DEFAULT_SITE, PatientRecord

__all__ = ["DEFAULT_SITE", "DEFAULT_SITE_NAME", "check_site_id"]
DEFAULT_SITE_NAME = "Unassigned (before sites)"
#: A site id: 1-16 upper-case letters, digits, ``-`` or ``_``, starting with a letter or digit.
SITE_ID_PATTERN = r"^[A-Z0-9][A-Z0-9_-]{0,15}$"
_SITE_ID = re.compile(SITE_ID_PATTERN, re.ASCII)
SITE_ID_HINT = "1-16 upper-case letters, digits, '-' or '_' (e.g. S01)"
#: The site id's JSON Schema.
SITE_SCHEMA: dict[str, Any] = {
    "type": "string",
    "pattern": SITE_ID_PATTERN,
    "description": "The site's id (see 'cart-course sites list'), " + SITE_ID_HINT,
}


def check_site_id(value: object, field: str = "site") -> str:
    """A site id as given, or :class:`ProtocolInputError` naming ``field``."""
    if not isinstance(value, str) or not _SITE_ID.fullmatch(value):
        shown = repr(value) if isinstance(value, str) and len(value) <= 40 else "it"
        raise ProtocolInputError(field, f"{shown} is not a site id: {SITE_ID_HINT}")
    return value


def parse_screen_payload(
    record: PatientRecord, p: Payload, day: dt.date, ctx: Facts, seed: Facts
) -> Parsed:
    """The screening (``building_blocks.parse_screening_payload``) and the patient's site."""
    site = check_site_id(p["site"], "payload.site") if p.get("site") is not None else None
    norm, facts = blocks.parse_screening_payload(record, p, day, ctx, seed)
    if site is not None:
        norm["site"] = site
        facts["site"] = site
    return norm, facts


def parse_transfer(
    record: PatientRecord, p: Payload, day: dt.date, ctx: Facts, seed: Facts
) -> Parsed:
    site = check_site_id(p.get("site"), "payload.site")
    return {"site": site}, {"site": site, "from_site": record.site}


def transfer_outcome(
    trigger: str, facts: Mapping[str, Any], probe: Probe, params: ProtocolParameters
) -> dict[str, Any]:
    return {"from_site": facts.get("from_site"), "to_site": facts.get("site")}


def site_of_facts(facts: Mapping[str, Any]) -> str | None:
    """The site a screening or transfer put the patient in (None: a screening without one)."""
    site = facts.get("site")
    return site if isinstance(site, str) else None
