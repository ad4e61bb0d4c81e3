"""SDTMIG 3.4 datasets from the log: the domains' metadata, and the rows each event kind gives.

The mapping is a table: :data:`MAPPERS` maps an event type (``InfusionGiven``) to the functions
that turn it (as known at the cut-off, corrections applied: :class:`~.source.Entry`) into rows of
one or more domains. A new event kind adds an entry there (and, for a new variable, a line in
:data:`DOMAINS`); nothing else changes. DM is derived last from what the rows established (first
and last exposure, consent, death, arm). ``docs/exports.md`` is the mapping table in words.
"""

from __future__ import annotations

import datetime as dt
import re
import unicodedata
from collections.abc import Callable, Iterable
from typing import Any, Final

import attrs

from ..audit.log import site_of_events
from ..protocol.eligibility import CRITERIA, CriterionKind
from .source import STUDY_ID, Cut, Entry, Subject

# -- the domains' metadata ----------------------------------------------------------------------


@attrs.frozen
class Var:
    name: str
    label: str
    type: str = "Char"  # "Char" | "Num"
    core: str = "Perm"  # "Req" | "Exp" | "Perm"
    codelist: str | None = None
    origin: str = "Collected"  # define.xml def:Origin Type
    #: define.xml data type (``text``, ``integer``, ``float``, ``datetime``)
    datatype: str | None = None
    comment: str | None = None

    @property
    def data_type(self) -> str:
        if self.datatype:
            return self.datatype
        if self.type == "Num":
            return "integer" if self.name.endswith(("SEQ", "DY", "NUM")) else "float"
        return "datetime" if self.name.endswith("DTC") else "text"


@attrs.frozen
class Domain:
    name: str
    label: str
    cls: str  # define.xml def:Class
    structure: str
    keys: tuple[str, ...]
    variables: tuple[Var, ...]

    def var(self, name: str) -> Var:
        for v in self.variables:
            if v.name == name:
                return v
        raise KeyError(name)

    @property
    def names(self) -> list[str]:
        return [v.name for v in self.variables]


def _ident(prefix: str) -> tuple[Var, ...]:
    return (
        Var("STUDYID", "Study Identifier", core="Req", origin="Assigned"),
        Var("DOMAIN", "Domain Abbreviation", core="Req", origin="Assigned"),
        Var("USUBJID", "Unique Subject Identifier", core="Req", origin="Derived"),
        Var(f"{prefix}SEQ", "Sequence Number", "Num", "Req", origin="Derived"),
    )


def _dates(prefix: str, *names: str) -> tuple[Var, ...]:
    labels = {
        "DTC": "Date/Time of Collection",
        "STDTC": "Start Date/Time",
        "ENDTC": "End Date/Time",
        "DY": "Study Day",
        "STDY": "Study Day of Start",
        "ENDY": "Study Day of End",
    }
    out = []
    for n in names:
        label = labels[n]
        if n in ("DTC", "STDTC", "ENDTC"):
            label = {
                "DTC": "Date/Time of Collection",
                "STDTC": "Start Date/Time",
                "ENDTC": "End Date/Time",
            }[n]
            out.append(Var(prefix + n, label, core="Exp"))
        else:
            out.append(Var(prefix + n, label, "Num", origin="Derived"))
    return tuple(out)


SUPP_VARS: Final = (
    Var("STUDYID", "Study Identifier", core="Req", origin="Assigned"),
    Var("RDOMAIN", "Related Domain Abbreviation", core="Req", origin="Assigned"),
    Var("USUBJID", "Unique Subject Identifier", core="Req", origin="Derived"),
    Var("IDVAR", "Identifying Variable", core="Exp", origin="Assigned"),
    Var("IDVARVAL", "Identifying Variable Value", core="Exp", origin="Derived"),
    Var("QNAM", "Qualifier Variable Name", core="Req", origin="Assigned"),
    Var("QLABEL", "Qualifier Variable Label", core="Req", origin="Assigned"),
    Var("QVAL", "Data Value", core="Req"),
    Var("QORIG", "Origin", core="Req", origin="Assigned"),
)

