"""ODM 1.3.2 ClinicalData with the audit trail: every value with its AuditRecord, corrections as
updates that keep the value they replace, e-signatures as ODM Signatures.

The file is **transactional** (``FileType="Transactional"``): each recorded event is one
SubjectData transaction in record order, so an auditor reads the history as it was recorded:

- a move inserts an ItemGroupData (repeat key: the event's version) in the form of its event
  kind (:data:`EVENT_FORMS`), in the study event of its phase (screening, apheresis, the course
  by number, disposition); every ItemData carries an AuditRecord (user, location, the record
  time, the reason when one was given, the event's version and hash as SourceID);
- a correction updates the ItemData it changed in that same ItemGroupData, with its own
  AuditRecord and ReasonForChange: the earlier insert still shows the value it replaced;
- a signature is a Signature on that ItemGroupData (user, location, SignatureDef of its meaning,
  the record time).

AdminData lists the users (every actor), the location and the SignatureDefs; the
MetaDataVersion describes every study event, form, item group and item the file uses. The
ClinicalData is written as it is read (a spooled temporary file), so the log is never in memory.
"""

from __future__ import annotations

import functools
import json
import re
import tempfile
from typing import IO, Any, Final
from xml.sax.saxutils import escape, quoteattr

from ..audit.log import CORRECTED, MOVED, REGISTERED, SIGNED, LoggedEvent, site_after
from ..protocol.record import DEFAULT_SITE
from .source import STUDY_ID, STUDY_NAME, Cut

MDV_OID = "MDV.CART_COURSE.1"

#: Event type -> (study event OID, form name). A new event kind adds a line here; an event kind
#: not listed gets a form of its own in SE.OTHER.
EVENT_FORMS: Final[dict[str, tuple[str, str]]] = {
    "Screened": ("SE.SCREENING", "Screening"),
    "Rescreened": ("SE.SCREENING", "Rescreening"),
    "ApheresisRecorded": ("SE.APHERESIS", "Apheresis and product"),
    "InfusionGiven": ("SE.COURSE", "Fraction"),
    "FractionsCancelled": ("SE.COURSE", "Remaining fractions cancelled"),
    "ToxicityReported": ("SE.COURSE", "Toxicity / adverse event"),
    "ToxicityResolved": ("SE.COURSE", "Toxicity resolved"),
    "ResponseAssessed": ("SE.COURSE", "Response assessment"),
    "CourseContinued": ("SE.COURSE", "Course continued"),
    "TreatmentCeased": ("SE.DISPOSITION", "Treatment ceased"),
    "TreatmentDiscontinued": ("SE.DISPOSITION", "Treatment discontinued"),
    "Withdrawn": ("SE.DISPOSITION", "Withdrawal"),
    "DeathRecorded": ("SE.DISPOSITION", "Death"),
}
STUDY_EVENTS: Final[dict[str, tuple[str, bool]]] = {
    "SE.SCREENING": ("Screening", False),
    "SE.APHERESIS": ("Apheresis", False),
    "SE.COURSE": ("Treatment course", True),
    "SE.FOLLOWUP": ("Follow-up", True),
    "SE.DISPOSITION": ("Disposition", False),
    "SE.OTHER": ("Other records", False),
}
#: The parts of a moved event that are its data (the rest is the audit trail's).
ITEM_SOURCES: Final = ("facts", "outcome")
MEANINGS: Final[dict[str, str]] = {
    "authorship": "I am the author of this record",
    "approval": "I approve this record",
    "review": "I have reviewed this record",
}


@functools.lru_cache(maxsize=4096)
def _oid(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "_", text).strip("_").upper()


def form_oid(event_type: str) -> str:
    return f"F.{_oid(event_type)}"


def items(facts: dict[str, Any], outcome: dict[str, Any]) -> dict[str, Any]:
    """An event's data as ItemOID -> value (nested objects flattened; lists as JSON text)."""
    out: dict[str, Any] = {}
    for source, data in (("facts", facts), ("outcome", outcome)):
        _flatten(out, source, data)
    return out


def _flatten(out: dict[str, Any], prefix: str, data: Any) -> None:
    if isinstance(data, dict):
        for key in sorted(data):
            if key.startswith("_"):
                continue
            _flatten(out, f"{prefix}.{key}", data[key])
        return
    out[f"IT.{_oid(prefix)}"] = data


