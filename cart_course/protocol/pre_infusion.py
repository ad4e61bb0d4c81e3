"""The pre-infusion safety gate (issue 20): no fraction into a patient who is not fit for it.

Split dosing exists so that D2 and D3 can be withheld when the patient is not fit for them
(``../shared/reference/clinical.md`` s4: in example protocols, no infusion with a temperature
> 38 C in the last 48 h, SpO2 < 91 %, hypotension needing vasopressors, or uncontrolled
infection). The trial text gives no gate: its limits are protocol parameters
(``ProtocolParameters.pre_infusion_*``, assumptions documented in ``docs/protocol.md``), and per
protocol version which fractions the gate judges and for which the observations are required.

The observations (``pre_infusion``) travel with ``give_infusion`` (the gate then judges the
fraction itself: rule ``pre_infusion_criteria_met``) or with ``assess_pre_infusion``, a bedside
assessment before the fraction that records a hold when the gate fails (the views show the
fraction held, next action "re-assess before D2", not overdue while held). A failing gate refuses
the fraction naming each failed criterion; a clinician may give it anyway only with a deviation
reason, and the failed criteria are recorded as the fraction's deviations.

Pure code: stdlib, attrs and msgspec only.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Mapping
from fractions import Fraction
from typing import TYPE_CHECKING, Any, Final

import attrs

from .errors import INVALID, Invalid, Problems, ProtocolInputError, key_name, key_names
from .parameters import ProtocolParameters
from .payloads import FieldsJson, PreInfusionPayload, convert
from .plausibility import finite_float, show_number
from .states import State
from .toxicity import Temperature

if TYPE_CHECKING:
    from .building_blocks import Facts, Parsed, Payload, PayloadParser
    from .record import PatientRecord

#: The observations' keys (all required: the gate reads each of them).
KEYS: Final = (
    "highest_temperature",
    "spo2_room_air_pct",
    "vasopressors",
    "uncontrolled_active_infection",
)
#: A plausible body temperature for the gate's observation (issue 20: outside it the value or
#: its unit is wrong): 30 to 45 C, 86 to 113 F.
TEMPERATURE_RANGE: Final[dict[str, tuple[float, float]]] = {"C": (30.0, 45.0), "F": (86.0, 113.0)}
#: The lowest plausible room-air SpO2 (%) of the gate's observation: below it the value is an
#: input error, not a patient to hold (``0.95`` is a fraction typed as a percent: send ``95``).
#: An assumption documented in ``docs/protocol.md``; it is not judged again on stored events.
SPO2_PLAUSIBLE_MIN_PCT: Final = 50.0
#: The gate's criteria, in the order they are judged and named (``temperature_on_record``: a
#: temperature above the limit recorded by an earlier assessment or fraction within the window).
CRITERIA: Final = ("temperature", "temperature_on_record", "spo2", "vasopressors", "infection")
#: The fact a gated move carries when temperatures above the limit are on record within the
#: window before its clinical time: ``{"judged_at": <the move's clinical time>,
#: "temperatures": [{"value", "unit", "occurred_at", "version"}, ...]}`` (absent otherwise: the
#: facts of a move with nothing on record keep their form).
WINDOW_FACT: Final = "pre_infusion_window"
#: The state in which each fraction is the next one.
NEXT_DAY: Final[dict[str, int]] = {
    State.APHERESED.value: 1,
    State.CONTINUED.value: 1,
    State.INFUSED_D1.value: 2,
    State.INFUSED_D2.value: 3,
}


@attrs.frozen(kw_only=True)
class PreInfusionObservations(FieldsJson):
    """What the gate reads: the highest temperature in the window before the fraction (with its
    unit), room-air SpO2 (%), vasopressors in use, an uncontrolled active infection."""

    highest_temperature: Temperature
    spo2_room_air_pct: float
    vasopressors: bool
    uncontrolled_active_infection: bool


def _temperature_problem(value: Any, unit: Any, field: str) -> ProtocolInputError | None:
    if unit is None:
        return ProtocolInputError(
            f"{field}.unit", "is required: the temperature's unit, 'C' or 'F' (never guessed)"
        )
    if not isinstance(unit, str) or unit not in TEMPERATURE_RANGE:
        return ProtocolInputError(f"{field}.unit", f"unit {unit!r} is not allowed; use 'C' or 'F'")
    if finite_float(value) is None:
        return ProtocolInputError(
            f"{field}.value",
            f"temperature must be a finite number (30 to 45 C or 86 to 113 F), got "
            f"{show_number(value)}",
        )
    lo, hi = TEMPERATURE_RANGE[unit]
    if not lo <= value <= hi:
        return ProtocolInputError(
            f"{field}.value",
            f"{value:g} {unit} is not a plausible body temperature (allowed 30 to 45 C or 86 to "
            "113 F); check the value and its unit",
        )
    return None


def _observations_of(p: PreInfusionPayload) -> PreInfusionObservations | None:
    t = p.highest_temperature
    lo, hi = TEMPERATURE_RANGE[t.unit]
    if not lo <= t.value <= hi or p.spo2_room_air_pct < SPO2_PLAUSIBLE_MIN_PCT:
        return None
    return PreInfusionObservations(
        highest_temperature=Temperature(value=t.value, unit=t.unit),
        spo2_room_air_pct=p.spo2_room_air_pct,
        vasopressors=p.vasopressors,
        uncontrolled_active_infection=p.uncontrolled_active_infection,
    )


def _spo2_floor_problem(spo2: float, field: str) -> ProtocolInputError:
    floor = f"{SPO2_PLAUSIBLE_MIN_PCT:g}"
    if 0 < spo2 <= 1:
        hint = (
            f"{spo2:g} looks like a fraction; send {round(spo2 * 100, 1):g} (a percentage, "
            f"{floor} to 100)"
        )
    else:
        hint = (
            f"{spo2:g} % is below {floor} %, not a plausible room-air SpO2 of a patient "
            "assessed for an infusion: check the value (a percentage, "
            f"{floor} to 100; a fraction such as 0.95 is sent as 95)"
        )
    return ProtocolInputError(f"{field}.spo2_room_air_pct", hint)


def parse_pre_infusion(
    data: Any, field: str = "payload.pre_infusion", *, plausible: bool = True
) -> PreInfusionObservations:
    """The gate's observations, validated; one error naming every invalid field.
    ``parse_pre_infusion(o.to_json()) == o``. ``plausible=False`` (the facts of a recorded
    event, judged again): the SpO2 plausibility floor, an input check, is not applied."""
    payload = convert(data, PreInfusionPayload, (("highest_temperature",),))
    if payload is not None:
        observations = _observations_of(payload)
        if observations is not None:
            return observations
    if not isinstance(data, Mapping):
        raise ProtocolInputError(
            field,
            'must be a JSON object like {"highest_temperature": {"value": 37.2, "unit": "C"}, '
            '"spo2_room_air_pct": 97, "vasopressors": false, "uncontrolled_active_infection": '
            "false}",
        )
    p = Problems()
    unknown = [k for k in data if k not in KEYS]
    if unknown:
        p.add(
            ProtocolInputError(
                f"{field}.{key_name(unknown[0])}",
                f"unknown field(s) {key_names(unknown)}; allowed fields are: {', '.join(KEYS)}",
            )
        )
    for key in KEYS:
        if key not in data:
            p.add(ProtocolInputError(f"{field}.{key}", "is required but missing"))
    temperature: Temperature | Invalid = INVALID
    raw = data.get("highest_temperature")
    if "highest_temperature" in data:
        tfield = f"{field}.highest_temperature"
        if not isinstance(raw, Mapping):
            p.add(
                ProtocolInputError(
                    tfield,
                    'must be the highest temperature with its unit, e.g. {"value": 37.2, '
                    f'"unit": "C"}}, got {raw!r}',
                )
            )
        else:
            extra = [k for k in raw if k not in ("value", "unit")]
            if extra:
                p.add(
                    ProtocolInputError(
                        f"{tfield}.{key_name(extra[0])}",
                        f"unknown field(s) {key_names(extra)}; allowed fields are: value, unit",
                    )
                )
            if "value" not in raw:
                p.add(ProtocolInputError(f"{tfield}.value", "is required but missing"))
            problem = _temperature_problem(raw.get("value"), raw.get("unit"), tfield)
            if problem is not None and not (
                "value" not in raw and problem.field.endswith(".value")
            ):
                p.add(problem)
            elif problem is None:
                temperature = Temperature(value=raw["value"], unit=raw["unit"])
    spo2 = data.get("spo2_room_air_pct")
    if "spo2_room_air_pct" in data and (
        isinstance(spo2, bool)
        or not isinstance(spo2, int | float)
        or finite_float(spo2) is None
        or not 0 <= spo2 <= 100
    ):
        p.add(
            ProtocolInputError(
                f"{field}.spo2_room_air_pct",
                f"room-air SpO2 is a percentage from 0 to 100 (%; below "
                f"{SPO2_PLAUSIBLE_MIN_PCT:g} % is not plausible), got {show_number(spo2)}",
            )
        )
    elif (
        plausible
        and isinstance(spo2, int | float)
        and not isinstance(spo2, bool)
        and spo2 < SPO2_PLAUSIBLE_MIN_PCT
    ):
        p.add(_spo2_floor_problem(float(spo2), field))
    for key in ("vasopressors", "uncontrolled_active_infection"):
        if key in data and not isinstance(data[key], bool):
            p.add(ProtocolInputError(f"{field}.{key}", f"must be true or false, got {data[key]!r}"))
    p.raise_if_any()
    assert not isinstance(temperature, Invalid)
    return PreInfusionObservations(
        highest_temperature=temperature,
        spo2_room_air_pct=data["spo2_room_air_pct"],
        vasopressors=data["vasopressors"],
        uncontrolled_active_infection=data["uncontrolled_active_infection"],
    )


# ----------------------------------------------------------------------------------------------
# The gate
# ----------------------------------------------------------------------------------------------


def _limit_in(unit: str, limit_c: float) -> float:
    """The temperature limit in the entered unit, converted exactly (38 C = 100.4 F)."""
    if unit == "C":
        return limit_c
    return float(Fraction(str(limit_c)) * 9 / 5 + 32)


@attrs.frozen(kw_only=True)
class Failure:
    """A failed criterion of the gate: its id and what was found."""

    criterion: str
    message: str

    def to_json(self) -> dict[str, str]:
        return {"criterion": self.criterion, "message": self.message}


def judge(obs: PreInfusionObservations, params: ProtocolParameters) -> list[Failure]:
    """The gate's failed criteria for these observations (empty: the patient may be infused)."""
    failed: list[Failure] = []
    t = obs.highest_temperature
    limit = params.pre_infusion_max_temperature_c
    window = params.pre_infusion_temperature_window_hours
    if t.value > _limit_in(t.unit, limit):
        failed.append(
            Failure(
                criterion="temperature",
                message=f"temperature {t.describe()} in the last {window} h is above {limit:g} C",
            )
        )
    spo2 = obs.spo2_room_air_pct
    if spo2 < params.pre_infusion_min_spo2_pct:
        failed.append(
            Failure(
                criterion="spo2",
                message=f"room-air SpO2 {spo2:g} % is below {params.pre_infusion_min_spo2_pct:g} %",
            )
        )
    if obs.vasopressors:
        failed.append(Failure(criterion="vasopressors", message="hypotension needing vasopressors"))
    if obs.uncontrolled_active_infection:
        failed.append(Failure(criterion="infection", message="uncontrolled active infection"))
    return failed


