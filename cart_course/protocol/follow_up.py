"""After the course: adverse events with seriousness and reporting clocks, follow-up visits, and
deaths with their cause (issue 16).

Pure code, as ``building_blocks.py``: payload parsers, contexts, clinical-time checks and
outcomes the command registry names. No I/O, no clock, no store.

- **Adverse events** are the toxicity episodes (one record, not two): a ``report_toxicity`` may
  carry an ``adverse_event`` object (attribution, ICH E2A seriousness, expectedness, outcome,
  when the site became aware). CRS and ICANS episodes are adverse events of those terms.
- **SAE clocks**: a serious episode opens a *safety case* (its id is the episode's id; a death
  not attributed to an episode opens the case ``death``). Each clock is recorded in the event's
  outcome as a duration from the awareness time (``within_hours``); the record adds it to the
  awareness (or, when none was given, the clinical time) and keeps the due instant. A report
  sent after its clock is recorded (never refused) with its delay: a conformance finding.
- **Follow-up visits** are scheduled from the last course's D1 (``follow_up_schedule``).
"""

from __future__ import annotations

import datetime as dt
import math
import re
import types
import typing
from collections.abc import Mapping
from typing import Any

import msgspec

from . import building_blocks as blocks
from .building_blocks import Facts, Parsed, Payload
from .errors import ContextInputError, FieldProblem, ProtocolInputError
from .machine import Probe
from .parameters import ProtocolParameters
from .payloads import (
    INSTANT_PATTERN,
    AdverseEventPayload,
    CauseOfDeathPayload,
    FollowUpPayload,
    MissedVisitPayload,
    SaeReportPayload,
    convert,
)
from .record import PatientRecord, judge_sent, new_sae_clock
from .states import FOLLOW_UP as FOLLOW_UP_STATES
from .states import State

#: Attributions that make a serious unexpected event a suspected adverse *reaction* (SUSAR).
RELATED: tuple[str, ...] = ("possible", "probable", "definite")
#: Seriousness criteria that start the 7-day expedited clock of a SUSAR (ICH E2A).
FATAL_OR_LIFE_THREATENING: frozenset[str] = frozenset({"death", "life_threatening"})
#: Adverse events of special interest after CAR-T, by the term (or kind) of the episode.
AESI: dict[str, str] = {
    "crs": "CRS",
    "cytokine release syndrome": "CRS",
    "icans": "ICANS",
    "iec-hs": "IEC-HS",
    "hlh": "IEC-HS",
    "hlh-like syndrome": "IEC-HS",
    "macrophage activation syndrome": "IEC-HS",
    "prolonged cytopenia": "prolonged cytopenia",
    "hypogammaglobulinaemia": "hypogammaglobulinaemia",
    "hypogammaglobulinemia": "hypogammaglobulinaemia",
    "tumour lysis syndrome": "tumour lysis syndrome",
    "tumor lysis syndrome": "tumour lysis syndrome",
    "second malignancy": "second malignancy",
    "t-cell malignancy": "second malignancy",
}
#: Infections are of special interest from grade 3.
INFECTION_AESI_GRADE = 3
#: The states in which follow-up visits (and missed visits) are recorded: the follow-up after
#: the end of treatment, and -- for a visit that happened before -- after death or withdrawal.
FOLLOW_UP_SOURCES: tuple[State, ...] = (
    State.CEASED,
    State.DISCONTINUED,
    State.DIED,
    State.WITHDRAWN,
)


def aesi_of(kind: str, term: str | None, grade: int) -> str | None:
    """The adverse event of special interest an episode is, or None."""
    if kind in ("CRS", "ICANS"):
        return kind
    name = (term or "").strip().lower()
    if name in AESI:
        return AESI[name]
    if "infection" in name or "sepsis" in name:
        return "infection grade >= 3" if grade >= INFECTION_AESI_GRADE else None
    return None


# ----------------------------------------------------------------------------------------------
# Field-by-field checks of a msgspec Struct: every invalid field named, with what is allowed
# ----------------------------------------------------------------------------------------------


def _allowed_words(type_: Any) -> list[Any] | None:
    """The words a Literal (possibly inside a union, or a list of them) allows."""
    origin = typing.get_origin(type_)
    if origin is typing.Literal:
        return list(typing.get_args(type_))
    if origin in (typing.Union, types.UnionType, list):
        words: list[Any] = []
        for arg in typing.get_args(type_):
            found = _allowed_words(arg)
            if found:
                words.extend(found)
        return words or None
    return None