DOMAINS: Final[dict[str, Domain]] = {
    d.name: d
    for d in (
        Domain(
            "DM",
            "Demographics",
            "SPECIAL PURPOSE",
            "One record per subject",
            ("STUDYID", "USUBJID"),
            (
                Var("STUDYID", "Study Identifier", core="Req", origin="Assigned"),
                Var("DOMAIN", "Domain Abbreviation", core="Req", origin="Assigned"),
                Var("USUBJID", "Unique Subject Identifier", core="Req", origin="Derived"),
                Var("SUBJID", "Subject Identifier for the Study", core="Req"),
                Var("RFSTDTC", "Subject Reference Start Date/Time", core="Exp", origin="Derived"),
                Var("RFENDTC", "Subject Reference End Date/Time", core="Exp", origin="Derived"),
                Var("RFXSTDTC", "Date/Time of First Study Treatment", core="Exp", origin="Derived"),
                Var("RFXENDTC", "Date/Time of Last Study Treatment", core="Exp", origin="Derived"),
                Var("RFICDTC", "Date/Time of Informed Consent", core="Exp", origin="Derived"),
                Var("RFPENDTC", "Date/Time of End of Participation", core="Exp", origin="Derived"),
                Var("DTHDTC", "Date/Time of Death", core="Exp", origin="Derived"),
                Var("DTHFL", "Subject Death Flag", core="Exp", codelist="NY", origin="Derived"),
                Var("SITEID", "Study Site Identifier", core="Req", origin="Assigned"),
                Var("AGE", "Age", "Num", "Exp"),
                Var("AGEU", "Age Units", core="Exp"),
                Var("SEX", "Sex", core="Req", codelist="SEX", origin="Assigned"),
                Var("RACE", "Race", core="Exp"),
                Var("ARMCD", "Planned Arm Code", core="Exp", origin="Assigned"),
                Var("ARM", "Description of Planned Arm", core="Exp", origin="Assigned"),
                Var("ACTARMCD", "Actual Arm Code", core="Exp", origin="Derived"),
                Var("ACTARM", "Description of Actual Arm", core="Exp", origin="Derived"),
                Var(
                    "ARMNRS",
                    "Reason Arm and/or Actual Arm is Null",
                    core="Exp",
                    codelist="ARMNRS",
                    origin="Derived",
                ),
                Var("COUNTRY", "Country", core="Req", origin="Assigned"),
            ),
        ),
        Domain(
            "IE",
            "Inclusion/Exclusion Criteria Not Met",
            "FINDINGS",
            "One record per inclusion/exclusion criterion not met per subject",
            ("STUDYID", "USUBJID", "IETESTCD", "IEDTC"),
            (
                *_ident("IE"),
                Var("IESPID", "Sponsor-Defined Identifier", origin="Assigned"),
                Var("IETESTCD", "Incl/Excl Criterion Short Name", core="Req", origin="Assigned"),
                Var("IETEST", "Inclusion/Exclusion Criterion", core="Req", origin="Assigned"),
                Var(
                    "IECAT",
                    "Inclusion/Exclusion Category",
                    core="Req",
                    codelist="IECAT",
                    origin="Assigned",
                ),
                Var(
                    "IEORRES",
                    "I/E Criterion Original Result",
                    core="Req",
                    codelist="NY",
                    origin="Derived",
                ),
                Var(
                    "IESTRESC",
                    "I/E Criterion Result in Std Format",
                    core="Req",
                    codelist="NY",
                    origin="Derived",
                ),
                *_dates("IE", "DTC", "DY"),
            ),
        ),
        Domain(
            "PR",
            "Procedures",
            "INTERVENTIONS",
            "One record per procedure per subject",
            ("STUDYID", "USUBJID", "PRTRT", "PRSTDTC"),
            (
                *_ident("PR"),
                Var("PRSPID", "Sponsor-Defined Identifier", origin="Assigned"),
                Var("PRREFID", "Reference ID"),
                Var("PRTRT", "Reported Name of Procedure", core="Req", origin="Assigned"),
                *_dates("PR", "STDTC", "STDY"),
            ),
        ),
        Domain(
            "EX",
            "Exposure",
            "INTERVENTIONS",
            "One record per fraction per subject",
            ("STUDYID", "USUBJID", "EXTRT", "EXSTDTC"),
            (
                *_ident("EX"),
                Var("EXSPID", "Sponsor-Defined Identifier", origin="Derived"),
                Var("EXTRT", "Name of Treatment", core="Req", origin="Assigned"),
                Var("EXDOSE", "Dose", "Num", "Exp"),
                Var("EXDOSU", "Dose Units", core="Exp", codelist="UNIT"),
                Var("EXDOSFRM", "Dose Form", core="Exp", origin="Assigned"),
                Var("EXROUTE", "Route of Administration", codelist="ROUTE", origin="Assigned"),
                Var("EXLOT", "Lot Number"),
                Var("EXADJ", "Reason for Dose Adjustment"),
                Var("EXTPT", "Planned Time Point Name", origin="Derived"),
                Var("EXTPTNUM", "Planned Time Point Number", "Num", origin="Derived"),
                *_dates("EX", "STDTC", "ENDTC", "STDY", "ENDY"),
            ),
        ),
        Domain(
            "AE",
            "Adverse Events",
            "EVENTS",
            "One record per adverse event per subject",
            ("STUDYID", "USUBJID", "AEDECOD", "AESTDTC"),
            (
                *_ident("AE"),
                Var("AESPID", "Sponsor-Defined Identifier"),
                Var("AETERM", "Reported Term for the Adverse Event", core="Req"),
                Var("AEDECOD", "Dictionary-Derived Term", core="Req", origin="Assigned"),
                Var("AEBODSYS", "Body System or Organ Class", core="Exp", origin="Assigned"),
                Var(
                    "AESER",
                    "Serious Event",
                    core="Exp",
                    codelist="NY",
                    origin="Derived",
                    comment="Y when the protocol marks the toxicity severe (grade >= 3).",
                ),
                Var("AESDTH", "Results in Death", codelist="NY", origin="Derived"),
                Var("AEOUT", "Outcome of Adverse Event", codelist="OUT", origin="Derived"),
                Var(
                    "AETOXGR",
                    "Standard Toxicity Grade",
                    codelist="TOXGR",
                    origin="Derived",
                    comment="Graded by the ASTCT 2019 consensus grading (CRS, ICANS); the scale "
                    "and version of each record are in SUPPAE.AEGRSCL.",
                ),
                *_dates("AE", "STDTC", "ENDTC", "STDY", "ENDY"),
            ),
        ),
        Domain(
            "FA",
            "Findings About Events or Interventions",
            "FINDINGS ABOUT",
            "One record per finding per object per time point per subject",
            ("STUDYID", "USUBJID", "FATESTCD", "FAOBJ", "FADTC"),
            (
                *_ident("FA"),
                Var("FASPID", "Sponsor-Defined Identifier"),
                Var("FATESTCD", "Findings About Short Name", core="Req", origin="Assigned"),
                Var("FATEST", "Findings About Test Name", core="Req", origin="Assigned"),
                Var("FAOBJ", "Object of the Observation", core="Req", origin="Assigned"),
                Var("FAORRES", "Result or Finding in Original Units", core="Exp"),
                Var("FAORRESU", "Original Units", core="Exp", codelist="UNIT"),
                Var(
                    "FASTRESC",
                    "Character Result/Finding in Std Format",
                    core="Exp",
                    origin="Derived",
                ),
                Var(
                    "FASTRESN",
                    "Numeric Result/Finding in Std Units",
                    "Num",
                    "Exp",
                    origin="Derived",
                ),
                Var("FASTRESU", "Standard Units", core="Exp", codelist="UNIT", origin="Derived"),
                *_dates("FA", "DTC", "DY"),
            ),
        ),
        Domain(
            "RS",
            "Disease Response and Clin Classification",
            "FINDINGS",
            "One record per response assessment per subject",
            ("STUDYID", "USUBJID", "RSTESTCD", "RSDTC"),
            (
                *_ident("RS"),
                Var("RSSPID", "Sponsor-Defined Identifier", origin="Derived"),
                Var("RSTESTCD", "Assessment Short Name", core="Req", origin="Assigned"),
                Var("RSTEST", "Assessment Name", core="Req", origin="Assigned"),
                Var("RSCAT", "Category for Assessment", core="Exp"),
                Var(
                    "RSORRES",
                    "Result or Finding in Original Units",
                    core="Exp",
                    codelist="RSRESP",
                    origin="Derived",
                ),
                Var(
                    "RSSTRESC",
                    "Character Result/Finding in Std Format",
                    core="Exp",
                    codelist="RSRESP",
                    origin="Derived",
                ),
                *_dates("RS", "DTC", "DY"),
            ),
        ),
        Domain(
            "DS",
            "Disposition",
            "EVENTS",
            "One record per disposition status or protocol milestone per subject",
            ("STUDYID", "USUBJID", "DSDECOD", "DSSTDTC"),
            (
                *_ident("DS"),
                Var("DSSPID", "Sponsor-Defined Identifier", origin="Derived"),
                Var("DSTERM", "Reported Term for the Disposition Event", core="Req"),
                Var(
                    "DSDECOD",
                    "Standardized Disposition Term",
                    core="Req",
                    codelist="NCOMPLT",
                    origin="Assigned",
                ),
                Var(
                    "DSCAT",
                    "Category for Disposition Event",
                    core="Exp",
                    codelist="DSCAT",
                    origin="Assigned",
                ),
                *_dates("DS", "STDTC", "STDY"),
            ),
        ),
    )
}