def _clinical_time(text: Any) -> dt.datetime | None:
    """A recorded clinical time (ISO 8601); a time without an offset is read as UTC."""
    if not isinstance(text, str):
        return None
    try:
        at = dt.datetime.fromisoformat(text)
    except ValueError:
        return None
    return at if at.tzinfo is not None else at.replace(tzinfo=dt.UTC)


def _above_limit(t: Mapping[str, Any], params: ProtocolParameters) -> bool:
    value, unit = t.get("value"), t.get("unit")
    if isinstance(value, bool) or not isinstance(value, int | float) or unit not in ("C", "F"):
        return False
    return bool(value > _limit_in(str(unit), params.pre_infusion_max_temperature_c))


def in_window(
    temperatures: Any, judged_at: dt.datetime, params: ProtocolParameters
) -> list[dict[str, Any]]:
    """The temperatures above the limit whose clinical time lies within the window before
    ``judged_at`` (``judged_at - window <= time <= judged_at``; both ends counted)."""
    if not isinstance(temperatures, list | tuple):
        return []
    start = judged_at - dt.timedelta(hours=params.pre_infusion_temperature_window_hours)
    kept = []
    for t in temperatures:
        if not isinstance(t, Mapping) or not _above_limit(t, params):
            continue
        at = _clinical_time(t.get("occurred_at"))
        if at is not None and start <= at <= judged_at:
            kept.append(dict(t))
    return kept