def _value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list | dict):
        return json.dumps(value, ensure_ascii=False, sort_keys=True, separators=(",", ":"))
    return str(value)


def _datatype(values: set[str]) -> str:
    if values <= {"boolean"}:
        return "boolean"
    if values <= {"integer"}:
        return "integer"
    if values <= {"integer", "float"}:
        return "float"
    return "text"


def _kind(value: Any) -> str:
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "float"
    return "text"


class _Meta:
    """What the MetaDataVersion and AdminData must describe, collected while writing."""

    def __init__(self) -> None:
        self.forms: dict[str, tuple[str, str]] = {}  # form OID -> (name, study event OID)
        self.form_items: dict[str, dict[str, None]] = {}
        self.item_types: dict[str, set[str]] = {}
        self.item_names: dict[str, str] = {}
        self.users: dict[str, tuple[str, str | None]] = {}  # OID -> (role, printed name)
        self.meanings: set[str] = set()
        self.first: str | None = None
        #: The sites the subjects were at (issue 17): one ``Location`` each in AdminData.
        self.sites: set[str] = set()


def _user(meta: _Meta, e: LoggedEvent) -> str:
    actor = str(e.get("actor") or "unknown")
    oid = f"USR.{_oid(actor) or 'UNKNOWN'}"
    role, name = meta.users.get(oid, (str(e.get("role") or "unknown"), None))
    if e.kind == SIGNED and e.get("printed_name"):
        name = str(e.get("printed_name"))
    meta.users[oid] = (role, name)
    meta.item_names.setdefault(oid, actor)
    return oid


def site_oid(site: str) -> str:
    """The ODM Location of a trial site (issue 17): ``LOC.S01``."""
    return f"LOC.{_oid(site)}"


def _audit(meta: _Meta, e: LoggedEvent, reason: Any, site: str | None = None) -> str:
    location = site_oid(site or DEFAULT_SITE)
    meta.sites.add(site or DEFAULT_SITE)
    parts = [
        f'<UserRef UserOID="{_user(meta, e)}"/>',
        f'<LocationRef LocationOID="{location}"/>',
        f"<DateTimeStamp>{escape(e.recorded_at)}</DateTimeStamp>",
    ]
    if reason:
        parts.append(f"<ReasonForChange>{escape(str(reason))}</ReasonForChange>")
    parts.append(f"<SourceID>{escape(f'{e.type} v{e.version} sha256:{e.hash}')}</SourceID>")
    return "<AuditRecord>" + "".join(parts) + "</AuditRecord>"


def _open(pid: str, se: str, course: int | None, form: str, group_key: int, tx: str) -> str:
    se_key = f' StudyEventRepeatKey="{course}"' if course is not None else ""
    outer = "Upsert" if tx == "Insert" else "Context"
    return (
        f'<SubjectData SubjectKey={quoteattr(pid)} TransactionType="Context">'
        f'<StudyEventData StudyEventOID="{se}"{se_key} TransactionType="{outer}">'
        f'<FormData FormOID="{form}" TransactionType="{outer}">'
        f'<ItemGroupData ItemGroupOID="IG.{form[2:]}" ItemGroupRepeatKey="{group_key}" '
        f'TransactionType="{tx}">'
    )


_CLOSE = "</ItemGroupData></FormData></StudyEventData></SubjectData>\n"