#: The supplemental qualifiers (QNAM -> label) each parent domain may carry.
SUPP_QUALIFIERS: Final[dict[str, dict[str, str]]] = {
    "EX": {
        "WEIGHTKG": "Body Weight Used for the Dose (kg)",
        "PLANDOSE": "Planned Cells for the Fraction",
        "EXCOURSE": "Treatment Course Number",
    },
    "AE": {"AEGRSCL": "Toxicity Grading Scale and Version"},
    "RS": {"MRDSTAT": "Minimal Residual Disease Status", "RSCOURSE": "Treatment Course Number"},
}

#: The origin of each supplemental qualifier that is not collected as entered.
SUPP_ORIGINS: Final[dict[str, str]] = {
    "PLANDOSE": "Derived",
    "EXCOURSE": "Derived",
    "AEGRSCL": "Derived",
    "MRDSTAT": "Derived",
    "RSCOURSE": "Derived",
}


def number_text(value: float) -> str:
    """A number as text, every digit kept (``9330000``, ``41.2``)."""
    if isinstance(value, bool):
        return "Y" if value else "N"
    if isinstance(value, float) and value.is_integer() and abs(value) < 1e16:
        return str(int(value))
    return repr(value)


# -- values --------------------------------------------------------------------------------------

#: Characters transliterated for SDTM's ASCII values (anything else: NFKD, then "?").
TRANSLITERATION: Final[dict[str, str]] = {
    "\u2265": ">=",
    "\u2264": "<=",
    "\u00b5": "u",
    "\u03bc": "u",
    "\u00d7": "x",
    "\u00b0": " deg ",
    "\u2013": "-",
    "\u2014": "-",
    "\u2018": "'",
    "\u2019": "'",
    "\u201c": '"',
    "\u201d": '"',
    "\u00df": "ss",
}