def _struct_in(type_: Any) -> type[msgspec.Struct] | None:
    if isinstance(type_, type) and issubclass(type_, msgspec.Struct):
        return type_
    for arg in typing.get_args(type_):
        found = _struct_in(arg)
        if found is not None:
            return found
    return None


def field_problems(data: Any, struct: type[msgspec.Struct], prefix: str) -> list[FieldProblem]:
    """Every invalid field of ``data`` as ``struct`` reads it (paths under ``prefix``)."""
    if not isinstance(data, Mapping):
        return [FieldProblem(prefix, "must be a JSON object")]
    problems: list[FieldProblem] = []
    fields = {f.name: f for f in msgspec.structs.fields(struct)}
    for key in data:
        if key not in fields:
            problems.append(
                FieldProblem(f"{prefix}.{key}", f"is not a known key; allowed: {', '.join(fields)}")
            )
    for name, f in fields.items():
        path = f"{prefix}.{name}"
        if name not in data:
            if f.required:
                problems.append(FieldProblem(path, "is required"))
            continue
        value = data[name]
        nested = _struct_in(f.type)
        if nested is not None and isinstance(value, Mapping):
            problems.extend(field_problems(value, nested, path))
            continue
        try:
            msgspec.convert(value, f.type)
        except msgspec.ValidationError as exc:
            words = _allowed_words(f.type)
            shown = repr(value) if len(repr(value)) <= 60 else repr(value)[:60] + "..."
            if words:
                message = f"{shown} is not allowed; allowed: {', '.join(map(str, words))}"
            else:
                message = f"{exc} (got {shown})"
            problems.append(FieldProblem(path, message))
    return problems


def _non_finite(data: Any, path: str) -> list[FieldProblem]:
    """Every number that is not finite (NaN, an infinity), by its path: never recorded, never
    repeated back (a range check lets an infinity through where there is no upper bound)."""
    if isinstance(data, float) and not math.isfinite(data):
        return [FieldProblem(path, "must be a finite number")]
    if isinstance(data, Mapping):
        return [p for k, v in data.items() for p in _non_finite(v, f"{path}.{k}")]
    if isinstance(data, list):
        return [p for i, v in enumerate(data) for p in _non_finite(v, f"{path}.{i}")]
    return []


def _decode(data: Any, struct: type[msgspec.Struct], prefix: str) -> Any:
    """One ``msgspec.convert`` (the fast path); on failure every invalid field is named."""
    bad_numbers = _non_finite(data, prefix)
    if bad_numbers:
        first, *rest = bad_numbers
        raise ProtocolInputError(first.field, first.message, others=rest)
    decoded = convert(data, struct)
    if decoded is not None:
        return decoded
    problems = field_problems(data, struct, prefix) or [
        FieldProblem(prefix, f"does not fit {struct.__name__}")
    ]
    first, *rest = problems
    raise ProtocolInputError(first.field, first.message, others=rest)


def _instant(value: str, field: str) -> dt.datetime:
    """An ISO 8601 time with its UTC offset, written as the contract writes its times
    (``payloads.INSTANT_PATTERN``, the schemas' pattern)."""
    try:
        when = dt.datetime.fromisoformat(value)
    except ValueError:
        raise ProtocolInputError(
            field, f"{value!r} is not an ISO 8601 time (e.g. 2026-03-01T14:30:00+01:00)"
        ) from None
    if when.tzinfo is None:
        raise ProtocolInputError(field, f"{value!r} needs its UTC offset (e.g. +01:00 or Z)")
    if not re.fullmatch(INSTANT_PATTERN, value):
        raise ProtocolInputError(
            field,
            f"{value!r} is not written YYYY-MM-DDThh:mm[:ss[.fraction]] with Z or +hh:mm, "
            "from 1900 on, with an offset of at most 14 hours (e.g. 2026-03-01T14:30:00+01:00)",
        )
    return when


def _plain(value: Any) -> Any:
    return msgspec.to_builtins(value)


# ----------------------------------------------------------------------------------------------
# Adverse events: report_toxicity's ``adverse_event``
# ----------------------------------------------------------------------------------------------


def parse_adverse_event(data: Any, prefix: str = "payload.adverse_event") -> dict[str, Any]:
    """The adverse-event facts of a toxicity report, normalised (given keys only; seriousness
    as a sorted list without repeats)."""
    ae: AdverseEventPayload = _decode(data, AdverseEventPayload, prefix)
    out: dict[str, Any] = _plain(ae)
    out["seriousness"] = sorted(set(ae.seriousness))
    if not out["seriousness"]:
        del out["seriousness"]
    if "aware_at" in out:
        out["aware_at"] = _instant(out["aware_at"], f"{prefix}.aware_at").isoformat()
    return out


