"""A patient's course as a FHIR R4 Bundle: Patient, ResearchStudy, ResearchSubject (with the R5
``progress`` backport extension: one entry per state the course went through) and one Provenance
per event (who, when recorded, when it happened, why, the event hash; signatures as
``Provenance.signature``; corrections point at the Provenance of the event they revise)."""

from __future__ import annotations

import itertools
import uuid
from typing import Any

from .history import timeline
from .log import CORRECTED, MOVED, REGISTERED, SIGNED, LoggedEvent, site_after

PROGRESS_URL = "http://hl7.org/fhir/5.0/StructureDefinition/extension-ResearchSubject.progress"
HASH_URL = "https://cart-course.example.org/fhir/StructureDefinition/event-hash"
STATE_SYSTEM = "http://hl7.org/fhir/research-subject-state"
COURSE_STATE_SYSTEM = "https://cart-course.example.org/fhir/CodeSystem/course-state"
EVENT_SYSTEM = "https://cart-course.example.org/fhir/CodeSystem/course-event"
STUDY_ID = "NCT03599375"
SIGNATURE_SYSTEM = "urn:iso-astm:E1762-95:2013"
#: Signature meaning -> ASTM E1762 signature type.
SIGNATURE_TYPES = {
    "authorship": ("1.2.840.10065.1.12.1.1", "Author's Signature"),
    "approval": ("1.2.840.10065.1.12.1.5", "Verification Signature"),
    "review": ("1.2.840.10065.1.12.1.13", "Review Signature"),
}
#: Course state -> FHIR research-subject-state.
SUBJECT_STATE = {
    "candidate": "candidate",
    "screened": "eligible",
    "screen_failed": "ineligible",
    "apheresed": "on-study",
    "infused_d1": "on-study-intervention",
    "infused_d2": "on-study-intervention",
    "infused_d3": "on-study-intervention",
    "assessed": "on-study-observation",
    "continued": "on-study",
    "ceased": "follow-up",
    "discontinued": "follow-up",
    "withdrawn": "withdrawn",
    "died": "off-study",
}
_NS = uuid.UUID("0b9a3c1e-4f7d-5e2a-8c6b-1d2e3f405162")


def _urn(*parts: object) -> str:
    return f"urn:uuid:{uuid.uuid5(_NS, ':'.join(str(p) for p in parts))}"


def _rid(*parts: object) -> str:
    return str(uuid.uuid5(_NS, ":".join(str(p) for p in parts)))


def bundle(patient_id: str, events: list[LoggedEvent]) -> dict[str, Any]:
    patient_url = _urn("patient", patient_id)
    study_url = _urn("study", STUDY_ID)
    subject_url = _urn("subject", patient_id)
    entries: list[dict[str, Any]] = [
        {
            "fullUrl": patient_url,
            "resource": {
                "resourceType": "Patient",
                "id": _rid("patient", patient_id),
                "identifier": [
                    {"system": "https://cart-course.example.org/patient-id", "value": patient_id}
                ],
            },
        },
        {
            "fullUrl": study_url,
            "resource": {
                "resourceType": "ResearchStudy",
                "id": _rid("study", STUDY_ID),
                "identifier": [{"system": "https://clinicaltrials.gov", "value": STUDY_ID}],
                "status": "active",
                "title": "CD19 CAR-T for relapsed/refractory B-ALL",
            },
        },
    ]
    progress: list[dict[str, Any]] = []
    state = "candidate"
    start: str | None = None
    for e in events:
        if e.kind == REGISTERED:
            start = e.recorded_at
        if e.kind != MOVED or e.get("to_state") == e.get("from_state"):
            continue
        state = str(e.get("to_state"))
        progress.append(_progress(state, str(e.get("trigger")), e.occurred_at, e.get("reason")))
    if progress:
        for before, after in itertools.pairwise(progress):
            end = _ext_value(after, "startDate")
            if end:
                before["extension"].append({"url": "endDate", "valueDateTime": end})
    subject: dict[str, Any] = {
        "resourceType": "ResearchSubject",
        "id": _rid("subject", patient_id),
        "identifier": [
            {"system": "https://cart-course.example.org/patient-id", "value": patient_id}
        ],
        "status": SUBJECT_STATE.get(state, "on-study"),
        "study": {"reference": study_url},
        "individual": {"reference": patient_url},
        "extension": progress,
    }
    if start:
        subject["period"] = {"start": start}
    entries.append({"fullUrl": subject_url, "resource": subject})
    entries.extend(_sites(patient_id, events, subject))
    entries.extend(_after_course(patient_id, events, patient_url, study_url))
    rows = {row["version"]: row for row in timeline(patient_id, events)}
    for e in events:
        entries.append(_provenance(patient_id, e, subject_url, rows[e.version]["notes"]))
    entries.extend(product_entries(patient_id, events, patient_url))
    return {
        "resourceType": "Bundle",
        "id": _rid("bundle", patient_id, events[-1].hash if events else ""),
        "type": "collection",
        "timestamp": events[-1].recorded_at if events else None,
        "entry": entries,
    }