#: The longest value SDTM allows in a character variable (bytes).
MAX_VALUE = 200


def transliterate(text: str) -> str:
    """``text`` in ASCII: the table above, then the base letter of accented ones, then ``?``."""
    out = []
    for ch in text:
        if ch.isascii():
            out.append(ch)
        elif ch in TRANSLITERATION:
            out.append(TRANSLITERATION[ch])
        else:
            base = unicodedata.normalize("NFKD", ch).encode("ascii", "ignore").decode()
            out.append(base or "?")
    return "".join(out)


def dtc(text: str | None) -> str | None:
    """An ISO 8601 SDTM date-time (UTC, to the minute) from a recorded one."""
    if not text:
        return None
    moment = dt.datetime.fromisoformat(text)
    if moment.tzinfo is not None:
        moment = moment.astimezone(dt.UTC)
    return moment.strftime("%Y-%m-%dT%H:%M")


def study_day(when: str | None, reference: str | None) -> int | None:
    """--DY: days from RFSTDTC, the reference day being day 1 (there is no day 0)."""
    if not when or not reference:
        return None
    delta = (dt.date.fromisoformat(when[:10]) - dt.date.fromisoformat(reference[:10])).days
    return delta + 1 if delta >= 0 else delta


def usubjid(patient_id: str) -> str:
    return f"{STUDY_ID}-{patient_id}"


# -- the rows of each event kind ----------------------------------------------------------------


@attrs.frozen
class Finding:
    """Something the export or the checks report about a value (``level`` error|warning|note)."""

    level: str
    rule: str
    dataset: str
    message: str
    usubjid: str | None = None
    variable: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {k: v for k, v in attrs.asdict(self).items() if v is not None}

    def line(self) -> str:
        where = ".".join(x for x in (self.dataset, self.variable) if x)
        who = f" {self.usubjid}" if self.usubjid else ""
        return f"{self.level} {self.rule} {where}{who}: {self.message}"


@attrs.define
class SubjectState:
    """What the rows of one subject establish for DM, collected while mapping."""

    patient_id: str
    consent: str | None = None
    first_dose: str | None = None
    last_dose: str | None = None
    death: str | None = None
    last_disposition: str | None = None
    last_activity: str | None = None
    screen_failed: bool = False
    eligible: bool = False
    course: int = 1
    toxicities: dict[str, dict[str, Any]] = attrs.Factory(dict)


Row = dict[str, Any]
Emit = tuple[str, Row]
Mapper = Callable[[SubjectState, Entry], Iterable[Emit]]

CAR_T = "CD19 CAR-T CELLS"
ARM = ("CART", "CD19 CAR-T cells, three fractions")
CRITERION_CODES: Final[dict[str, str]] = {}
_counts = {CriterionKind.INCLUSION: 0, CriterionKind.EXCLUSION: 0}
for _c in CRITERIA:
    _counts[_c.kind] += 1
    _prefix = "INCL" if _c.kind is CriterionKind.INCLUSION else "EXCL"
    CRITERION_CODES[_c.id] = f"{_prefix}{_counts[_c.kind]:02d}"