def window_failures(facts: Mapping[str, Any], params: ProtocolParameters) -> list[Failure]:
    """The temperatures above the limit on record within the window before the judged move's
    clinical time (the fact :data:`WINDOW_FACT`; none when it is absent: an older event)."""
    window = facts.get(WINDOW_FACT)
    if not isinstance(window, Mapping):
        return []
    judged_at = _clinical_time(window.get("judged_at"))
    if judged_at is None:
        return []
    fevers = in_window(window.get("temperatures"), judged_at, params)
    if not fevers:
        return []
    hours = params.pre_infusion_temperature_window_hours
    limit = params.pre_infusion_max_temperature_c
    seen = "; ".join(f"{t['value']:g} {t['unit']} at {t['occurred_at']}" for t in fevers)
    return [
        Failure(
            criterion="temperature_on_record",
            message=f"a temperature above {limit:g} C is on record within the {hours} h before "
            f"{window.get('judged_at')} ({seen}): a lower maximum given since does not erase it",
        )
    ]


def gate_failures(facts: Mapping[str, Any], params: ProtocolParameters) -> list[Failure]:
    """Why the gate refuses this fraction (empty: it does not). Reads the fraction's ``day``, its
    observations (``pre_infusion``, when sent), the hold a bedside assessment recorded for it
    (``pre_infusion_hold``: the fraction's own observations, when sent, are judged instead), and
    the temperatures above the limit on record within the window before it
    (:data:`WINDOW_FACT`: every one of them counts, whatever was observed since)."""
    day = facts.get("day")
    judged = params.pre_infusion_gate_days
    required = params.pre_infusion_required_days
    if day not in judged and day not in required:
        return []
    on_record = window_failures(facts, params)
    raw = facts.get("pre_infusion")
    if raw is None:
        hold = facts.get("pre_infusion_hold")
        if isinstance(hold, Mapping):
            return [
                Failure(
                    criterion="held",
                    message=f"D{day} is held by the pre-infusion assessment of "
                    f"{hold.get('occurred_at')} ({'; '.join(map(str, hold.get('failed', ())))}): "
                    "re-assess (assess_pre_infusion), or give the fraction with observations "
                    "that meet the gate",
                ),
                *on_record,
            ]
        if day in required:
            return [
                Failure(
                    criterion="observations_required",
                    message=f"this protocol version requires the pre-infusion observations "
                    f"before D{day} (highest temperature in the last "
                    f"{params.pre_infusion_temperature_window_hours} h, room-air SpO2, "
                    "vasopressors, uncontrolled active infection): give them as pre_infusion",
                ),
                *on_record,
            ]
        return on_record
    failed = judge(parse_pre_infusion(raw, plausible=False), params) + on_record
    return sorted(failed, key=lambda f: CRITERIA.index(f.criterion))


