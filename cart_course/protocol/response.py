"""Response assessment for B-ALL after a course: CR / CRi / PR / NR (clinical.md s5).

Pure code: parses the raw assessment (values with their units), classifies it under the
harmonised B-ALL criteria with thresholds from ``ProtocolParameters``, and checks a clinician's
stated response against the computed one. The format and every rule are documented in
``docs/response.md``.

Comparisons are exact: every number is compared as the decimal that was written (its shortest
``repr``), so 999 /uL is below 1.0 x 10^9/L and 1000 /uL is not, in either unit.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from decimal import Decimal
from typing import Any, Final, TypeAlias

import attrs

from cart_course.protocol.errors import (
    INVALID,
    Invalid,
    Problems,
    ProtocolInputError,
    key_name,
    key_names,
)
from cart_course.protocol.parameters import DEFAULT_PARAMETERS, ProtocolParameters, per_parameters
from cart_course.protocol.payloads import (
    CellCountPayload,
    FieldsJson,
    ResponseAssessmentPayload,
    convert,
)
from cart_course.protocol.plausibility import LAB_RANGES, finite_float, show_number

RESPONSES = ("CR", "CRi", "PR", "NR")
MRD_STATUSES = ("negative", "positive", "not_evaluable", "not_done")

DEFAULT_CRITERIA = "harmonised B-ALL (NCCN/CIBMTR)"
#: Criteria sets this module implements. Only one: naming another set would record a claim the
#: code does not honour.
CRITERIA_SETS = (DEFAULT_CRITERIA,)

COUNT_UNITS = ("10^9/L", "/uL")
MRD_UNITS = ("fraction", "%")
MRD_METHODS = ("flow", "NGS", "PCR")
EMD_STATUSES = ("none", "present")
CNS_STATUSES = ("CNS1", "CNS2", "CNS3")

#: Progression (informational): ">= 25 % rise in blasts" (clinical.md s5). Not (yet) a field of
#: ``ProtocolParameters``; kept here until the lead moves it there.
PROGRESSION_BLAST_RISE_MIN = 0.25

_PER_UL_PER_1E9_L = Decimal(1000)  # 1.0 x 10^9/L = 1000 cells per microlitre
_HUNDRED = Decimal(100)
_ONE = Decimal(1)
_ZERO = Decimal(0)

_TOP_KEYS = (
    "marrow_blasts_pct",
    "baseline_marrow_blasts_pct",
    "circulating_blasts_present",
    "circulating_blasts_pct",
    "anc",
    "platelets",
    "extramedullary_disease",
    "cns_status",
    "baseline_extramedullary_disease",
    "mrd",
    "criteria",
)
_COUNT_KEYS = ("value", "unit")
_MRD_KEYS = ("value", "unit", "method", "sensitivity")


class ResponseNotEvaluableError(ProtocolInputError):
    """Values needed to decide the response are missing; ``missing`` lists their JSON fields.

    Record the missing values (or a clinician's response with a reason) and assess again.
    Raised by :meth:`ResponseResult.raise_if_not_evaluable`; ``classify_response`` itself
    returns a result whose ``category`` is ``None``.
    """

    def __init__(self, missing: tuple[str, ...], decision: str) -> None:
        self.missing = missing
        super().__init__(
            missing[0],
            f"cannot classify the response: {_not_recorded(missing, decision)}; record them, "
            "or a clinician's response (clinician_response) with a reason",
        )


def _missing_names(missing: tuple[str, ...]) -> str:
    return ", ".join(f"{_MISSING_LABELS.get(m, m)} ('{m}')" for m in missing)


def _not_recorded(missing: tuple[str, ...], decision: str) -> str:
    return f"{_missing_names(missing)} not recorded; needed to decide {decision}"


_MISSING_LABELS = {
    "circulating_blasts_present": "circulating blasts (present, or a %)",
    "anc": "ANC",
    "platelets": "platelets",
    "extramedullary_disease": "extramedullary disease",
    "baseline_marrow_blasts_pct": "baseline marrow blasts %",
    "baseline_extramedullary_disease": "baseline extramedullary disease",
}


# --------------------------------------------------------------------------------------------
# Input


@attrs.frozen(kw_only=True)
class CellCount(FieldsJson):
    """A blood count with its unit: '10^9/L' or '/uL' (1.0 x 10^9/L = 1000 /uL)."""

    value: float
    unit: str

    def in_1e9_per_l(self) -> Decimal:
        value = _dec(self.value)
        return value / _PER_UL_PER_1E9_L if self.unit == "/uL" else value

    def text(self) -> str:
        if self.unit == "/uL":
            return f"{_fmt(_dec(self.value))} /uL (= {_fmt(self.in_1e9_per_l())} x 10^9/L)"
        return f"{_fmt(_dec(self.value))} x 10^9/L"


@attrs.frozen(kw_only=True)
class MrdMeasurement(FieldsJson):
    """Measurable residual disease: value ('fraction' or '%'), method and its sensitivity.

    ``sensitivity`` is always a fraction of cells (1e-4 = one cell in 10 000 = 0.01 %).
    """

    value: float
    unit: str
    method: str
    sensitivity: float

    def fraction(self) -> Decimal:
        value = _dec(self.value)
        return value / _HUNDRED if self.unit == "%" else value


@attrs.frozen(kw_only=True)
class ResponseAssessment(FieldsJson):
    """The normalized raw response assessment, as stored in events.

    Only ``marrow_blasts_pct`` is always required; the others may be ``None`` (not recorded) and
    are then demanded by ``classify_response`` only when the decision depends on them.
    """

    marrow_blasts_pct: float
    baseline_marrow_blasts_pct: float | None = None
    circulating_blasts_present: bool | None = None
    circulating_blasts_pct: float | None = None
    anc: CellCount | None = None
    platelets: CellCount | None = None
    extramedullary_disease: str | None = None
    cns_status: str | None = None
    baseline_extramedullary_disease: str | None = None
    mrd: MrdMeasurement | None = None
    criteria: str = DEFAULT_CRITERIA

    def circulating_blasts(self) -> bool | None:
        if self.circulating_blasts_present is not None:
            return self.circulating_blasts_present
        if self.circulating_blasts_pct is not None:
            return self.circulating_blasts_pct > 0
        return None

    def extramedullary_present(self) -> bool | None:
        """Extramedullary disease now; CNS2 and CNS3 count as extramedullary disease."""
        if self.extramedullary_disease is not None:
            return self.extramedullary_disease == "present"
        if self.cns_status in ("CNS2", "CNS3"):
            return True
        return None


#: The objects nested in an assessment (each must be a plain dict for the fast path).
_NESTED: Final = (("anc",), ("platelets",), ("mrd",))


def parse_response_assessment(data: Mapping[str, Any]) -> ResponseAssessment:
    """Validate a raw response assessment; raise ``ProtocolInputError`` naming the field (every
    invalid field, the first in the order below as the headline).

    One ``msgspec.convert`` into :class:`~cart_course.protocol.payloads.ResponseAssessmentPayload`
    decodes a valid assessment; one it refuses, or whose values contradict each other or are not
    plausible, is checked again field by field for the wording.
    """
    payload = convert(data, ResponseAssessmentPayload, _NESTED)
    if payload is not None:
        assessment = _assessment_of(payload)
        if assessment is not None:
            return assessment
    return _parse_checked(data)


def _float(value: float) -> float:
    return float(value) + 0.0  # as _number: an int as a float, -0.0 as 0.0


def _optional_float(value: float | None) -> float | None:
    return None if value is None else float(value) + 0.0


def _count_of(count: CellCountPayload | None, key: str) -> CellCount | Invalid | None:
    if count is None:
        return None
    value = finite_float(count.value)
    if value is None or not LAB_RANGES[key].contains(count.value, count.unit):
        return INVALID
    return CellCount(value=value + 0.0, unit=count.unit)


def _assessment_of(p: ResponseAssessmentPayload) -> ResponseAssessment | None:
    """The assessment of a decoded payload, or None when the field-by-field checks must say
    what is wrong (a contradiction, an implausible count, an MRD fraction above 1)."""
    circ_present, circ_pct = p.circulating_blasts_present, p.circulating_blasts_pct
    if circ_present is not None and circ_pct is not None and circ_present != (circ_pct > 0):
        return None
    if p.extramedullary_disease == "none" and p.cns_status in ("CNS2", "CNS3"):
        return None
    anc = _count_of(p.anc, "anc")
    platelets = _count_of(p.platelets, "platelets")
    if anc is INVALID or platelets is INVALID:
        return None
    mrd: MrdMeasurement | None = None
    if p.mrd is not None:
        m = p.mrd
        if m.unit == "fraction" and m.value > 1:
            return None
        mrd = MrdMeasurement(
            value=_float(m.value), unit=m.unit, method=m.method, sensitivity=_float(m.sensitivity)
        )
    return ResponseAssessment(
        marrow_blasts_pct=_float(p.marrow_blasts_pct),
        baseline_marrow_blasts_pct=_optional_float(p.baseline_marrow_blasts_pct),
        circulating_blasts_present=circ_present,
        circulating_blasts_pct=_optional_float(circ_pct),
        anc=anc,
        platelets=platelets,
        extramedullary_disease=p.extramedullary_disease,
        cns_status=p.cns_status,
        baseline_extramedullary_disease=p.baseline_extramedullary_disease,
        mrd=mrd,
        criteria=DEFAULT_CRITERIA if p.criteria is None else p.criteria,
    )


def _parse_checked(data: Any) -> ResponseAssessment:
    """Field by field, naming every invalid field in one error."""
    data = _mapping(data, "", "the response assessment")
    p = Problems()
    p.run(lambda: _check_keys(data, _TOP_KEYS, ""))
    marrow = p.run(lambda: _marrow(data.get("marrow_blasts_pct")))
    baseline = p.run(lambda: _optional_number(data, "baseline_marrow_blasts_pct", high=100.0))
    circ_pct = p.run(lambda: _optional_number(data, "circulating_blasts_pct", high=100.0))
    circ_present = data.get("circulating_blasts_present")
    if circ_present is not None and not isinstance(circ_present, bool):
        p.add(
            ProtocolInputError(
                "circulating_blasts_present",
                f"{circ_present!r} is not allowed; use true, false or null (not recorded)",
            )
        )
    elif (
        circ_present is not None
        and circ_pct is not None
        and circ_pct is not INVALID
        and circ_present != (circ_pct > 0)
    ):
        p.add(
            ProtocolInputError(
                "circulating_blasts_present",
                f"{'true' if circ_present else 'false'} contradicts circulating_blasts_pct "
                f"{_fmt(_dec(circ_pct))} %; blasts are present exactly when the percentage is "
                "above 0",
            )
        )
    emd = p.run(lambda: _optional_choice(data, "extramedullary_disease", EMD_STATUSES))
    cns = p.run(lambda: _optional_choice(data, "cns_status", CNS_STATUSES))
    if emd == "none" and cns in ("CNS2", "CNS3"):
        p.add(
            ProtocolInputError(
                "cns_status",
                f"{cns} counts as extramedullary disease, but extramedullary_disease is 'none'; "
                "set extramedullary_disease to 'present' or correct the CNS status",
            )
        )
    criteria = data.get("criteria", DEFAULT_CRITERIA)
    if criteria is None:
        criteria = DEFAULT_CRITERIA
    if not isinstance(criteria, str) or criteria not in CRITERIA_SETS:
        p.add(
            ProtocolInputError(
                "criteria", f"{criteria!r} is not allowed; use {_or_list(CRITERIA_SETS)}"
            )
        )
    anc = p.run(lambda: _parse_count(data.get("anc"), "anc", "ANC"))
    platelets = p.run(lambda: _parse_count(data.get("platelets"), "platelets", "platelets"))
    baseline_emd = p.run(
        lambda: _optional_choice(data, "baseline_extramedullary_disease", EMD_STATUSES)
    )
    mrd = p.run(lambda: _parse_mrd(data.get("mrd")))
    p.raise_if_any()
    assert marrow is not INVALID and baseline is not INVALID and circ_pct is not INVALID
    assert emd is not INVALID and cns is not INVALID and baseline_emd is not INVALID
    assert anc is not INVALID and platelets is not INVALID and mrd is not INVALID
    return ResponseAssessment(
        marrow_blasts_pct=marrow,
        baseline_marrow_blasts_pct=baseline,
        circulating_blasts_present=circ_present,
        circulating_blasts_pct=circ_pct,
        anc=anc,
        platelets=platelets,
        extramedullary_disease=emd,
        cns_status=cns,
        baseline_extramedullary_disease=baseline_emd,
        mrd=mrd,
        criteria=criteria,
    )


def _marrow(value: Any) -> float:
    if value is None:
        raise ProtocolInputError(
            "marrow_blasts_pct", "is required: marrow blasts in % of nucleated cells (0-100)"
        )
    return _number(value, "marrow_blasts_pct", high=100.0)


def _parse_count(raw: Any, path: str, what: str) -> CellCount | None:
    if raw is None:
        return None
    raw = _mapping(raw, path, f"{what} (an object with 'value' and 'unit')")
    p = Problems()
    p.run(lambda: _check_keys(raw, _COUNT_KEYS, path))
    unit = p.run(lambda: _required_choice(raw, f"{path}.unit", "unit", COUNT_UNITS))
    if raw.get("value") is None:
        p.add(ProtocolInputError(f"{path}.value", f"is required: the {what} count"))
        value: float | Invalid = INVALID
    else:
        value = p.run(lambda: _number(raw["value"], f"{path}.value"))
    if value is not INVALID and unit is not INVALID:
        # A count in the other unit (500 /uL entered as 500 x 10^9/L) is refused, not classified.
        p.run(lambda: LAB_RANGES[path].check(raw["value"], unit, f"{path}.value", what))
    p.raise_if_any()
    assert value is not INVALID and unit is not INVALID
    return CellCount(value=value, unit=unit)


def _parse_mrd(raw: Any) -> MrdMeasurement | None:
    if raw is None:
        return None
    raw = _mapping(raw, "mrd", "MRD (an object with 'value', 'unit', 'method', 'sensitivity')")
    p = Problems()
    p.run(lambda: _check_keys(raw, _MRD_KEYS, "mrd"))
    unit = p.run(lambda: _required_choice(raw, "mrd.unit", "unit", MRD_UNITS))
    method = p.run(lambda: _required_choice(raw, "mrd.method", "method", MRD_METHODS))
    value: float | Invalid = INVALID
    if raw.get("value") is None:
        p.add(ProtocolInputError("mrd.value", "is required: the MRD level (0 when undetected)"))
    elif unit is not INVALID:
        value = p.run(
            lambda: _number(raw["value"], "mrd.value", high=100.0 if unit == "%" else 1.0)
        )
    else:
        p.run(lambda: _number(raw["value"], "mrd.value"))
    sensitivity: float | Invalid = INVALID
    if raw.get("sensitivity") is None:
        p.add(
            ProtocolInputError(
                "mrd.sensitivity",
                "is required: the lowest level the method detects, as a fraction (e.g. 1e-4)",
            )
        )
    else:
        sensitivity = p.run(lambda: _number(raw["sensitivity"], "mrd.sensitivity", high=1.0))
        if sensitivity == 0:
            p.add(
                ProtocolInputError(
                    "mrd.sensitivity",
                    "0 is not allowed; give the method's sensitivity as a fraction > 0",
                )
            )
    p.raise_if_any()
    assert unit is not INVALID and method is not INVALID
    assert value is not INVALID and sensitivity is not INVALID
    return MrdMeasurement(value=value, unit=unit, method=method, sensitivity=sensitivity)


# --------------------------------------------------------------------------------------------
# Classification


@attrs.frozen(kw_only=True)
class ResponseResult:
    """The computed response: category, MRD status, progression flag and the reasons.

    ``category`` is ``None`` when it is not evaluable: a value that could change it is missing
    (``missing`` lists the JSON fields, ``undecided`` says between what). ``progression`` is
    ``None`` when the flag is not evaluable (``progression_missing``); being informational, it
    never keeps the category from being decided.
    """

    category: str | None
    mrd_status: str
    progression: bool | None
    reasons: tuple[str, ...]
    criteria: str
    missing: tuple[str, ...] = ()
    undecided: str | None = None
    progression_missing: tuple[str, ...] = ()

    @property
    def not_evaluable(self) -> str | None:
        """Why the category is not evaluable, in words; ``None`` when it is decided."""
        if self.category is not None:
            return None
        return _not_recorded(self.missing, self.undecided or "the response")

    def raise_if_not_evaluable(self) -> None:
        """Raise ``ResponseNotEvaluableError`` naming the missing values when ``category`` is
        ``None``."""
        if self.category is None:
            raise ResponseNotEvaluableError(self.missing, self.undecided or "the response")

    def to_json(self) -> dict[str, Any]:
        return {
            "category": self.category,
            "mrd_status": self.mrd_status,
            "progression": self.progression,
            "reasons": list(self.reasons),
            "criteria": self.criteria,
            "missing": list(self.missing),
            "progression_missing": list(self.progression_missing),
        }


_Tri: TypeAlias = bool | None  # three-valued: True, False, or None (unknown: a value is missing)


def _all(*values: _Tri) -> _Tri:
    """False if any is False, else True if all are True, else None."""
    result: _Tri = True
    for v in values:
        if v is False:
            return False
        if v is not True:
            result = None
    return result


def _any(*values: _Tri) -> _Tri:
    """True if any is True, else False if all are False, else None."""
    result: _Tri = False
    for v in values:
        if v is True:
            return True
        if v is not False:
            result = None
    return result


@attrs.frozen
class _Limits:
    """The thresholds of one ``ProtocolParameters`` value as exact decimals and in words."""

    cr_max: Decimal
    pr_max: Decimal
    cr_txt: str
    pr_txt: str
    anc_min: Decimal
    anc_rule: str
    anc_txt: str
    plt_min: Decimal
    plt_rule: str
    plt_txt: str
    fall_min: Decimal
    rise_min: Decimal
    rise_txt: str
    mrd_limit: Decimal
    mrd_limit_txt: str

    @classmethod
    def of(cls, params: ProtocolParameters) -> _Limits:
        cr_max = _dec(params.cr_marrow_blasts_below_pct)
        pr_max = _dec(params.pr_marrow_blasts_max_pct)
        anc_min = _dec(params.cr_anc_min_1e9_l)
        plt_min = _dec(params.cr_platelets_min_1e9_l)
        progression_rise = _dec(PROGRESSION_BLAST_RISE_MIN)
        mrd_limit = _dec(params.mrd_negative_below)
        return cls(
            cr_max=cr_max,
            pr_max=pr_max,
            cr_txt=_fmt(cr_max),
            pr_txt=_fmt(pr_max),
            anc_min=anc_min,
            anc_rule=_count_rule("ANC", anc_min),
            anc_txt=_fmt(anc_min),
            plt_min=plt_min,
            plt_rule=_count_rule("platelets", plt_min),
            plt_txt=_fmt(plt_min),
            fall_min=_dec(params.pr_blast_reduction_min),
            rise_min=progression_rise,
            rise_txt=_fmt(progression_rise * _HUNDRED),
            mrd_limit=mrd_limit,
            mrd_limit_txt=_fraction_text(mrd_limit),
        )


_limits = per_parameters(_Limits.of)


def _not(value: _Tri) -> _Tri:
    return None if value is None else not value


def classify_response(
    a: ResponseAssessment, params: ProtocolParameters = DEFAULT_PARAMETERS
) -> ResponseResult:
    """Classify a response assessment as CR, CRi, PR or NR (clinical.md s5).

    A category is never decided from a missing value that could change it: the result's
    ``category`` is then ``None`` and ``missing`` names the values (``raise_if_not_evaluable``
    raises ``ResponseNotEvaluableError``). The progression flag is informational: a value it
    needs but the category does not (e.g. the baseline marrow blasts for a CR) leaves
    ``progression`` ``None`` and is named in ``progression_missing``, never blocking the
    category. Values that cannot change the result may be missing.
    """
    reasons: list[str] = []
    lim = _limits(params)
    blasts = _dec(a.marrow_blasts_pct)
    cr_max, pr_max = lim.cr_max, lim.pr_max
    b_txt, cr_txt, pr_txt = _fmt(blasts), lim.cr_txt, lim.pr_txt

    # --- CR / CRi criteria
    blasts_below = blasts < cr_max
    reasons.append(
        f"marrow blasts {b_txt} % {'are' if blasts_below else 'are not'} below {cr_txt} % "
        f"(CR/CRi: marrow blasts < {cr_txt} %)"
    )
    circulating = a.circulating_blasts()
    if circulating is None:
        reasons.append("circulating blasts not recorded")
    elif circulating:
        pct = a.circulating_blasts_pct
        shown = "" if pct is None else f" ({_fmt(_dec(pct))} %)"
        reasons.append(f"circulating blasts present{shown} (CR/CRi: no circulating blasts)")
    else:
        reasons.append("no circulating blasts (CR/CRi: no circulating blasts)")
    anc_ok = _count_criterion(a.anc, "ANC", lim.anc_min, lim.anc_txt, lim.anc_rule, reasons)
    plt_ok = _count_criterion(
        a.platelets, "platelets", lim.plt_min, lim.plt_txt, lim.plt_rule, reasons
    )
    emd = a.extramedullary_present()
    reasons.append(_emd_sentence(a, emd))

    no_circ, no_emd = _not(circulating), _not(emd)
    counts_recovered = _all(anc_ok, plt_ok)
    marrow_and_sites = _all(blasts_below, no_circ, no_emd)
    is_cr = _all(marrow_and_sites, counts_recovered)
    is_cri = _all(marrow_and_sites, _not(counts_recovered))

    # --- PR criteria
    baseline = None if a.baseline_marrow_blasts_pct is None else _dec(a.baseline_marrow_blasts_pct)
    fall_min = lim.fall_min
    fell_enough: _Tri = None
    if baseline is None:
        reasons.append("baseline marrow blasts not recorded")
    else:
        # fall >= 50 % of baseline  <=>  blasts <= baseline x (1 - 0.5); a 0 % baseline cannot fall
        fell_enough = baseline > 0 and blasts <= baseline * (_ONE - fall_min)
        reasons.append(_change_sentence(baseline, blasts, fall_min, fell_enough))
    within_pr_max = blasts <= pr_max
    if blasts_below:
        range_txt = f"are below {cr_txt} %; PR applies only when CR and CRi are not met"
    elif within_pr_max:
        range_txt = f"are within the PR range {cr_txt}-{pr_txt} %"
    else:
        range_txt = f"are above {pr_txt} % (PR: marrow blasts {cr_txt}-{pr_txt} %)"
    reasons.append(f"marrow blasts {b_txt} % {range_txt}")
    new_emd = _new_emd(a, emd)
    if new_emd:
        reasons.append("extramedullary disease is new since baseline (PR: no new extramedullary)")
    is_pr = _all(fell_enough, within_pr_max, _not(new_emd))

    # --- progression (informational)
    rise_min = lim.rise_min
    rose: _Tri = None
    if baseline is not None:
        # a rise >= 25 %; from a 0 % baseline any blasts are a rise of more than 25 %
        rose = blasts >= baseline * (_ONE + rise_min) if baseline > 0 else blasts > 0
        if rose:
            reasons.append(
                f"marrow blasts rose from baseline {_fmt(baseline)} % to {b_txt} % "
                f"(progression: rise >= {lim.rise_txt} %)"
            )
    progression = _any(rose, new_emd)

    missing: list[str] = []
    category: str | None = None
    decision = "the response"
    if is_cr is True:
        category = "CR"
    elif is_cri is True:
        category = "CRi"
    elif is_cr is None or is_cri is None:
        _add_missing(missing, a, circulating, anc_ok, plt_ok, emd)
        decision = "between CR, CRi and the other categories"
    elif is_pr is True:
        category = "PR"
    elif is_pr is None:
        if fell_enough is None:
            missing.append("baseline_marrow_blasts_pct")
        if new_emd is None:
            missing.append(_new_emd_missing(a, emd))
        decision = "between PR and NR"
    else:
        category = "NR"
    # The progression flag is informational (it never changes the category): a value only it
    # needs leaves it not evaluable (None), named in the reasons, instead of blocking the category.
    progression_missing: list[str] = []
    if progression is None:
        if rose is None:
            progression_missing.append("baseline_marrow_blasts_pct")
        if new_emd is None:
            progression_missing.append(_new_emd_missing(a, emd))
        reasons.append(
            f"progression not evaluable: {_missing_names(tuple(progression_missing))} not "
            f"recorded (progression: marrow blast rise >= {lim.rise_txt} % from baseline or new "
            "extramedullary disease)"
        )

    mrd_status, mrd_reason = _mrd(a.mrd, lim)
    reasons.append(mrd_reason)
    if category is None:
        missing_fields = tuple(dict.fromkeys(missing))
        reasons.insert(
            0,
            f"not evaluable under {a.criteria}: {_not_recorded(missing_fields, decision)}",
        )
        return ResponseResult(
            category=None,
            mrd_status=mrd_status,
            progression=progression,
            reasons=tuple(reasons),
            criteria=a.criteria,
            missing=missing_fields,
            undecided=decision,
            progression_missing=tuple(progression_missing),
        )
    reasons.insert(0, f"{category} under {a.criteria}: {_CATEGORY_SUMMARY[category]}")
    return ResponseResult(
        category=category,
        mrd_status=mrd_status,
        progression=progression,
        reasons=tuple(reasons),
        criteria=a.criteria,
        progression_missing=tuple(progression_missing),
    )


_CATEGORY_SUMMARY = {
    "CR": "marrow blasts below the CR limit, no circulating blasts, ANC and platelets recovered, "
    "no extramedullary disease",
    "CRi": "as CR but with incomplete count recovery (ANC or platelets below the CR limit)",
    "PR": "CR/CRi not met; marrow blasts fell by at least the PR fraction from baseline to no more "
    "than the PR limit, without new extramedullary disease",
    "NR": "none of CR, CRi or PR is met",
}


def _count_rule(what: str, limit: Decimal) -> str:
    return f"(CR: {what} >= {_fmt(limit)} x 10^9/L; below this at most CRi)"


def _count_criterion(
    count: CellCount | None,
    what: str,
    limit: Decimal,
    limit_txt: str,
    rule: str,
    reasons: list[str],
) -> _Tri:
    if count is None:
        reasons.append(f"{what} not recorded")
        return None
    ok = count.in_1e9_per_l() >= limit
    verb = "is at least" if ok else "is below"
    reasons.append(f"{what} {count.text()} {verb} {limit_txt} x 10^9/L {rule}")
    return ok


def _emd_sentence(a: ResponseAssessment, emd: bool | None) -> str:
    cns = "" if a.cns_status is None else f" ({a.cns_status})"
    if emd is None:
        return f"extramedullary disease not recorded{cns}"
    if not emd:
        return f"no extramedullary disease{cns} (CR/CRi: no extramedullary disease)"
    counted = (
        f"; {a.cns_status} counts as extramedullary disease"
        if a.cns_status in ("CNS2", "CNS3")
        else ""
    )
    return f"extramedullary disease present{cns}{counted} (CR/CRi: no extramedullary disease)"


def _new_emd(a: ResponseAssessment, emd: bool | None) -> _Tri:
    if emd is False:
        return False
    if emd is None or a.baseline_extramedullary_disease is None:
        return None
    return a.baseline_extramedullary_disease == "none"


def _new_emd_missing(a: ResponseAssessment, emd: bool | None) -> str:
    return "extramedullary_disease" if emd is None else "baseline_extramedullary_disease"


def _add_missing(
    missing: list[str],
    a: ResponseAssessment,
    circulating: bool | None,
    anc_ok: _Tri,
    plt_ok: _Tri,
    emd: bool | None,
) -> None:
    if circulating is None:
        missing.append("circulating_blasts_present")
    if anc_ok is None:
        missing.append("anc")
    if plt_ok is None:
        missing.append("platelets")
    if emd is None:
        missing.append("extramedullary_disease")


def _change_sentence(baseline: Decimal, blasts: Decimal, fall_min: Decimal, ok: bool) -> str:
    rule = f"(PR: fall >= {_fmt(fall_min * _HUNDRED)} % from baseline)"
    base, now = _fmt(baseline), _fmt(blasts)
    if baseline == 0:
        return f"baseline marrow blasts were 0 %, so no fall is possible {rule}"
    change = (baseline - blasts) / baseline * _HUNDRED
    if change >= 0:
        size = "at least" if ok else "less than"
        return (
            f"marrow blasts fell {_fmt(round(change, 3))} % from baseline {base} % to {now} %, "
            f"{size} {_fmt(fall_min * _HUNDRED)} % {rule}"
        )
    return f"marrow blasts rose from baseline {base} % to {now} % {rule}"


def _mrd(m: MrdMeasurement | None, lim: _Limits) -> tuple[str, str]:
    limit = lim.mrd_limit
    limit_txt = lim.mrd_limit_txt
    if m is None:
        return "not_done", "MRD not done"
    frac = m.fraction()
    sens = _dec(m.sensitivity)
    shown = f"MRD {_fmt(_dec(m.value))} {'%' if m.unit == '%' else '(fraction)'} by {m.method}"
    sens_txt = f"sensitivity {_fraction_text(sens)}"
    if frac >= limit:
        return "positive", f"{shown} is at or above {limit_txt}: MRD positive"
    if sens <= limit:
        return "negative", f"{shown} ({sens_txt}) is below {limit_txt}: MRD negative"
    return (
        "not_evaluable",
        f"{shown} is below {limit_txt} but the {sens_txt} does not reach {limit_txt}: "
        f"MRD not evaluable at {limit_txt}",
    )


# --------------------------------------------------------------------------------------------
# Clinician's response


def check_clinician_response(
    computed: ResponseResult, clinician: str | None, reason: str | None
) -> list[str]:
    """Failed-rule messages for a clinician's stated response; empty when acceptable.

    No stated response (``None``) accepts the computed one; when the computed category is not
    evaluable there is none to accept, so a clinician's response is needed. A response that
    differs from the computed one, or stands in for a computed one that is not evaluable, needs
    a non-blank reason.
    """
    if clinician is None:
        if computed.category is None:
            return [
                f"the computed response is not evaluable ({computed.not_evaluable}); record the "
                "missing values, or a clinician's response (clinician_response) with a reason"
            ]
        return []
    if not isinstance(clinician, str) or clinician not in RESPONSES:
        return [f"clinician response {clinician!r} is not allowed; use {_or_list(RESPONSES)}"]
    if clinician == computed.category:
        return []
    if reason is None or not isinstance(reason, str) or not reason.strip():
        if computed.category is None:
            return [
                f"clinician response {clinician} is recorded without a computed one: the computed "
                f"response is not evaluable ({computed.not_evaluable}); give a reason for the "
                "clinician's response"
            ]
        return [
            f"clinician response {clinician} differs from the computed {computed.category} "
            f"({computed.criteria}); give a reason for the difference"
        ]
    return []


# --------------------------------------------------------------------------------------------
# Helpers


def _dec(value: float) -> Decimal:
    """The decimal that was written: exact for values read from JSON (shortest repr)."""
    return Decimal(repr(value))


@functools.lru_cache(maxsize=4096)
def _fmt(value: Decimal) -> str:
    # Cached by value: equal decimals (1.0 and 1.00) normalize to the same text.
    text = format(value.normalize(), "f")
    return "0" if text in ("-0", "0") else text


def _fraction_text(value: Decimal) -> str:
    """A fraction as '10^-4 (0.01 %)' when a power of ten, else '0.0002 (0.02 %)'."""
    norm = value.normalize()
    pct = f"{_fmt(norm * _HUNDRED)} %"
    if norm.as_tuple().digits == (1,):
        exponent = norm.as_tuple().exponent
        return f"10^{exponent} ({pct})"
    return f"{_fmt(norm)} ({pct})"


def _or_list(values: tuple[str, ...]) -> str:
    quoted = [f"'{v}'" for v in values]
    return quoted[0] if len(quoted) == 1 else ", ".join(quoted[:-1]) + " or " + quoted[-1]


def _mapping(value: Any, path: str, what: str) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise ProtocolInputError(
            path or "(root)", f"{type(value).__name__} is not allowed; {what} must be an object"
        )
    return value


def _check_keys(data: Mapping[str, Any], allowed: tuple[str, ...], path: str) -> None:
    unknown = [k for k in data if k not in allowed]
    if unknown:
        where = f"{path}.{key_name(unknown[0])}" if path else key_name(unknown[0])
        raise ProtocolInputError(
            where, f"unknown key(s) {key_names(unknown)}; allowed: {', '.join(allowed)}"
        )


def _number(value: Any, path: str, high: float | None = None) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ProtocolInputError(path, f"{value!r} is not allowed; give a number")
    number = finite_float(value)  # None for NaN, infinities and integers too large for a float
    allowed = ">= 0" if high is None else f"between 0 and {_fmt(_dec(high))}"
    if number is None:
        raise ProtocolInputError(
            path, f"{show_number(value)} is not allowed; give a finite number {allowed}"
        )
    if number < 0 or (high is not None and number > high):
        raise ProtocolInputError(
            path, f"{show_number(value)} is not allowed; give a number {allowed}"
        )
    return number + 0.0  # -0.0 -> 0.0


def _optional_number(data: Mapping[str, Any], key: str, high: float) -> float | None:
    value = data.get(key)
    return None if value is None else _number(value, key, high=high)


def _optional_choice(data: Mapping[str, Any], key: str, allowed: tuple[str, ...]) -> str | None:
    value = data.get(key)
    if value is None:
        return None
    return _choice(value, key, allowed)


def _required_choice(data: Mapping[str, Any], path: str, key: str, allowed: tuple[str, ...]) -> str:
    value = data.get(key)
    if value is None:
        raise ProtocolInputError(path, f"is required; use {_or_list(allowed)}")
    return _choice(value, path, allowed)


def _choice(value: Any, path: str, allowed: tuple[str, ...]) -> str:
    if not isinstance(value, str) or value not in allowed:
        raise ProtocolInputError(path, f"{value!r} is not allowed; use {_or_list(allowed)}")
    return value