def _screening(state: SubjectState, e: Entry) -> Iterable[Emit]:
    when = dtc(e.occurred_at)
    screening = e.facts.get("screening") or {}
    if screening.get("informed_consent_signed") and state.consent is None:
        state.consent = when
    eligible = bool(e.outcome.get("eligible"))
    state.eligible = state.eligible or eligible
    by_id = {c.id: c for c in CRITERIA}
    for cid in e.outcome.get("failed_criteria") or []:
        criterion = by_id.get(cid)
        inclusion = criterion is None or criterion.kind is CriterionKind.INCLUSION
        code = CRITERION_CODES.get(cid, re.sub(r"[^A-Z0-9]", "", cid.upper())[:8])
        answer = "N" if inclusion else "Y"
        yield (
            "IE",
            {
                "IESPID": f"V{e.version}",
                "IETESTCD": code,
                "IETEST": cid.replace("_", " ")[:40],
                "IECAT": "INCLUSION" if inclusion else "EXCLUSION",
                "IEORRES": answer,
                "IESTRESC": answer,
                "IEDTC": when,
            },
        )
    if not eligible:
        state.screen_failed = True
        yield (
            "DS",
            {
                "DSSPID": f"V{e.version}",
                "DSTERM": "SCREEN FAILURE: " + ", ".join(e.outcome.get("failed_criteria") or []),
                "DSDECOD": "SCREEN FAILURE",
                "DSCAT": "DISPOSITION EVENT",
                "DSSTDTC": when,
            },
        )
    else:
        state.screen_failed = False


def _apheresis(state: SubjectState, e: Entry) -> Iterable[Emit]:
    product = (e.event.get("payload") or {}).get("product_id")
    yield (
        "PR",
        {
            "PRSPID": f"V{e.version}",
            "PRREFID": product,
            "PRTRT": "LEUKAPHERESIS",
            "PRSTDTC": dtc(e.occurred_at),
        },
    )


def _infusion(state: SubjectState, e: Entry) -> Iterable[Emit]:
    when = dtc(e.occurred_at)
    course = int(e.facts.get("course_number") or e.outcome.get("course_number") or 1)
    state.course = course
    day = int(e.facts.get("day") or e.outcome.get("day") or 0)
    state.first_dose = state.first_dose or when
    state.last_dose = when
    deviations = e.outcome.get("deviations") or []
    reason = (e.event.get("payload") or {}).get("deviation_reason") or e.event.get("reason")
    cells = e.facts.get("cells", e.outcome.get("cells"))
    yield (
        "EX",
        {
            "EXSPID": f"C{course}-D{day}",
            "EXTRT": CAR_T,
            "EXDOSE": float(cells) if cells is not None else None,
            "EXDOSU": "cells",
            "EXDOSFRM": "SUSPENSION",
            "EXROUTE": "INTRAVENOUS",
            "EXLOT": e.facts.get("product_lot"),
            "EXADJ": (str(reason) if reason else "; ".join(map(str, deviations))) or None,
            "EXTPT": f"DAY {day} FRACTION",
            "EXTPTNUM": day,
            "EXSTDTC": when,
            "EXENDTC": when,
            "QUAL": {
                "WEIGHTKG": e.facts.get("weight_kg"),
                "PLANDOSE": e.outcome.get("planned_cells"),
                "EXCOURSE": course,
            },
        },
    )


AE_CODING: Final[dict[str, tuple[str, str]]] = {
    "CRS": ("Cytokine release syndrome", "Immune system disorders"),
    "ICANS": ("Immune effector cell-associated neurotoxicity syndrome", "Nervous system disorders"),
}