#: The subject's site (issue 17): ResearchSubject has no site element (R4, R5); an extension
#: names the Location of the current site, and ``siteHistory`` each period at a site.
SITE_URL = "https://cart-course.example.org/fhir/StructureDefinition/site"
SITE_HISTORY_URL = "https://cart-course.example.org/fhir/StructureDefinition/site-history"
SITE_SYSTEM = "https://cart-course.example.org/site-id"


def _sites(
    patient_id: str, events: list[LoggedEvent], subject: dict[str, Any]
) -> list[dict[str, Any]]:
    """A Location per site the subject was at, and the subject's site extensions."""
    periods: list[tuple[str, str | None, str | None]] = []  # (site, start, reason)
    site = "S00"
    for e in events:
        before, site = site, site_after(e, site)
        if not periods:
            if e.kind == MOVED:  # the screening names the first site (or none: S00)
                periods.append((site, e.occurred_at, None))
        elif site != before:
            periods.append((site, e.occurred_at, e.get("reason")))
    if not periods:
        return []
    locations = {}
    for site_id, _, _ in periods:
        locations[site_id] = {
            "fullUrl": _urn("location", site_id),
            "resource": {
                "resourceType": "Location",
                "id": _rid("location", site_id),
                "identifier": [{"system": SITE_SYSTEM, "value": site_id}],
                "name": f"Site {site_id}",
                "mode": "instance",
            },
        }
    subject["extension"].append(
        {"url": SITE_URL, "valueReference": {"reference": _urn("location", periods[-1][0])}}
    )
    for i, (site_id, begun, reason) in enumerate(periods):
        parts: list[dict[str, Any]] = [
            {"url": "site", "valueReference": {"reference": _urn("location", site_id)}}
        ]
        if begun:
            parts.append({"url": "startDate", "valueDateTime": begun})
        if i + 1 < len(periods) and periods[i + 1][1]:
            parts.append({"url": "endDate", "valueDateTime": periods[i + 1][1]})
        if reason:
            parts.append({"url": "reason", "valueString": str(reason)})
        subject["extension"].append({"url": SITE_HISTORY_URL, "extension": parts})
    return list(locations.values())


#: AdverseEvent.outcome (http://terminology.hl7.org/CodeSystem/adverse-event-outcome).
AE_OUTCOME_SYSTEM = "http://terminology.hl7.org/CodeSystem/adverse-event-outcome"
AE_OUTCOME = {
    "recovered": "resolved",
    "recovering": "recovering",
    "not_recovered": "ongoing",
    "recovered_with_sequelae": "resolvedWithSequelae",
    "fatal": "fatal",
    "unknown": "unknown",
}
AE_SERIOUSNESS_SYSTEM = "http://terminology.hl7.org/CodeSystem/adverse-event-seriousness"
AE_CRITERIA_SYSTEM = "https://cart-course.example.org/fhir/CodeSystem/ich-e2a-seriousness"
VISIT_SYSTEM = "https://cart-course.example.org/fhir/CodeSystem/follow-up-visit"