def _case_brief(record: PatientRecord, case_id: str) -> dict[str, Any] | None:
    case = record.sae_cases.get(case_id)
    if case is None:
        return None
    return {
        "id": case_id,
        "seriousness": list(case.get("seriousness", ())),
        "susar": bool(case.get("susar")),
        "initial_sent": any(
            c["report"] == "initial" and c.get("sent_at") for c in case.get("clocks", ())
        ),
        "expedited_clock": any(
            c["report"] == "expedited" and not c.get("cancelled") for c in case.get("clocks", ())
        ),
    }


def parse_toxicity_ae(
    record: PatientRecord, p: Payload, day: dt.date, ctx: Facts, seed: Facts
) -> Parsed:
    """``report_toxicity``: the toxicity report (``building_blocks.parse_toxicity``) and, when
    given, its adverse-event facts; the episode's safety case so far (the outcome's clocks)."""
    norm, facts = blocks.parse_toxicity(record, p, day, ctx, seed)
    if "adverse_event" in p:
        ae = parse_adverse_event(p["adverse_event"])
        norm["adverse_event"] = ae
        facts["adverse_event"] = ae
        episode = record.toxicities.get(facts["toxicity_id"])
        merged = {**(episode.ae or {})} if episode is not None else {}
        merged.update(ae)
        if episode is not None and episode.ae and "seriousness" in episode.ae:
            merged["seriousness"] = sorted(
                set(episode.ae["seriousness"]) | set(ae.get("seriousness", ()))
            )
        facts["adverse_event_now"] = merged
        facts["sae_case"] = _case_brief(record, facts["toxicity_id"])
    return norm, facts


def toxicity_time(
    record: PatientRecord, facts: Mapping[str, Any], occurred_at: dt.datetime
) -> None:
    """The site cannot have become aware of an adverse event before its onset."""
    ae = facts.get("adverse_event")
    if not ae or "aware_at" not in ae:
        return
    episode = record.toxicities.get(facts.get("toxicity_id") or "")
    onset = occurred_at
    if episode is not None:
        recorded = dt.datetime.fromisoformat(episode.onset)
        if recorded.tzinfo is not None:
            onset = recorded
    aware = dt.datetime.fromisoformat(ae["aware_at"])
    if aware < onset:
        # against an onset on record: a conflict with the record (409); else the payload's own
        error = ContextInputError if onset is not occurred_at else ProtocolInputError
        raise error(
            "payload.adverse_event.aware_at",
            f"{ae['aware_at']} is before the event's onset ({onset.isoformat()}); the site "
            "becomes aware of an adverse event at or after its onset",
        )


def _clocks_for(
    seriousness: list[str],
    susar: bool,
    case: Mapping[str, Any] | None,
    params: ProtocolParameters,
) -> list[dict[str, Any]]:
    """The reporting clocks new information about a serious event starts (durations)."""
    clocks: list[dict[str, Any]] = []
    if case is None:
        clocks.append({"report": "initial", "within_hours": params.sae_initial_report_hours})
    elif case["initial_sent"]:
        clocks.append(
            {"report": "follow_up", "within_hours": params.sae_follow_up_report_days * 24}
        )
    if susar and (case is None or not case["expedited_clock"]):
        days = (
            params.susar_fatal_report_days
            if FATAL_OR_LIFE_THREATENING & set(seriousness)
            else params.susar_other_report_days
        )
        clocks.append({"report": "expedited", "within_hours": days * 24})
    return clocks


def _susar(ae: Mapping[str, Any]) -> bool:
    return (
        bool(ae.get("seriousness"))
        and ae.get("expected") is False
        and ae.get("attribution") in RELATED
    )


def toxicity_ae_outcome(
    trigger: str, facts: Mapping[str, Any], probe: Probe, params: ProtocolParameters
) -> dict[str, Any]:
    """``blocks.toxicity_outcome``, and for an adverse event: serious, SUSAR, special interest,
    and the clocks the report starts."""
    out = blocks.toxicity_outcome(trigger, facts, probe, params)
    ae = facts.get("adverse_event_now")
    if ae is None:
        return out
    seriousness = list(ae.get("seriousness", ()))
    susar = _susar(ae)
    out["adverse_event"] = {
        "serious": bool(seriousness),
        "susar": susar,
        "aesi": aesi_of(out["kind"], out.get("term"), out["grade"]),
    }
    if seriousness:
        out["sae"] = {
            "case_id": facts["toxicity_id"],
            "seriousness": seriousness,
            "susar": susar,
            "aware_at": facts["adverse_event"].get("aware_at"),
            "clocks": _clocks_for(seriousness, susar, facts.get("sae_case"), params),
        }
    return out