#: Observation key -> (FATESTCD, FATEST, unit key or None).
FA_TESTS: Final[dict[str, tuple[str, str]]] = {
    "temperature": ("TEMP", "Temperature"),
    "hypotension": ("HYPOTEN", "Hypotension"),
    "vasopressors": ("VASOPNUM", "Number of Vasopressors"),
    "vasopressin": ("VASOPRSN", "Vasopressin Given"),
    "oxygen.device": ("O2DEV", "Oxygen Delivery Device"),
    "oxygen.flow_l_min": ("O2FLOW", "Oxygen Flow Rate"),
    "oxygen.fio2_pct": ("FIO2", "Fraction of Inspired Oxygen"),
    "antipyretics_given": ("ANTIPYR", "Antipyretics Given"),
    "anticytokine_given": ("ANTICYTO", "Anticytokine Therapy Given"),
    "ice_score": ("ICESCORE", "ICE Score"),
    # children under 12: the CAPD (issue 20)
    "capd_score": ("CAPDSCOR", "CAPD Score"),
    "capd_items.eye_contact": ("CAPDEYE", "CAPD Eye Contact"),
    "capd_items.purposeful_actions": ("CAPDPURP", "CAPD Purposeful Actions"),
    "capd_items.aware_of_surroundings": ("CAPDAWAR", "CAPD Aware of Surroundings"),
    "capd_items.communicates_needs_and_wants": ("CAPDCOMM", "CAPD Communicates Needs and Wants"),
    "capd_items.restless": ("CAPDREST", "CAPD Restless"),
    "capd_items.inconsolable": ("CAPDINCO", "CAPD Inconsolable"),
    "capd_items.underactive": ("CAPDUNDR", "CAPD Underactive"),
    "capd_items.long_time_to_respond": ("CAPDRESP", "CAPD Long Time to Respond"),
    "consciousness": ("CONSC", "Level of Consciousness"),
    "seizure": ("SEIZURE", "Seizure"),
    "motor": ("MOTORFND", "Motor Findings"),
    "raised_icp": ("RAISEICP", "Raised Intracranial Pressure"),
    "awake_with_global_aphasia": ("GLOBAPHA", "Awake with Global Aphasia"),
}
FA_UNITS: Final[dict[str, str]] = {"oxygen.flow_l_min": "L/min", "oxygen.fio2_pct": "%"}


def _flat(obs: dict[str, Any], prefix: str = "") -> Iterable[tuple[str, Any]]:
    for key in sorted(obs):
        value = obs[key]
        if isinstance(value, dict) and "value" not in value:
            yield from _flat(value, f"{prefix}{key}.")
        else:
            yield prefix + key, value


def _yn(value: Any) -> str | None:
    if value is None:
        return None
    return "Y" if value else "N"


def _toxicity(state: SubjectState, e: Entry) -> Iterable[Emit]:
    toxicity = e.facts.get("toxicity") or {}
    kind = str(e.outcome.get("kind") or toxicity.get("kind") or "")
    term = str(e.outcome.get("term") or toxicity.get("term") or kind)
    decod, soc = AE_CODING.get(kind, (term, None))
    tid = str(e.outcome.get("toxicity_id") or e.facts.get("toxicity_id") or f"V{e.version}")
    obs = toxicity.get("observations") or {}
    death = bool(obs.get("death_due_to_crs"))
    grade = e.outcome.get("grade")
    row: Row = {
        "AESPID": tid,
        "AETERM": term,
        "AEDECOD": decod,
        "AEBODSYS": soc,
        "AESER": _yn(e.outcome.get("severe")),
        "AESDTH": "Y" if death else "N",
        "AEOUT": "FATAL" if death else "NOT RECOVERED/NOT RESOLVED",
        "AETOXGR": str(grade) if grade is not None else None,
        "AESTDTC": dtc(e.occurred_at),
        "AEENDTC": None,
        "QUAL": {
            "AEGRSCL": " ".join(
                str(x) for x in (e.outcome.get("scale"), e.outcome.get("scale_version")) if x
            )
            or None
        },
    }
    state.toxicities[tid] = row
    yield "AE", row
    when = dtc(e.occurred_at)
    for key, value in _flat(obs):
        if key in ("attributable_to_other_cause", "age_years", "death_due_to_crs"):
            continue
        if key in ("fever_attributable_to_other_cause",):
            continue
        code, test = FA_TESTS.get(key, (re.sub(r"[^A-Z0-9]", "", key.upper())[:8], key))
        unit = FA_UNITS.get(key)
        if isinstance(value, dict):
            unit = value.get("unit", unit)
            value = value.get("value")
        if value is None:
            continue
        if isinstance(value, bool):
            text: str = "Y" if value else "N"
            number = None
        elif isinstance(value, int | float):
            text = number_text(value)
            number = float(value)
        else:
            text = str(value).upper().replace("_", " ")
            number = None
        yield (
            "FA",
            {
                "FASPID": tid,
                "FATESTCD": code,
                "FATEST": test,
                "FAOBJ": decod.upper(),
                "FAORRES": text,
                "FAORRESU": unit if number is not None else None,
                "FASTRESC": text,
                "FASTRESN": number,
                "FASTRESU": unit if number is not None else None,
                "FADTC": when,
            },
        )


def _resolved(state: SubjectState, e: Entry) -> Iterable[Emit]:
    tid = str(e.facts.get("toxicity_id") or (e.event.get("payload") or {}).get("toxicity_id"))
    row = state.toxicities.get(tid)
    if row is not None:
        row["AEENDTC"] = dtc(e.occurred_at)
        if row["AEOUT"] != "FATAL":
            row["AEOUT"] = "RECOVERED/RESOLVED"
    return ()