def _after_course(
    patient_id: str, events: list[LoggedEvent], patient_url: str, study_url: str
) -> list[dict[str, Any]]:
    """Issue 16: one AdverseEvent per episode reported with adverse-event facts (its latest
    facts; seriousness by ICH E2A; fatal when a death closed it), and an Encounter with an
    Observation of the disease status per follow-up visit."""
    episodes: dict[str, dict[str, Any]] = {}
    entries: list[dict[str, Any]] = []
    for e in events:
        if e.kind != MOVED:
            continue
        trigger = e.get("trigger")
        facts = e.get("facts") or {}
        outcome = e.get("outcome") or {}
        if trigger == "report_toxicity" and facts.get("adverse_event_now") is not None:
            tox_id = str(facts.get("toxicity_id"))
            first = episodes.get(tox_id, {}).get("onset", e.occurred_at)
            episodes[tox_id] = {
                "onset": first,
                "ae": dict(facts["adverse_event_now"]),
                "term": outcome.get("term") or outcome.get("kind"),
                "grade": outcome.get("grade"),
                "recorded": e.recorded_at,
            }
        elif trigger == "record_death" and outcome.get("toxicity_id") in episodes:
            episode = episodes[str(outcome["toxicity_id"])]
            episode["ae"] = {**episode["ae"], **(facts.get("adverse_event_now") or {})}
            episode["ae"]["outcome"] = "fatal"
            episode["grade"] = 5
        elif trigger == "record_follow_up":
            entries.extend(_visit(patient_id, e, facts, outcome, patient_url))
    for tox_id, episode in episodes.items():
        ae = episode["ae"]
        criteria = list(ae.get("seriousness") or ())
        resource: dict[str, Any] = {
            "resourceType": "AdverseEvent",
            "id": _rid("adverse-event", patient_id, tox_id),
            "identifier": {"system": "https://cart-course.example.org/episode", "value": tox_id},
            "actuality": "actual",
            "subject": {"reference": patient_url},
            "study": [{"reference": study_url}],
            "event": {"text": f"{episode['term']} grade {episode['grade']}"},
            "date": episode["onset"],
            "recordedDate": episode["recorded"],
            "seriousness": {
                "coding": [
                    {
                        "system": AE_SERIOUSNESS_SYSTEM,
                        "code": "serious" if criteria else "non-serious",
                    },
                    *({"system": AE_CRITERIA_SYSTEM, "code": c} for c in criteria),
                ]
            },
        }
        if ae.get("aware_at"):
            resource["detected"] = ae["aware_at"]
        if ae.get("outcome") in AE_OUTCOME:
            resource["outcome"] = {
                "coding": [{"system": AE_OUTCOME_SYSTEM, "code": AE_OUTCOME[ae["outcome"]]}]
            }
        entries.append({"fullUrl": _urn("adverse-event", patient_id, tox_id), "resource": resource})
    return entries


def _visit(
    patient_id: str,
    e: LoggedEvent,
    facts: dict[str, Any],
    outcome: dict[str, Any],
    patient_url: str,
) -> list[dict[str, Any]]:
    visit = str(facts.get("visit"))
    encounter_url = _urn("encounter", patient_id, e.version)
    status = facts.get("disease_status") or {}
    text = str(status.get("status"))
    if status.get("cd19"):
        text += f" (CD19-{status['cd19']})"
    return [
        {
            "fullUrl": encounter_url,
            "resource": {
                "resourceType": "Encounter",
                "id": _rid("encounter", patient_id, e.version),
                "status": "finished",
                "class": {
                    "system": "http://terminology.hl7.org/CodeSystem/v3-ActCode",
                    "code": "AMB",
                },
                "type": [{"coding": [{"system": VISIT_SYSTEM, "code": visit}], "text": visit}],
                "subject": {"reference": patient_url},
                "period": {"start": e.occurred_at},
            },
        },
        {
            "fullUrl": _urn("observation", patient_id, e.version),
            "resource": {
                "resourceType": "Observation",
                "id": _rid("observation", patient_id, e.version),
                "status": "final",
                "code": {"text": "disease status"},
                "subject": {"reference": patient_url},
                "encounter": {"reference": encounter_url},
                "effectiveDateTime": e.occurred_at,
                "valueCodeableConcept": {"text": text},
            },
        },
    ]


#: The R5 element ``Procedure.used`` (which may name a BiologicallyDerivedProduct), backported.
USED_URL = "http://hl7.org/fhir/5.0/StructureDefinition/extension-Procedure.used"
#: ISBT 128 (HL7 OID 2.16.840.1.113883.6.18): the collection's donation identification number.
ISBT128_SYSTEM = "urn:oid:2.16.840.1.113883.6.18"
BAG_SYSTEM = "https://cart-course.example.org/product/bag"
LOT_SYSTEM = "https://cart-course.example.org/product/lot"
COLLECTION_SYSTEM = "https://cart-course.example.org/product/collection"