# ----------------------------------------------------------------------------------------------
# SAE reports sent: record_sae_report
# ----------------------------------------------------------------------------------------------


def _open_clock(clock: Mapping[str, Any]) -> bool:
    """A clock still running: not answered by a report, not cancelled by a correction."""
    return not clock.get("sent_at") and not clock.get("cancelled")


def _pending(case: Mapping[str, Any]) -> list[str]:
    return [f"{c['report']} (due {c['due_at']})" for c in case["clocks"] if _open_clock(c)]


def parse_sae_report(
    record: PatientRecord, p: Payload, day: dt.date, ctx: Facts, seed: Facts
) -> Parsed:
    report: SaeReportPayload = _decode(dict(p), SaeReportPayload, "payload")
    norm: dict[str, Any] = _plain(report)
    case = record.sae_cases.get(report.case_id)
    if ctx.get("case_id") == report.case_id and ctx.get("report") == report.report:
        # a correction of this report (its context is the recorded facts): the clock it
        # answered stays the one it answered (case and report are not correctable)
        return norm, {**norm, "due_at": ctx.get("due_at")}
    if case is None:
        known = ", ".join(record.sae_cases) or "none"
        raise ContextInputError(
            "payload.case_id",
            f"no safety case {report.case_id!r} is on record; its cases: {known} (a case is "
            "opened by a serious adverse event, or a death in the treatment-related window)",
        )
    if report.report != "follow_up" and not any(
        c["report"] == report.report and _open_clock(c) for c in case["clocks"]
    ):
        raise ContextInputError(
            "payload.report",
            f"case {report.case_id} has no {report.report} report due; due: "
            f"{', '.join(_pending(case)) or 'none'} (a follow_up report may always be sent)",
        )
    due = sorted(
        c["due_at"]
        for c in case["clocks"]
        if c["report"] == report.report and _open_clock(c) and c.get("due_at")
    )
    return norm, {**norm, "due_at": due[0] if due else None}


def sae_report_time(
    record: PatientRecord, facts: Mapping[str, Any], occurred_at: dt.datetime
) -> None:
    """A report is sent at or after the site became aware of the event."""
    case = record.sae_cases.get(facts["case_id"])
    if case is None:
        return
    aware = dt.datetime.fromisoformat(case["aware_at"])
    if occurred_at < aware:
        raise ContextInputError(
            "occurred_at",
            f"{occurred_at.isoformat()} (when the report was sent) is before the site became "
            f"aware of case {facts['case_id']} ({case['aware_at']}); a report is sent after "
            "awareness",
        )


# ----------------------------------------------------------------------------------------------
# Follow-up visits: record_follow_up, record_missed_visit
# ----------------------------------------------------------------------------------------------


def visit_schedule(params: ProtocolParameters) -> dict[str, tuple[int, int]]:
    return {name: (day, window) for name, day, window in params.follow_up_schedule}


def known_visits() -> list[str]:
    """Every visit name of the registered protocol versions' follow-up schedules, in schedule
    order (the payload schema's list). Whether a visit belongs to the schedule of the patient's
    protocol version is the rule ``visit_in_schedule`` (each version defines its schedule)."""
    from .versions import VERSIONS

    names: dict[str, None] = {}
    for version in VERSIONS.values():
        names.update(dict.fromkeys(visit_schedule(version.params)))
    return list(names)


def _visit_name(record: PatientRecord, name: str) -> None:
    known = known_visits()
    if name not in known:
        raise ProtocolInputError(
            "payload.visit",
            f"{name!r} is not a visit of any protocol version's follow-up schedule; "
            f"visits: {', '.join(known)}",
        )
    if name in record.follow_up.get("visits", {}):
        raise ContextInputError(
            "payload.visit",
            f"visit {name} is already recorded (version "
            f"{record.follow_up['visits'][name]['version']}); correct it instead",
        )