def _response(state: SubjectState, e: Entry) -> Iterable[Emit]:
    assessment = e.facts.get("assessment") or {}
    course = int(e.facts.get("course_number") or state.course)
    response = e.facts.get("clinician_response") or e.outcome.get("computed_response")
    yield (
        "RS",
        {
            "RSSPID": f"C{course}",
            "RSTESTCD": "OVRLRESP",
            "RSTEST": "Overall Response",
            "RSCAT": assessment.get("criteria"),
            "RSORRES": response,
            "RSSTRESC": response,
            "RSDTC": dtc(e.occurred_at),
            "QUAL": {"MRDSTAT": e.outcome.get("mrd_status"), "RSCOURSE": course},
        },
    )


def _disposition(decode: str) -> Mapper:
    def mapper(state: SubjectState, e: Entry) -> Iterable[Emit]:
        when = dtc(e.occurred_at)
        chosen = decode
        term = str(e.facts.get("reason") or e.event.get("reason") or decode)
        if e.type == "TreatmentDiscontinued":
            chosen = "ADVERSE EVENT" if e.facts.get("course_toxicities") else "PHYSICIAN DECISION"
        if e.type == "DeathRecorded":
            state.death = when
            term = str(e.facts.get("cause") or "DEATH")
        state.last_disposition = when
        yield (
            "DS",
            {
                "DSSPID": f"V{e.version}",
                "DSTERM": term,
                "DSDECOD": chosen,
                "DSCAT": "DISPOSITION EVENT",
                "DSSTDTC": when,
            },
        )

    return mapper


#: Event type -> the mappers that turn it into rows. A new event kind adds a line here.
MAPPERS: Final[dict[str, tuple[Mapper, ...]]] = {
    "Screened": (_screening,),
    "Rescreened": (_screening,),
    "ApheresisRecorded": (_apheresis,),
    "InfusionGiven": (_infusion,),
    "ToxicityReported": (_toxicity,),
    "ToxicityResolved": (_resolved,),
    "ResponseAssessed": (_response,),
    "TreatmentCeased": (_disposition("COMPLETED"),),
    "TreatmentDiscontinued": (_disposition("ADVERSE EVENT"),),
    "Withdrawn": (_disposition("WITHDRAWAL BY SUBJECT"),),
    "DeathRecorded": (_disposition("DEATH"),),
    # Not in SDTM (the course's own steps; in the ODM export): FractionsCancelled,
    # CourseContinued.
}


def _dm(state: SubjectState, subject: Subject, treated: bool) -> Row:
    assigned = state.eligible
    return {
        "SUBJID": subject.patient_id,
        "RFSTDTC": state.first_dose,
        "RFENDTC": state.last_dose if state.last_dose else None,
        "RFXSTDTC": state.first_dose,
        "RFXENDTC": state.last_dose,
        "RFICDTC": state.consent,
        "RFPENDTC": state.last_disposition or state.last_activity,
        "DTHDTC": state.death,
        "DTHFL": "Y" if state.death else None,
        "SITEID": site_of_events(subject.events),  # the subject's site at the cut (issue 17)
        "AGE": None,
        "AGEU": None,
        "SEX": "U",
        "RACE": None,
        "ARMCD": ARM[0] if assigned else None,
        "ARM": ARM[1] if assigned else None,
        "ACTARMCD": ARM[0] if treated else None,
        "ACTARM": ARM[1] if treated else None,
        "ARMNRS": None if treated else ("ASSIGNED, NOT TREATED" if assigned else "SCREEN FAILURE"),
        "COUNTRY": COUNTRY,
    }


#: ISO 3166's user-assigned "XXX" (unspecified) for the country: the sites' countries are not
#: recorded (a site has an id, a name and a time zone).
COUNTRY = "XXX"


@attrs.frozen
class Datasets:
    """The SDTM datasets of a cut-off: rows per domain (variables in the domain's order),
    SUPP-- rows per parent, and the export's own findings (transliterations, split values)."""

    cutoff: str
    rows: dict[str, list[Row]]
    findings: list[Finding]

    def names(self) -> list[str]:
        return list(self.rows)