def _subject(meta: _Meta, pid: str, events: list[LoggedEvent], out: IO[str]) -> None:
    where: dict[int, tuple[str, int | None, str]] = {}
    current: dict[int, dict[str, Any]] = {}
    course = 1
    # the subject's site (issue 17): the AuditRecord's LocationRef is where the data was
    # entered; the subject's SiteRef is set at its screening and changed at each transfer
    site = site_after(events[1], DEFAULT_SITE) if len(events) > 1 else DEFAULT_SITE
    for e in events:
        if meta.first is None or e.recorded_at < meta.first:
            meta.first = e.recorded_at
        before, site = site, site_after(e, site)
        if e.kind == REGISTERED:
            meta.sites.add(site)
            out.write(
                f'<SubjectData SubjectKey={quoteattr(pid)} TransactionType="Insert">'
                f"{_audit(meta, e, None, site)}"
                f'<SiteRef LocationOID="{site_oid(site)}"/></SubjectData>\n'
            )
        elif e.kind == MOVED and site != before:  # a transfer: the subject's new site
            out.write(
                f'<SubjectData SubjectKey={quoteattr(pid)} TransactionType="Update">'
                f"{_audit(meta, e, e.get('reason'), site)}"
                f'<SiteRef LocationOID="{site_oid(site)}"/></SubjectData>\n'
            )
        if e.kind == MOVED:
            facts = e.get("facts") or {}
            number = facts.get("course_number")
            if isinstance(number, int):
                course = number
            se, form_name = EVENT_FORMS.get(e.type, ("SE.OTHER", e.type))
            form = form_oid(e.type)
            meta.forms[form] = (form_name, se)
            key = course if STUDY_EVENTS[se][1] else None
            where[e.version] = (se, key, form)
            values = items(facts, e.get("outcome") or {})
            current[e.version] = values
            audit = _audit(meta, e, e.get("reason"), site)
            out.write(_open(pid, se, key, form, e.version, "Insert"))
            _items(meta, form, values, audit, "Insert", out)
            out.write(_CLOSE)
        elif e.kind == CORRECTED:
            target = int(e.get("corrects") or 0)
            if target not in where:
                continue
            se, key, form = where[target]
            new = items(e.get("facts") or {}, e.get("outcome") or {})
            old = current[target]
            changed = {k: v for k, v in new.items() if k not in old or old[k] != v}
            current[target] = {**old, **new}
            audit = _audit(meta, e, e.get("reason"), site)
            out.write(_open(pid, se, key, form, target, "Update"))
            _items(meta, form, changed, audit, "Update", out)
            out.write(_CLOSE)
        elif e.kind == SIGNED:
            target = int(e.get("signs_version") or 0)
            if target not in where:
                continue
            se, key, form = where[target]
            meaning = str(e.get("meaning") or "review")
            meta.meanings.add(meaning)
            meta.sites.add(site)
            out.write(_open(pid, se, key, form, target, "Context"))
            out.write(
                f'<Signature ID="SIG.{_oid(pid)}.{e.version}">'
                f'<UserRef UserOID="{_user(meta, e)}"/>'
                f'<LocationRef LocationOID="{site_oid(site)}"/>'
                f'<SignatureRef SignatureOID="SD.{_oid(meaning)}"/>'
                f"<DateTimeStamp>{escape(e.recorded_at)}</DateTimeStamp></Signature>"
            )
            out.write(_CLOSE)


def _items(
    meta: _Meta, form: str, values: dict[str, Any], audit: str, tx: str, out: IO[str]
) -> None:
    listed = meta.form_items.setdefault(form, {})
    for oid, value in values.items():
        listed[oid] = None
        meta.item_types.setdefault(oid, set())
        if value is None:
            out.write(
                f'<ItemData ItemOID="{oid}" TransactionType="{tx}" IsNull="Yes">{audit}</ItemData>'
            )
            continue
        meta.item_types[oid].add(_kind(value))
        out.write(
            f'<ItemData ItemOID="{oid}" TransactionType="{tx}" Value={quoteattr(_value(value))}>'
            f"{audit}</ItemData>"
        )


def write_odm(cut: Cut, out: IO[str]) -> None:
    """The ODM 1.3.2 file of the cut-off (UTF-8 text to ``out``)."""
    meta = _Meta()
    with tempfile.TemporaryFile("w+", encoding="utf-8") as clinical:
        for subject in cut.subjects():
            _subject(meta, subject.patient_id, subject.events, clinical)
        out.write('<?xml version="1.0" encoding="UTF-8"?>\n')
        out.write(
            '<ODM xmlns="http://www.cdisc.org/ns/odm/v1.3" ODMVersion="1.3.2" '
            f'FileType="Transactional" Granularity="All" FileOID="{STUDY_ID}.ODM.{_oid(cut.cutoff)}" '
            f'CreationDateTime="{cut.cutoff}" AsOfDateTime="{cut.cutoff}" '
            'Originator="cart-course" SourceSystem="cart-course">\n'
        )
        _study(meta, out)
        _admin(meta, out)
        out.write(f'<ClinicalData StudyOID="{STUDY_ID}" MetaDataVersionOID="{MDV_OID}">\n')
        clinical.seek(0)
        while chunk := clinical.read(1 << 20):
            out.write(chunk)
        out.write("</ClinicalData>\n</ODM>\n")


