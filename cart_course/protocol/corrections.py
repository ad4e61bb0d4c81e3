"""``correct``: a recorded fact re-stated, decided as pure protocol code.

What may be corrected (the definitions' ``correctable`` keys), the checks on a correction, the
corrected move judged again by its protocol version's rules (findings, not refusals: a correction
is recorded with what it breaks), and what it changes downstream (a re-planned course, a
re-dated schedule). No I/O: the caller gives the record and the patient's history as plain data
(:class:`RecordedMove`, :class:`RecordedCorrection`); :func:`decide_correction` returns what to
record (:class:`Correction`) or raises :class:`ProtocolInputError` naming the field.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import attrs

from .commands import (
    RecordedFraction,
    corrected_fraction_context,
    outcome_of,
    payload_facts,
    replan_course,
    reschedule_course,
)
from .errors import ProtocolInputError, RecordConflictInputError, key_name
from .follow_up import corrected_sae_case, merged_adverse_event
from .record import PatientRecord
from .registry import CORRECTION_KEYS, REGISTRY, Registry
from .signatures import event_version
from .versions import ProtocolVersion, get_version


@attrs.frozen(kw_only=True)
class RecordedMove:
    """A recorded move of the patient (a ``Moved`` event's fields, as plain data)."""

    version: int
    command: str
    trigger: str
    from_state: str
    to_state: str
    payload: Mapping[str, Any]
    facts: Mapping[str, Any]
    protocol_version: str
    occurred_at: str


@attrs.frozen(kw_only=True)
class RecordedCorrection:
    """A recorded correction (a ``FactCorrected`` event's fields, as plain data)."""

    version: int
    corrects: int
    payload: Mapping[str, Any]
    facts: Mapping[str, Any]


#: The patient's history as plain data, in version order (other events: left out).
History = Sequence[RecordedMove | RecordedCorrection]


@attrs.frozen(kw_only=True)
class Correction:
    """What a correction records (``FactCorrected``'s fields besides who, when, why)."""

    corrects: int
    trigger: str
    changes: dict[str, Any]
    payload: dict[str, Any]
    facts: dict[str, Any]
    outcome: dict[str, Any]
    findings: list[str]
    protocol_version: str

    def result_outcome(self) -> dict[str, Any]:
        """The command result's ``outcome``: the corrected version and what it established."""
        return {"corrects": self.corrects, **self.outcome}


def changes_error(exc: ProtocolInputError, changes: Mapping[str, Any]) -> ProtocolInputError:
    """An error in a corrected payload, named where the client wrote it: a key of ``changes``
    is ``payload.changes.<key>`` (not the corrected move's own ``payload.<key>``)."""
    field = exc.field if exc.field.startswith(("payload", "command")) else f"payload.{exc.field}"
    head, _, rest = field.removeprefix("payload.").partition(".")
    if field.startswith("payload.") and head in changes:
        if changes[head] is None:
            return ProtocolInputError(
                f"payload.changes.{head}", f"cannot be removed (null): {exc.message}"
            )
        return ProtocolInputError(
            f"payload.changes.{head}" + (f".{rest}" if rest else ""), exc.message
        )
    return ProtocolInputError(field, exc.message)


def recorded_fractions(history: History, fallback: ProtocolVersion) -> dict[int, RecordedFraction]:
    """Each recorded infusion by version, as its latest facts state it (the move's, or those of
    its latest correction), with the protocol version it was recorded under."""
    fractions: dict[int, RecordedFraction] = {}
    for e in history:
        if isinstance(e, RecordedMove) and e.trigger.startswith("infuse_d"):
            try:
                protocol = get_version(e.protocol_version)
            except KeyError:  # UnknownProtocolVersionError: judged under the correction's
                protocol = fallback
            fractions[e.version] = RecordedFraction(
                version=e.version, trigger=e.trigger, facts=e.facts, protocol=protocol
            )
        elif isinstance(e, RecordedCorrection) and e.corrects in fractions:
            fractions[e.corrects] = attrs.evolve(fractions[e.corrects], facts=e.facts)
    return fractions


def out_of_order(
    history: History, corrects: int, occurred: dt.datetime, registry: Registry = REGISTRY
) -> list[str]:
    """Findings when a corrected clinical time puts move ``corrects`` before the move it
    followed or after the move that followed it (each at its clinical time as last corrected)."""
    times: dict[int, tuple[str, str]] = {}
    for e in history:
        if isinstance(e, RecordedMove) and e.command not in registry.episode_commands:
            times[e.version] = (e.occurred_at, e.trigger)
    for e in history:
        if isinstance(e, RecordedCorrection) and e.corrects in times:
            when = e.facts.get("_occurred_at")
            if when:
                times[e.corrects] = (when, times[e.corrects][1])
    found = []
    earlier = [v for v in times if v < corrects]
    later = [v for v in times if v > corrects]
    if earlier:
        v = max(earlier)
        when, trigger = times[v]
        if occurred < dt.datetime.fromisoformat(when):
            found.append(
                f"correction of version {corrects}: {occurred.isoformat()} is before the move it "
                f"followed ({trigger}, version {v}, at {when})"
            )
    if later:
        v = min(later)
        when, trigger = times[v]
        if occurred > dt.datetime.fromisoformat(when):
            found.append(
                f"correction of version {corrects}: {occurred.isoformat()} is after the move that "
                f"followed it ({trigger}, version {v}, at {when})"
            )
    return found


#: Parses a corrected clinical time (the contract's: RFC 3339 with an offset, not in the future),
#: raising an error that names ``field``.
TimeParser = Callable[[Any, str], dt.datetime]


#: Corrections whose clinical-time check runs again on the corrected facts (issue 16).
_TIMED_CORRECTIONS = frozenset({"report_toxicity", "record_sae_report"})


def _episode_adverse_event(
    record: PatientRecord,
    history: History,
    corrects: int,
    original: RecordedMove,
    facts: dict[str, Any],
    occurred: dt.datetime,
) -> tuple[dict[str, Any], str] | None:
    """For a corrected toxicity report whose adverse-event facts are (or were) given: the
    episode's AE facts merged over its reports with the corrected one in its place (sets
    ``facts["adverse_event_now"]``), and when the site became aware of the corrected report.
    None: no adverse-event facts, before or after."""
    if original.trigger != "report_toxicity":
        return None
    tox_id = facts.get("toxicity_id")
    reports: dict[int, Mapping[str, Any] | None] = {}
    for e in history:
        if (
            isinstance(e, RecordedMove)
            and e.trigger == "report_toxicity"
            and e.facts.get("toxicity_id") == tox_id
        ):
            reports[e.version] = e.facts.get("adverse_event")
        elif isinstance(e, RecordedCorrection) and e.corrects in reports:
            reports[e.corrects] = e.facts.get("adverse_event")
    corrected = facts.get("adverse_event")
    if not corrected and not reports.get(corrects):
        return None
    reports[corrects] = corrected
    death = record.death or {}
    cause = death.get("cause_of_death") or {}
    ae_now = merged_adverse_event(
        [reports[v] for v in sorted(reports)],
        cause if tox_id is not None and cause.get("toxicity_id") == tox_id else None,
    )
    facts["adverse_event_now"] = ae_now
    start = (corrected or {}).get("aware_at") or occurred.isoformat()
    return ae_now, str(start)


def decide_correction(
    record: PatientRecord,
    history: History,
    payload: Mapping[str, Any],
    reason: str | None,
    version_now: int,
    parse_time: TimeParser,
    registry: Registry = REGISTRY,
) -> Correction:
    """The correction ``payload`` asks for on a patient at ``version_now`` whose ``history`` (the
    recorded moves and corrections) evolved ``record``: the checks, the corrected facts judged by
    the rules of the corrected move's protocol version, and what the correction changes."""
    extra = sorted(set(payload) - set(CORRECTION_KEYS), key=str)
    if extra:
        raise ProtocolInputError(
            f"payload.{key_name(extra[0])}", "unknown key; allowed: " + ", ".join(CORRECTION_KEYS)
        )
    if not reason:
        raise ProtocolInputError("reason", "a correction needs a reason (what was wrong and why)")
    corrects = event_version(
        payload.get("corrects"), version_now, "payload.corrects", "an event of this patient"
    )
    changes = payload.get("changes")
    if not isinstance(changes, Mapping) or not changes:
        raise ProtocolInputError(
            "payload.changes", "must be a non-empty object of payload keys -> new values"
        )
    original = next((e for e in history if e.version == corrects), None)
    if not isinstance(original, RecordedMove) or original.trigger not in registry.correctable:
        kinds = ", ".join(registry.correctable)
        raise RecordConflictInputError(
            "payload.corrects",
            f"version {corrects} is not a correctable move; correctable: {kinds}",
        )
    base_payload = dict(original.payload)
    base_occurred = original.occurred_at
    for e in history:
        if isinstance(e, RecordedCorrection) and e.corrects == corrects:
            base_payload = dict(e.payload)
            base_occurred = e.facts.get("_occurred_at", base_occurred)
    definition = registry.moves[original.command]
    allowed_keys = {*definition.correctable, "occurred_at"}
    for key in changes:
        if key not in allowed_keys:
            raise ProtocolInputError(
                f"payload.changes.{key_name(key)}",
                f"cannot be corrected on {original.command}; correctable keys: "
                + ", ".join(sorted(allowed_keys)),
            )
    new_payload = {**base_payload, **{k: v for k, v in changes.items() if k != "occurred_at"}}
    new_payload = {k: v for k, v in new_payload.items() if v is not None}
    if "occurred_at" in changes:
        occurred = parse_time(changes["occurred_at"], "payload.changes.occurred_at")
    else:
        occurred = dt.datetime.fromisoformat(base_occurred)
    version = get_version(original.protocol_version)
    # A fraction's correction reads the course as the record states it now (a corrected D1
    # weight re-planned it), not as it was when the fraction was recorded.
    context = {**original.facts, **corrected_fraction_context(record, corrects)}
    try:
        _old_norm, old_pfacts = payload_facts(
            record,
            original.command,
            base_payload,
            dt.datetime.fromisoformat(base_occurred).date(),
            context,
            registry,
        )
        norm, pfacts = payload_facts(
            record, original.command, new_payload, occurred.date(), context, registry
        )
    except ProtocolInputError as exc:
        raise changes_error(exc, changes) from None
    facts = {k: v for k, v in context.items() if k not in old_pfacts}
    facts.update(pfacts)
    facts["_occurred_at"] = occurred.isoformat()
    run = version.dry_run(original.from_state, original.trigger, facts)
    findings = [f"correction of version {corrects}: {f.message}" for f in run.failed]
    if "occurred_at" in changes and original.command not in registry.episode_commands:
        findings.extend(out_of_order(history, corrects, occurred, registry))
    if run.allowed and run.dest != original.to_state:
        findings.append(
            f"correction of version {corrects}: with the corrected facts the move would lead to "
            f"{run.dest}, not {original.to_state} as recorded"
        )
    if definition.check_time is not None and original.trigger in _TIMED_CORRECTIONS:
        try:  # an SAE report before awareness, an awareness before the onset: refused
            definition.check_time(record, {**facts, **pfacts}, occurred)
        except ProtocolInputError as exc:
            raise changes_error(exc, changes) from None
    episode_ae = _episode_adverse_event(record, history, corrects, original, facts, occurred)
    outcome = outcome_of(original.trigger, facts, version, registry=registry)
    if episode_ae is not None:
        # the episode's AE facts and its safety case as the corrected report makes them (not
        # the clocks a new report would start: ``follow_up.corrected_sae_case``)
        ae_now, start = episode_ae
        outcome.pop("sae", None)
        outcome["adverse_event_now"] = ae_now
        outcome["sae_case"] = corrected_sae_case(
            str(facts["toxicity_id"]),
            record.sae_cases.get(str(facts["toxicity_id"])),
            ae_now,
            corrects,
            start,
            version.params,
        )
    date_key = "apheresis_date" if original.trigger == "record_apheresis" else "infusion_date"
    new_date = pfacts.get(date_key)
    if isinstance(new_date, str) and new_date != old_pfacts.get(date_key):
        rescheduled, more = reschedule_course(
            record, corrects, original.trigger, new_date, recorded_fractions(history, version)
        )
        if rescheduled:
            outcome["rescheduled"] = rescheduled
        findings.extend(more)
    if original.trigger == "assess_pre_infusion":
        # the hold follows the corrected observations while this assessment is still the one the
        # next fraction waits on: no later assessment, no fraction given since
        outcome["operative"] = not any(
            isinstance(e, RecordedMove)
            and e.version > corrects
            and (e.trigger == "assess_pre_infusion" or e.trigger.startswith("infuse_d"))
            for e in history
        )
        outcome["occurred_at"] = occurred.isoformat()
    if original.trigger == "infuse_d1":
        replanned, more = replan_course(
            record, corrects, outcome, recorded_fractions(history, version)
        )
        if replanned:
            outcome["replanned"] = replanned
        findings.extend(more)
    return Correction(
        corrects=corrects,
        trigger=original.trigger,
        changes=dict(changes),
        payload=norm,
        facts=facts,
        outcome=outcome,
        findings=findings,
        protocol_version=version.id,
    )