def gate_problems(facts: Mapping[str, Any], params: ProtocolParameters) -> list[str]:
    """:func:`gate_failures` as sentences, each naming the gate."""
    return [f"pre-infusion gate: {f.message}" for f in gate_failures(facts, params)]


# ----------------------------------------------------------------------------------------------
# What the record says: the context of an infusion, and of an assessment
# ----------------------------------------------------------------------------------------------


def _hold_for(record: PatientRecord, day: Any, course_number: Any) -> dict[str, Any] | None:
    hold = record.pre_infusion_hold
    if hold is None or hold.get("day") != day or hold.get("course_number") != course_number:
        return None
    return hold


def with_gate_hold(
    context: Callable[[PatientRecord], dict[str, Any]],
) -> Callable[[PatientRecord], dict[str, Any]]:
    """An infusion's context with the gate's hold of this fraction, when one is recorded (the
    context of a fraction without one is unchanged: stored facts keep their form)."""

    def build(record: PatientRecord) -> dict[str, Any]:
        facts = context(record)
        if record.pre_infusion_hold is not None:
            hold = _hold_for(record, facts.get("day"), facts.get("course_number"))
            if hold is not None:
                facts["pre_infusion_hold"] = dict(hold)
        return facts

    return build


def with_window(
    record: PatientRecord,
    context: dict[str, Any],
    occurred_at: dt.datetime,
    params: ProtocolParameters,
) -> dict[str, Any]:
    """A gated move's context with the temperatures above the limit on record within the window
    before its clinical time (:data:`WINDOW_FACT`), when there are any: recorded with the move,
    so the audit's re-check judges what the decision judged."""
    if not record.pre_infusion_temperatures:
        return context
    at = occurred_at if occurred_at.tzinfo is not None else occurred_at.replace(tzinfo=dt.UTC)
    fevers = in_window(record.pre_infusion_temperatures, at, params)
    if not fevers:
        return context
    return {**context, WINDOW_FACT: {"judged_at": occurred_at.isoformat(), "temperatures": fevers}}