def _study(meta: _Meta, out: IO[str]) -> None:
    out.write(
        f'<Study OID="{STUDY_ID}"><GlobalVariables><StudyName>{STUDY_ID}</StudyName>'
        f"<StudyDescription>{escape(STUDY_NAME)}</StudyDescription>"
        f"<ProtocolName>{STUDY_ID}</ProtocolName></GlobalVariables>\n"
        f'<MetaDataVersion OID="{MDV_OID}" Name="cart-course event log">\n<Protocol>'
    )
    used = {se for _, se in meta.forms.values()}
    events = [se for se in STUDY_EVENTS if se in used]
    for se in events:
        out.write(f'<StudyEventRef StudyEventOID="{se}" Mandatory="No"/>')
    out.write("</Protocol>\n")
    for se in events:
        name, repeating = STUDY_EVENTS[se]
        out.write(
            f'<StudyEventDef OID="{se}" Name={quoteattr(name)} '
            f'Repeating="{"Yes" if repeating else "No"}" Type="Scheduled">'
        )
        for form, (_, owner) in sorted(meta.forms.items()):
            if owner == se:
                out.write(f'<FormRef FormOID="{form}" Mandatory="No"/>')
        out.write("</StudyEventDef>\n")
    for form, (name, _) in sorted(meta.forms.items()):
        out.write(
            f'<FormDef OID="{form}" Name={quoteattr(name)} Repeating="Yes">'
            f'<ItemGroupRef ItemGroupOID="IG.{form[2:]}" Mandatory="Yes"/></FormDef>\n'
        )
    for form, (name, _) in sorted(meta.forms.items()):
        out.write(f'<ItemGroupDef OID="IG.{form[2:]}" Name={quoteattr(name)} Repeating="Yes">')
        for oid in sorted(meta.form_items.get(form, {})):
            out.write(f'<ItemRef ItemOID="{oid}" Mandatory="No"/>')
        out.write("</ItemGroupDef>\n")
    for oid in sorted(meta.item_types):
        name = oid[3:].lower()
        out.write(
            f'<ItemDef OID="{oid}" Name={quoteattr(name)} '
            f'DataType="{_datatype(meta.item_types[oid])}"/>\n'
        )
    out.write("</MetaDataVersion>\n</Study>\n")


def _admin(meta: _Meta, out: IO[str]) -> None:
    out.write("<AdminData>\n")
    for oid, (role, name) in sorted(meta.users.items()):
        user_type = "Investigator" if role == "clinician" else "Other"
        out.write(
            f'<User OID="{oid}" UserType="{user_type}">'
            f"<LoginName>{escape(meta.item_names[oid])}</LoginName>"
            + (f"<DisplayName>{escape(name)}</DisplayName>" if name else "")
            + "</User>\n"
        )
    effective = (meta.first or "1970-01-01")[:10]
    for site in sorted(meta.sites):  # the trial's sites the subjects were at (issue 17)
        out.write(
            f'<Location OID="{site_oid(site)}" Name={quoteattr("Site " + site)} '
            'LocationType="Site">'
            f'<MetaDataVersionRef StudyOID="{STUDY_ID}" MetaDataVersionOID="{MDV_OID}" '
            f'EffectiveDate="{effective}"/></Location>\n'
        )
    for meaning in sorted(meta.meanings):
        out.write(
            f'<SignatureDef OID="SD.{_oid(meaning)}" Methodology="Electronic">'
            f"<Meaning>{escape(MEANINGS.get(meaning, meaning))}</Meaning>"
            "<LegalReason>An electronic signature under 21 CFR Part 11 (the signer's "
            "password re-entered)</LegalReason></SignatureDef>\n"
        )
    out.write("</AdminData>\n")


def odm_text(cut: Cut) -> str:
    import io

    buffer = io.StringIO()
    write_odm(cut, buffer)
    return buffer.getvalue()