def build(cut: Cut) -> Datasets:
    rows: dict[str, list[Row]] = {name: [] for name in DOMAINS}
    supp: dict[str, list[Row]] = {}
    findings: list[Finding] = []
    for subject in cut.subjects():
        state = SubjectState(subject.patient_id)
        emitted: list[Emit] = []
        for entry in subject.entries:
            state.last_activity = dtc(entry.occurred_at) or state.last_activity
            for mapper in MAPPERS.get(entry.type, ()):
                emitted.extend(mapper(state, entry))
        uid = usubjid(subject.patient_id)
        reference = state.first_dose
        dm = _dm(state, subject, treated=state.first_dose is not None)
        _finish("DM", uid, reference, dm, None, rows, supp, findings)
        seq: dict[str, int] = {}
        for domain, row in sorted(emitted, key=lambda x: (x[0], _start(x[0], x[1]) or "")):
            seq[domain] = seq.get(domain, 0) + 1
            _finish(domain, uid, reference, row, seq[domain], rows, supp, findings)
    for parent in sorted(supp):
        rows[f"SUPP{parent}"] = supp[parent]
    for table in rows.values():
        table.sort(key=lambda r: r["USUBJID"])  # stable: each subject's rows keep their order
    return Datasets(cutoff=cut.cutoff, rows=rows, findings=findings)


def _start(domain: str, row: Row) -> str | None:
    return row.get(f"{domain}STDTC") or row.get(f"{domain}DTC")


def _finish(
    domain: str,
    uid: str,
    reference: str | None,
    row: Row,
    seq: int | None,
    rows: dict[str, list[Row]],
    supp: dict[str, list[Row]],
    findings: list[Finding],
) -> None:
    meta = DOMAINS[domain]
    qualifiers: dict[str, Any] = row.pop("QUAL", None) or {}
    labels = dict(SUPP_QUALIFIERS.get(domain, {}))
    row = dict(row)
    row["STUDYID"] = STUDY_ID
    row["DOMAIN"] = domain
    row["USUBJID"] = uid
    if seq is not None:
        row[f"{domain}SEQ"] = seq
    for dy, source in (("DY", "DTC"), ("STDY", "STDTC"), ("ENDY", "ENDTC")):
        if f"{domain}{dy}" in meta.names:
            row[f"{domain}{dy}"] = study_day(row.get(f"{domain}{source}"), reference)
    ordered: Row = {}
    for name in meta.names:
        ordered[name] = _value(domain, name, row.get(name), uid, findings)
    for name, value in list(ordered.items()):
        if isinstance(value, str) and len(value.encode()) > MAX_VALUE:
            # SDTMIG 4.5.3.2: the first 200 characters in the variable, the rest in SUPP--
            # as VAR1, VAR2 ... (never truncated).
            head, rest = value[:MAX_VALUE], value[MAX_VALUE:]
            ordered[name] = head
            part = 1
            while rest:
                qnam = f"{name[:7]}{part}"
                qualifiers[qnam] = rest[:MAX_VALUE]
                labels[qnam] = f"{meta.var(name).label[:36]} {part}"
                rest = rest[MAX_VALUE:]
                part += 1
            findings.append(
                Finding(
                    "note",
                    "SPLIT",
                    domain,
                    f"value over {MAX_VALUE} characters split into SUPP{domain}",
                    uid,
                    name,
                )
            )
    rows[domain].append(ordered)
    for qnam, qval in qualifiers.items():
        if qval is None:
            continue
        text = number_text(qval) if isinstance(qval, int | float) else str(qval)
        supp.setdefault(domain, []).append(
            {
                "STUDYID": STUDY_ID,
                "RDOMAIN": domain,
                "USUBJID": uid,
                "IDVAR": f"{domain}SEQ" if seq is not None else None,
                "IDVARVAL": str(seq) if seq is not None else None,
                "QNAM": qnam,
                "QLABEL": labels.get(qnam, qnam)[:40],
                "QVAL": _value(f"SUPP{domain}", "QVAL", text, uid, findings),
                "QORIG": SUPP_ORIGINS.get(qnam, "Collected"),
            }
        )


def _value(dataset: str, name: str, value: Any, uid: str, findings: list[Finding]) -> Any:
    if isinstance(value, str):
        if value == "":
            return None
        if not value.isascii():
            ascii_text = transliterate(value)
            findings.append(
                Finding(
                    "note",
                    "ASCII",
                    dataset,
                    f"non-ASCII text transliterated: {value!r} -> {ascii_text!r}",
                    uid,
                    name,
                )
            )
            return ascii_text
    return value


def supp_domain(name: str) -> Domain:
    parent = name[4:]
    return Domain(
        name,
        f"Supplemental Qualifiers for {parent}",
        "RELATIONSHIP",
        "One record per supplemental qualifier per related parent domain record",
        ("STUDYID", "RDOMAIN", "USUBJID", "IDVAR", "IDVARVAL", "QNAM"),
        SUPP_VARS,
    )


def domain_of(name: str) -> Domain:
    return supp_domain(name) if name.startswith("SUPP") else DOMAINS[name]