def ctx_assessment(record: PatientRecord) -> dict[str, Any]:
    """What an assessment's rules read: the course's next fraction and whether the remaining
    fractions were cancelled."""
    day = NEXT_DAY.get(record.state)
    courses = record.courses
    number = len(courses) + 1 if day == 1 else len(courses)
    cancelled = bool(courses and day != 1 and courses[-1].cancelled)
    return {"next_day": day, "course_number": number, "fractions_cancelled": cancelled}


def parse_assessment(
    record: PatientRecord, p: Payload, day: dt.date, ctx: Facts, seed: Facts
) -> Parsed:
    """``assess_pre_infusion``: the fraction assessed (``day``) and the observations."""
    problems = Problems()
    fraction = p.get("day")
    if isinstance(fraction, bool) or not isinstance(fraction, int) or fraction not in (1, 2, 3):
        problems.add(
            ProtocolInputError(
                "payload.day",
                f"must be 1, 2 or 3, an integer (the fraction assessed), got {fraction!r}",
            )
        )
    observations = problems.run(lambda: parse_pre_infusion(p.get("pre_infusion")))
    problems.raise_if_any()
    assert not isinstance(observations, Invalid)
    obs = observations.to_json()
    return {"day": fraction, "pre_infusion": obs}, {"day": fraction, "pre_infusion": obs}


def parse_infusion_observations(parse: PayloadParser) -> PayloadParser:
    """``give_infusion``'s parser with its observations (``pre_infusion``, optional) parsed: the
    payload without them is parsed as before (its stored form unchanged)."""

    def parse_with(
        record: PatientRecord, p: Payload, day: dt.date, ctx: Facts, seed: Facts
    ) -> Parsed:
        if "pre_infusion" not in p:
            return parse(record, p, day, ctx, seed)
        rest = {k: v for k, v in p.items() if k != "pre_infusion"}
        problems = Problems()
        observations = problems.run(lambda: parse_pre_infusion(p["pre_infusion"]))
        parsed = problems.run(lambda: parse(record, rest, day, ctx, seed))
        problems.raise_if_any()
        assert not isinstance(observations, Invalid) and not isinstance(parsed, Invalid)
        norm, facts = parsed
        obs = observations.to_json()
        norm["pre_infusion"] = obs
        facts["pre_infusion"] = obs
        return norm, facts

    return parse_with


# ----------------------------------------------------------------------------------------------
# Outcomes
# ----------------------------------------------------------------------------------------------


def verdict(facts: Mapping[str, Any], params: ProtocolParameters) -> dict[str, Any]:
    """The gate's verdict on the facts: judged or not, met or not, the failed criteria."""
    day = facts.get("day")
    judged = day in params.pre_infusion_gate_days or day in params.pre_infusion_required_days
    failures = gate_failures(facts, params) if judged else []
    return {
        "judged": judged,
        "criteria_met": not failures,
        "failed_criteria": [f.criterion for f in failures],
        "failed": [f.message for f in failures],
    }


def assessment_outcome(
    trigger: str, facts: Mapping[str, Any], probe: Any, params: ProtocolParameters
) -> dict[str, Any]:
    """What a bedside assessment established: the verdict, and whether the fraction is held."""
    result = verdict(facts, params)
    return {
        "day": facts["day"],
        "course_number": facts.get("course_number"),
        **result,
        "held": result["judged"] and not result["criteria_met"],
    }


def with_gate_outcome(
    outcome: Callable[[str, Mapping[str, Any], Any, ProtocolParameters], dict[str, Any]],
) -> Callable[[str, Mapping[str, Any], Any, ProtocolParameters], dict[str, Any]]:
    """An infusion's outcome with the gate's verdict, when the gate read anything (observations
    sent, or a hold recorded): an infusion without either has the outcome it always had."""

    def build(
        trigger: str, facts: Mapping[str, Any], probe: Any, params: ProtocolParameters
    ) -> dict[str, Any]:
        out = outcome(trigger, facts, probe, params)
        if "pre_infusion" in facts or "pre_infusion_hold" in facts or WINDOW_FACT in facts:
            out["pre_infusion_gate"] = verdict(facts, params)
        return out

    return build