def parse_follow_up(
    record: PatientRecord, p: Payload, day: dt.date, ctx: Facts, seed: Facts
) -> Parsed:
    visit: FollowUpPayload = _decode(dict(p), FollowUpPayload, "payload")
    problems: list[FieldProblem] = []
    status = visit.disease_status
    if status.status == "relapse" and status.cd19 is msgspec.UNSET:
        problems.append(
            FieldProblem(
                "payload.disease_status.cd19",
                "a relapse names its CD19 status: positive or negative",
            )
        )
    if status.status == "remission" and status.cd19 is not msgspec.UNSET:
        problems.append(FieldProblem("payload.disease_status.cd19", "is given with a relapse only"))
    if problems:
        first, *rest = problems
        raise ProtocolInputError(first.field, first.message, others=rest)
    _visit_name(record, visit.visit)
    norm: dict[str, Any] = _plain(visit)
    return norm, {**norm, "visit_date": day.isoformat()}


def parse_missed_visit(
    record: PatientRecord, p: Payload, day: dt.date, ctx: Facts, seed: Facts
) -> Parsed:
    missed: MissedVisitPayload = _decode(dict(p), MissedVisitPayload, "payload")
    _visit_name(record, missed.visit)
    if missed.visit in record.follow_up.get("missed", {}):
        raise ContextInputError("payload.visit", f"visit {missed.visit} is already recorded missed")
    norm: dict[str, Any] = _plain(missed)
    return norm, {
        **norm,
        "consecutive_missed_before": int(record.follow_up.get("consecutive_missed", 0)),
    }


def ctx_follow_up(record: PatientRecord) -> dict[str, Any]:
    """What the follow-up rules read: the last course's D1 (its clinical time)."""
    return {"follow_up_from": _d1_of(record)}


def ctx_sae_report(record: PatientRecord) -> dict[str, Any]:
    """What ``record_sae_report``'s rule reads: the safety cases on record."""
    return {"sae_cases": list(record.sae_cases)}


def _d1_of(record: PatientRecord) -> str | None:
    """The clinical time of the last course's D1 (the follow-up schedule counts from it)."""
    for course in reversed(record.courses):
        for f in course.fractions:
            if f.day == 1:
                return f.occurred_at
    return None


def _end_of_follow_up(record: PatientRecord) -> tuple[str, str] | None:
    """(what ended it, when): a death or a withdrawal of consent."""
    ended = record.ended
    if ended and ended.get("state") in (State.DIED, State.WITHDRAWN):
        return str(ended["state"]), str(ended["occurred_at"])
    return None


def follow_up_time(
    record: PatientRecord, facts: Mapping[str, Any], occurred_at: dt.datetime
) -> None:
    """A follow-up visit is after D1, and before a death (or a withdrawal of consent)."""
    if record.state not in FOLLOW_UP_SOURCES:
        return  # the machine refuses the move, naming the states it is allowed from
    d1 = _d1_of(record)
    if d1 is None:
        return  # the rule follow_up_from_d1 refuses
    start = dt.datetime.fromisoformat(d1)
    if (start.tzinfo is None) == (occurred_at.tzinfo is None) and occurred_at < start:
        raise ContextInputError(
            "occurred_at",
            f"{occurred_at.isoformat()} is before D1 ({d1}); a follow-up visit is after D1",
        )
    end = _end_of_follow_up(record)
    if end is not None:
        when = dt.datetime.fromisoformat(end[1])
        if (when.tzinfo is None) == (occurred_at.tzinfo is None) and occurred_at > when:
            what = "death" if end[0] == State.DIED else "withdrawal"
            raise ContextInputError(
                "occurred_at",
                f"{occurred_at.isoformat()} is after the patient's {what} ({end[1]}): follow-up "
                f"ends at {what}",
            )


def window_of(
    visit: str, follow_up_from: str | None, params: ProtocolParameters
) -> tuple[str, str, str] | None:
    """(target date, window start, window end) of a visit as ISO dates, counted in the local
    date of D1's clinical time; None without D1 (or for a visit not in ``params``' schedule:
    one recorded under another version)."""
    if follow_up_from is None:
        return None
    found = visit_schedule(params).get(visit)
    if found is None:
        return None
    day, window = found
    d1 = dt.date.fromisoformat(follow_up_from[:10])
    target = d1 + dt.timedelta(days=day)
    return (
        target.isoformat(),
        (target - dt.timedelta(days=window)).isoformat(),
        (target + dt.timedelta(days=window)).isoformat(),
    )


def next_visit(
    record: PatientRecord, params: ProtocolParameters
) -> tuple[str, str, str, str] | None:
    """The next visit of the schedule (visit, window start, window end, D1's clinical time):
    the first after the last one recorded (done or missed); None when follow-up has ended (the
    schedule's end, lost to follow-up) or has no D1 to count from."""
    d1 = _d1_of(record)
    fu = record.follow_up
    if d1 is None or fu.get("lost"):
        return None
    seen = set(fu.get("visits", {})) | set(fu.get("missed", {}))
    schedule = [name for name, _day, _window in params.follow_up_schedule]
    last = max((schedule.index(n) for n in seen if n in schedule), default=-1)
    for name in schedule[last + 1 :]:
        window = window_of(name, d1, params)
        assert window is not None
        return name, window[1], window[2], d1
    return None