def product_entries(
    patient_id: str, events: list[LoggedEvent], patient_url: str
) -> list[dict[str, Any]]:
    """One ``BiologicallyDerivedProduct`` per bag of a released lot (its collection, manufacture
    and release as ``processing``), and one ``Procedure`` per infusion of a bag, naming it
    (``Procedure.used``, the R5 element backported as an extension) and both bedside verifiers."""
    collections: dict[str, dict[str, Any]] = {}
    lots: dict[str, dict[str, Any]] = {}
    bags: dict[str, dict[str, Any]] = {}
    infused: set[str] = set()
    procedures: list[dict[str, Any]] = []
    for e in events:
        if e.kind != MOVED:
            continue
        facts = e.get("facts") or {}
        trigger = str(e.get("trigger"))
        if trigger in ("record_apheresis", "repeat_apheresis") and facts.get("collection"):
            collections[facts["collection"]["id"]] = {**facts["collection"], "at": e.occurred_at}
        elif trigger == "start_manufacture":
            lots[facts["lot_id"]] = {"collection": facts.get("collection_id"), "at": e.occurred_at}
        elif trigger == "release_product" and facts.get("decision") == "released":
            lot = lots.setdefault(facts["lot_id"], {})
            lot.update(released_at=e.occurred_at, released_by=facts.get("released_by"))
            for bag in facts.get("bags", ()):
                bags[bag["bag_id"]] = {**bag, "lot_id": facts["lot_id"]}
        elif trigger.startswith("infuse_d") and facts.get("bag_id"):
            bag_id = str(facts["bag_id"])
            infused.add(bag_id)
            procedures.append(_procedure(patient_id, e, facts, bag_id, patient_url))
    out: list[dict[str, Any]] = []
    for bag_id, bag in bags.items():
        lot = lots.get(bag["lot_id"], {})
        collection = collections.get(str(lot.get("collection")), {})
        identifiers = [
            {"system": BAG_SYSTEM, "value": bag_id},
            {"system": LOT_SYSTEM, "value": bag["lot_id"]},
        ]
        if collection:
            system = ISBT128_SYSTEM if collection["id_type"] == "isbt128" else COLLECTION_SYSTEM
            identifiers.append({"system": system, "value": collection["id"]})
        processing = [
            {"description": f"manufacture of lot {bag['lot_id']}", "timeDateTime": lot.get("at")},
            {
                "description": f"released by {lot.get('released_by')}",
                "timeDateTime": lot.get("released_at"),
            },
        ]
        resource: dict[str, Any] = {
            "resourceType": "BiologicallyDerivedProduct",
            "id": _rid("product", patient_id, bag_id),
            "identifier": identifiers,
            "productCategory": "cells",
            "productCode": {
                "text": f"CD19 CAR-T cells for fraction D{bag['fraction']}, labelled "
                f"{bag['cells']:.3g} CAR-positive viable T cells"
            },
            "status": "unavailable" if bag_id in infused else "available",
            "quantity": 1,
            "collection": {
                "source": {"reference": patient_url},
                **({"collectedDateTime": collection["at"]} if collection.get("at") else {}),
            },
            "processing": [p for p in processing if p["timeDateTime"]],
        }
        out.append({"fullUrl": _urn("product", patient_id, bag_id), "resource": resource})
    return out + procedures


def _procedure(
    patient_id: str, e: LoggedEvent, facts: dict[str, Any], bag_id: str, patient_url: str
) -> dict[str, Any]:
    day = (e.get("outcome") or {}).get("day")
    resource: dict[str, Any] = {
        "resourceType": "Procedure",
        "id": _rid("procedure", patient_id, e.version),
        "status": "completed",
        "code": {"text": f"CAR-T cell infusion, fraction D{day}"},
        "subject": {"reference": patient_url},
        "performer": [
            {
                "function": {"text": "administered"},
                "actor": {"display": str(facts.get("administered_by") or e.get("actor"))},
            },
            {
                "function": {"text": "verified patient and bag at the bedside"},
                "actor": {"display": str(facts.get("verified_by"))},
            },
        ],
        "extension": [
            {"url": USED_URL, "valueReference": {"reference": _urn("product", patient_id, bag_id)}}
        ],
        "usedCode": [{"text": f"bag {bag_id}"}],
    }
    if e.occurred_at:
        resource["performedDateTime"] = e.occurred_at
    return {"fullUrl": _urn("procedure", patient_id, e.version), "resource": resource}