def pending_sae_clock(record: PatientRecord) -> tuple[str, str, str] | None:
    """The SAE report due first (case id, report, due instant), or None."""
    best: tuple[dt.datetime, str, str, str] | None = None
    for case_id, case in record.sae_cases.items():
        for clock in case.get("clocks", ()):
            if not _open_clock(clock) or not clock.get("due_at"):
                continue
            due = dt.datetime.fromisoformat(clock["due_at"])
            if best is None or due < best[0]:
                best = (due, case_id, clock["report"], clock["due_at"])
    return None if best is None else (best[1], best[2], best[3])


def due_after_course(record: PatientRecord, params: ProtocolParameters) -> dict[str, Any]:
    """What is due after the course, for a patient's summary (keys only when something is):
    ``next_follow_up`` (the next visit of the schedule, its target day and window, while the
    patient is in follow-up) and ``sae_report_due`` (the SAE report due first: case, report,
    due instant as recorded)."""
    out: dict[str, Any] = {}
    visit = next_visit(record, params) if record.state in FOLLOW_UP_STATES else None
    if visit is not None:
        name, start, end, d1 = visit
        window = window_of(name, d1, params)
        out["next_follow_up"] = {
            "visit": name,
            "target_on": window[0] if window else None,
            "window_start": start,
            "window_end": end,
        }
    sae = pending_sae_clock(record)
    if sae is not None:
        out["sae_report_due"] = {"case_id": sae[0], "report": sae[1], "due_at": sae[2]}
    return out


def follow_up_outcome(
    trigger: str, facts: Mapping[str, Any], probe: Probe, params: ProtocolParameters
) -> dict[str, Any]:
    window = window_of(facts["visit"], facts.get("follow_up_from"), params)
    out: dict[str, Any] = {"visit": facts["visit"]}
    if window is not None:
        target, start, end = window
        date = facts.get("visit_date")
        out.update(target_on=target, window_start=start, window_end=end)
        out["in_window"] = date is not None and start <= date <= end
        if date is not None and not out["in_window"]:
            out["days_outside_window"] = (
                (dt.date.fromisoformat(start) - dt.date.fromisoformat(date)).days
                if date < start
                else (dt.date.fromisoformat(date) - dt.date.fromisoformat(end)).days
            )
    status = facts["disease_status"]
    if status.get("status") == "relapse":
        out["relapse"] = {"cd19": status.get("cd19")}
    malignancy = facts.get("new_malignancy")
    if malignancy:
        out["new_malignancy"] = malignancy.get("kind")
    return out


def missed_visit_outcome(
    trigger: str, facts: Mapping[str, Any], probe: Probe, params: ProtocolParameters
) -> dict[str, Any]:
    consecutive = int(facts.get("consecutive_missed_before", 0)) + 1
    return {
        "visit": facts["visit"],
        "consecutive_missed": consecutive,
        "lost_to_follow_up": consecutive >= params.lost_to_follow_up_missed,
    }


# ----------------------------------------------------------------------------------------------
# Death with a structured cause: record_death
# ----------------------------------------------------------------------------------------------


def parse_death(record: PatientRecord, p: Payload, day: dt.date, ctx: Facts, seed: Facts) -> Parsed:
    """A death: the free-text ``cause`` as before, and (new) a structured ``cause_of_death`` and
    ``aware_at``. A payload without the new keys records exactly what it recorded before."""
    norm, facts = blocks.parse_death(record, p, day, ctx, seed)
    problems: list[ProtocolInputError] = []
    cause: CauseOfDeathPayload | None = None
    if "cause_of_death" in p:
        try:
            cause = _decode(p["cause_of_death"], CauseOfDeathPayload, "payload.cause_of_death")
        except ProtocolInputError as exc:
            problems.append(exc)
    aware: str | None = None
    if "aware_at" in p:
        raw = p["aware_at"]
        try:
            if not isinstance(raw, str):
                raise ProtocolInputError("payload.aware_at", "must be an ISO 8601 time")
            aware = _instant(raw, "payload.aware_at").isoformat()
        except ProtocolInputError as exc:
            problems.append(exc)
    if problems:
        raise ProtocolInputError.joined(problems)
    if cause is not None:
        structured: dict[str, Any] = _plain(cause)
        tox_id = structured.get("toxicity_id")
        if cause.category == "adverse_event" and tox_id is None:
            raise ProtocolInputError(
                "payload.cause_of_death.toxicity_id",
                "a death from an adverse event names its episode (toxicity_id); episodes: "
                + (", ".join(record.toxicities) or "none"),
            )
        if tox_id is not None:
            if cause.category != "adverse_event":
                raise ProtocolInputError(
                    "payload.cause_of_death.toxicity_id",
                    "names the episode of a death from an adverse event (category adverse_event)",
                )
            episode = record.toxicities.get(tox_id)
            if episode is None:
                raise ContextInputError(
                    "payload.cause_of_death.toxicity_id",
                    f"no toxicity episode {tox_id!r} is on record; episodes: "
                    + (", ".join(record.toxicities) or "none"),
                )
            facts["episode_open"] = episode.open
            facts["sae_case"] = _case_brief(record, tox_id)
            ae = dict(episode.ae or {})
            ae["seriousness"] = sorted({*ae.get("seriousness", ()), "death"})
            if cause.related is not msgspec.UNSET:
                ae["attribution"] = cause.related
            facts["adverse_event_now"] = ae
        else:
            facts["sae_case"] = _case_brief(record, "death")
        norm["cause_of_death"] = structured
        facts["cause_of_death"] = structured
    elif aware is not None:
        facts["sae_case"] = _case_brief(record, "death")
    if aware is not None:
        norm["aware_at"] = aware
        facts["aware_at"] = aware
    if "cause_of_death" in p or aware is not None:
        facts["follow_up_from"] = _d1_of(record)
        facts["death_date"] = day.isoformat()
    return norm, facts


def death_time(record: PatientRecord, facts: Mapping[str, Any], occurred_at: dt.datetime) -> None:
    aware = facts.get("aware_at")
    if aware is not None and dt.datetime.fromisoformat(aware) < occurred_at:
        raise ProtocolInputError(
            "payload.aware_at",
            f"{aware} is before the death ({occurred_at.isoformat()}); the site becomes aware "
            "of a death at or after it",
        )


def death_outcome(
    trigger: str, facts: Mapping[str, Any], probe: Probe, params: ProtocolParameters
) -> dict[str, Any]:
    """Nothing for a death recorded the old way (free text only); otherwise its cause, the
    episode it closes at grade 5, the treatment-related mortality window and its SAE clocks."""
    cause = facts.get("cause_of_death")
    if cause is None and "aware_at" not in facts:
        return {}
    out: dict[str, Any] = {"cause_category": cause.get("category") if cause else None}
    d1 = facts.get("follow_up_from")
    days = None
    if d1 is not None:
        days = (dt.date.fromisoformat(facts["death_date"]) - dt.date.fromisoformat(d1[:10])).days
    out["days_after_d1"] = days
    out["within_trm_window"] = days is not None and days <= params.treatment_related_mortality_days
    tox_id = cause.get("toxicity_id") if cause else None
    if tox_id is not None:
        out["toxicity_id"] = tox_id
        out["closes_episode"] = bool(facts.get("episode_open"))
        out["grade"] = 5
        ae = facts["adverse_event_now"]
        susar = _susar(ae)
        out["sae"] = {
            "case_id": tox_id,
            "seriousness": ae["seriousness"],
            "susar": susar,
            "aware_at": facts.get("aware_at"),
            "clocks": _clocks_for(ae["seriousness"], susar, facts.get("sae_case"), params),
        }
    elif out["within_trm_window"]:
        out["sae"] = {
            "case_id": "death",
            "seriousness": ["death"],
            "susar": False,
            "aware_at": facts.get("aware_at"),
            "clocks": _clocks_for(["death"], False, facts.get("sae_case"), params),
        }
    return out


def sae_report_outcome(
    trigger: str, facts: Mapping[str, Any], probe: Probe, params: ProtocolParameters
) -> dict[str, Any]:
    """The report and the clock it answers (its due instant); whether it was sent late, and by
    how long, is derived from its clinical time (the sending time) when it is applied."""
    return {"case_id": facts["case_id"], "report": facts["report"], "due_at": facts.get("due_at")}


# ----------------------------------------------------------------------------------------------
# Corrections of adverse-event facts: a report_toxicity's adverse_event, a record_sae_report
# ----------------------------------------------------------------------------------------------