def _ext_value(ext: dict[str, Any], url: str) -> str | None:
    for sub in ext["extension"]:
        if sub["url"] == url:
            return str(sub.get("valueDateTime"))
    return None


def _progress(state: str, trigger: str, occurred: str | None, reason: Any) -> dict[str, Any]:
    subs: list[dict[str, Any]] = [
        {
            "url": "type",
            "valueCodeableConcept": {
                "coding": [
                    {
                        "system": "http://terminology.hl7.org/CodeSystem/research-subject-state-type",
                        "code": "Enrollment",
                    }
                ]
            },
        },
        {
            "url": "subjectState",
            "valueCodeableConcept": {
                "coding": [
                    {"system": STATE_SYSTEM, "code": SUBJECT_STATE.get(state, "on-study")},
                    {"system": COURSE_STATE_SYSTEM, "code": state},
                ]
            },
        },
        {
            "url": "milestone",
            "valueCodeableConcept": {"coding": [{"system": EVENT_SYSTEM, "code": trigger}]},
        },
    ]
    if reason:
        subs.append({"url": "reason", "valueCodeableConcept": {"text": str(reason)}})
    if occurred:
        subs.append({"url": "startDate", "valueDateTime": occurred})
    return {"url": PROGRESS_URL, "extension": subs}


def _provenance(
    patient_id: str, e: LoggedEvent, subject_url: str, notes: list[str]
) -> dict[str, Any]:
    actor = str(e.get("actor") or "unknown")
    role = str(e.get("role") or "unknown")
    code = "register" if e.kind == REGISTERED else str(e.get("trigger") or e.kind)
    if e.kind == SIGNED:
        code = "sign"
    elif e.kind == CORRECTED:
        code = "correct"
    resource: dict[str, Any] = {
        "resourceType": "Provenance",
        "id": _rid("provenance", patient_id, e.version),
        "extension": [{"url": HASH_URL, "valueString": e.hash}],
        "target": [{"reference": subject_url}],
        "recorded": e.recorded_at,
        "activity": {
            "coding": [{"system": EVENT_SYSTEM, "code": code, "display": e.type}],
            "text": f"v{e.version} {e.type}",
        },
        "agent": [
            {
                "role": [{"text": role}],
                "who": {"identifier": {"value": actor}, "display": actor},
            }
        ],
    }
    if e.occurred_at:
        resource["occurredDateTime"] = e.occurred_at
    if e.get("reason"):
        resource["reason"] = [{"text": str(e.get("reason"))}]
    entities: list[dict[str, Any]] = []
    if e.kind == CORRECTED:
        entities.append(
            {
                "role": "revision",
                "what": {
                    "reference": _urn("provenance", patient_id, e.get("corrects")),
                    "display": f"v{e.get('corrects')} (corrected)",
                },
            }
        )
    if e.kind == SIGNED:
        meaning = str(e.get("meaning"))
        code_, display = SIGNATURE_TYPES.get(meaning, SIGNATURE_TYPES["review"])
        entities.append(
            {
                "role": "source",
                "what": {
                    "reference": _urn("provenance", patient_id, e.get("signs_version")),
                    "identifier": {"value": str(e.get("signed_hash"))},
                    "display": f"v{e.get('signs_version')} ({e.get('milestone')})",
                },
            }
        )
        resource["signature"] = [
            {
                "type": [{"system": SIGNATURE_SYSTEM, "code": code_, "display": display}],
                "when": e.recorded_at,
                "who": {"identifier": {"value": actor}, "display": str(e.get("printed_name"))},
            }
        ]
    if entities:
        resource["entity"] = entities
    if notes:
        resource["activity"]["text"] += ": " + "; ".join(notes)
    return {"fullUrl": _urn("provenance", patient_id, e.version), "resource": resource}