def merged_adverse_event(
    reports: list[Mapping[str, Any] | None], death: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """An episode's adverse-event facts from its reports' own (in the order recorded): each
    report's keys win over earlier ones, seriousness criteria add up; a death attributed to the
    episode adds ``death``, the outcome ``fatal`` and its relatedness (as ``record_death``
    does)."""
    merged: dict[str, Any] = {}
    seriousness: set[str] = set()
    for ae in reports:
        if not ae:
            continue
        merged.update(ae)
        seriousness |= set(ae.get("seriousness", ()))
    if death is not None:
        seriousness.add("death")
        merged["outcome"] = "fatal"
        if death.get("related"):
            merged["attribution"] = death["related"]
    if seriousness:
        merged["seriousness"] = sorted(seriousness)
    else:
        merged.pop("seriousness", None)
    return merged


def corrected_sae_case(
    case_id: str,
    case: Mapping[str, Any] | None,
    ae: Mapping[str, Any],
    corrects: int,
    start: str,
    params: ProtocolParameters,
) -> dict[str, Any] | None:
    """The safety case of an episode once a correction of its report (version ``corrects``)
    made its adverse-event facts ``ae``: ``start`` is when the site became aware of the
    corrected report (its ``aware_at``, or its clinical time).

    - not serious before, serious now: the case opens with its clocks from ``start``;
    - the clocks the corrected report started restart from ``start`` (same duration);
    - serious no more: every clock still running is cancelled (reports sent stay on record);
    - a SUSAR now: the expedited clock starts (7 days fatal or life-threatening, 15 others);
      running expedited clocks take the duration of the corrected seriousness; a SUSAR no
      more: its running expedited clock is cancelled;
    - a report already sent is judged again against its (re-started) clock.
    None: no case, before or after."""
    seriousness = sorted(set(ae.get("seriousness", ())))
    susar = _susar(ae)
    if case is None:
        if not seriousness:
            return None
        opened: dict[str, Any] = {
            "id": case_id,
            "opened_version": corrects,
            "aware_at": start,
            "seriousness": seriousness,
            "susar": susar,
            "clocks": [
                new_sae_clock(c["report"], start, c["within_hours"], corrects)
                for c in _clocks_for(seriousness, susar, None, params)
            ],
        }
        return opened
    new: dict[str, Any] = {
        **case,
        "seriousness": seriousness,
        "susar": susar,
        "clocks": [dict(c) for c in case.get("clocks", ())],
    }
    if case.get("opened_version") == corrects:
        new["aware_at"] = start
    live = [c for c in new["clocks"] if not c.get("cancelled")]
    for c in live:
        if c.get("version") == corrects and c.get("started_at") and c.get("due_at"):
            within = dt.datetime.fromisoformat(c["due_at"]) - dt.datetime.fromisoformat(
                c["started_at"]
            )
            c["started_at"] = start
            c["due_at"] = (dt.datetime.fromisoformat(start) + within).isoformat()
            judge_sent(c)
    cancel = f"correction of version {corrects}"
    if not seriousness:
        for c in live:
            if not c.get("sent_at"):
                c["cancelled"] = f"{cancel}: not serious"
        return new
    if not any(c["report"] == "initial" for c in live):
        new["clocks"].append(
            new_sae_clock("initial", start, params.sae_initial_report_hours, corrects)
        )
    days = (
        params.susar_fatal_report_days
        if FATAL_OR_LIFE_THREATENING & set(seriousness)
        else params.susar_other_report_days
    )
    expedited = [c for c in live if c["report"] == "expedited"]
    if susar and not expedited:
        new["clocks"].append(new_sae_clock("expedited", start, days * 24, corrects))
    for c in expedited:
        if c.get("sent_at") or not c.get("started_at"):
            continue
        if susar:
            due = dt.datetime.fromisoformat(c["started_at"]) + dt.timedelta(days=days)
            c["due_at"] = due.isoformat()
        else:
            c["cancelled"] = f"{cancel}: no longer a SUSAR"
    return new


__all__ = [
    "AESI",
    "FOLLOW_UP_SOURCES",
    "aesi_of",
    "corrected_sae_case",
    "death_outcome",
    "death_time",
    "due_after_course",
    "field_problems",
    "follow_up_outcome",
    "follow_up_time",
    "known_visits",
    "merged_adverse_event",
    "missed_visit_outcome",
    "next_visit",
    "parse_adverse_event",
    "parse_death",
    "parse_follow_up",
    "parse_missed_visit",
    "parse_sae_report",
    "parse_toxicity_ae",
    "pending_sae_clock",
    "sae_report_outcome",
    "sae_report_time",
    "toxicity_ae_outcome",
    "toxicity_time",
    "visit_schedule",
    "window_of",
]
