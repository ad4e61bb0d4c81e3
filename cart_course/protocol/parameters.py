"""Protocol parameters: the trial text's numbers, and the assumptions where the text is silent.

Every parameter is documented in ``docs/protocol.md`` with its source (trial text sentence, or the
clinical reference and the reason for the chosen default). A protocol amendment is a new
``ProtocolParameters`` value under a new version; an existing version is never changed.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import attrs


def _follow_up_schedule() -> tuple[tuple[str, int, int], ...]:
    """The follow-up visits after D1 (issue 16; the trial text gives none): (visit, day after D1,
    window +/- days). Day 28; months 2, 3, 6, 9, 12, 18, 24; yearly to 5 years; then yearly
    long-term follow-up to 15 years (FDA guidance on long-term follow-up after gene therapy, 2020:
    15 years for integrating vectors). Windows: +/-7 days to month 2, +/-14 to month 9, +/-30 to
    month 24, +/-60 to year 5, +/-90 in long-term follow-up (assumptions, docs/protocol.md)."""
    month = 30.4375
    visits: list[tuple[str, int, int]] = [("D28", 28, 7)]
    for m, window in ((2, 7), (3, 14), (6, 14), (9, 14), (12, 30), (18, 30), (24, 30)):
        visits.append((f"M{m}", round(m * month), window))
    for year in range(3, 16):
        visits.append((f"Y{year}", round(year * 365.25), 60 if year <= 5 else 90))
    return tuple(visits)


DEFAULT_FOLLOW_UP_SCHEDULE = _follow_up_schedule()


@attrs.frozen(kw_only=True)
class ProtocolParameters:
    # --- dosing (trial text: "about 1x10^6/kg", "D1,10% fraction;D2,30%;D3 60%") ---
    cells_per_kg: float = 1.0e6
    fractions: tuple[float, float, float] = (0.10, 0.30, 0.60)
    #: Counted quantity on the product label (clinical.md s4): what "cells" means.
    counted_quantity: str = "CAR-positive viable T cells"
    #: Relative tolerance of a delivered fraction (and of the course total) against its plan.
    #: Assumption: the trial says "about"; flow-based viable CAR+ counts carry ~10-20 % CV.
    dose_tolerance: float = 0.20
    #: Fractions are given on consecutive calendar days (trial text: "for 3 days").
    fraction_interval_days: int = 1

    # --- decisions after assessment (trial text) ---
    #: PR -> "1 or 2 courses of treatment will be continued": at most 3 courses in all on PR.
    max_courses_on_pr: int = 3
    #: ... and at least 1 more: ceasing on PR before this many courses departs from the protocol
    #: and needs a reason (a clinical decision), as ceasing after CR/CRi does.
    min_courses_on_pr: int = 2

    # --- toxicity (clinical.md s4) ---
    #: "Severe" toxicity: grade >= this (CRS or ICANS, ASTCT; other toxicities CTCAE).
    severe_grade: int = 3
    #: An open toxicity of at least this grade holds the remaining fractions.
    #: CRS grade 1 is fever: CTL019 split-dose experience withheld later fractions for early fever.
    hold_crs_grade: int = 1
    hold_icans_grade: int = 1
    hold_other_grade: int = 3

    # --- eligibility (trial text) ---
    kps_above: int = 80  # KPS > 80
    life_expectancy_months_above: float = 3.0  # > 3 months
    lvef_min_pct: float = 50.0  # LVEF >= 50 %
    spo2_above_pct: float = 90.0  # room-air SpO2 > 90 %
    creatinine_max_x_uln: float = 2.5  # Cr <= 2.5 x ULN
    alt_max_x_uln: float = 3.0  # ALT <= 3 x ULN
    ast_max_x_uln: float = 3.0  # AST <= 3 x ULN
    bilirubin_max_mg_dl: float = 2.0  # TBIL <= 2.0 mg/dL
    bilirubin_max_umol_l: float = 34.2  # TBIL <= 34.2 umol/L (as written in the trial text)
    hemoglobin_min_g_l: float = 80.0  # Hgb >= 80 g/L
    glucocorticoid_washout_days: int = 7  # "within one week"

    # --- response (clinical.md s5) ---
    cr_marrow_blasts_below_pct: float = 5.0
    cr_anc_min_1e9_l: float = 1.0
    cr_platelets_min_1e9_l: float = 100.0
    pr_blast_reduction_min: float = 0.50
    pr_marrow_blasts_max_pct: float = 25.0
    mrd_negative_below: float = 1.0e-4

    # --- the cell product (assumptions: the trial text is silent; clinical.md s8) ---
    #: Minutes from thaw to infusion (commercial CD19 CAR-T labels: infuse within about 30
    #: minutes of thaw).
    thaw_limit_minutes: int = 30
    #: Relative tolerance of a delivered count against the bag's labelled count (the label and
    #: the bedside count are the same flow-based viable CAR+ count: as ``dose_tolerance``' CV,
    #: half of it).
    bag_count_tolerance: float = 0.10
    #: A product waiting longer than this many days from apheresis (not yet infused) is flagged
    #: on the board (published vein-to-vein times of CD19 CAR-T: about 3 to 5 weeks).
    product_wait_alert_days: int = 35

    # --- the pre-infusion gate (issue 20; assumptions: clinical.md s4's example protocols) ---
    #: Fractions the gate judges when their observations are sent (rule
    #: ``pre_infusion_criteria_met``).
    pre_infusion_gate_days: tuple[int, ...] = (1, 2, 3)
    #: Fractions whose observations are required (1.0: none, the gate judges what is sent; the
    #: amendment 1.1 requires them before D2 and D3).
    pre_infusion_required_days: tuple[int, ...] = ()
    #: No infusion with a temperature above this (C) in the window before the fraction.
    pre_infusion_max_temperature_c: float = 38.0
    #: The window (hours before the fraction) whose highest temperature the gate reads.
    pre_infusion_temperature_window_hours: int = 48
    #: No infusion with a room-air SpO2 below this (%).
    pre_infusion_min_spo2_pct: float = 91.0

    # --- scheduling (assumption; used by the monitors' views) ---
    response_assessment_day: int = 28  # days after D1 of the course

    # --- after the course (issue 16: assumptions with their sources in docs/protocol.md) ---
    #: Follow-up visits: (visit, day after the last course's D1, window +/- days).
    follow_up_schedule: tuple[tuple[str, int, int], ...] = DEFAULT_FOLLOW_UP_SCHEDULE
    #: Consecutive missed visits after which a patient is lost to follow-up.
    lost_to_follow_up_missed: int = 3
    #: Initial SAE report to the sponsor: within this many hours of the site's awareness.
    sae_initial_report_hours: int = 24
    #: A follow-up SAE report when new information arrives: within this many days of it.
    sae_follow_up_report_days: int = 15
    #: SUSAR expedited report (ICH E2A): fatal or life-threatening within 7 days, others 15.
    susar_fatal_report_days: int = 7
    susar_other_report_days: int = 15
    #: A death within this many days after D1 is flagged (treatment-related mortality window)
    #: and is a serious adverse event with its reporting clock.
    treatment_related_mortality_days: int = 30

    def hold_grade(self, kind: str) -> int:
        """The grade from which a toxicity of ``kind`` holds the remaining fractions."""
        if kind == "CRS":
            return self.hold_crs_grade
        if kind == "ICANS":
            return self.hold_icans_grade
        return self.hold_other_grade

    def to_json(self) -> dict[str, Any]:
        data = attrs.asdict(self)
        data["fractions"] = list(self.fractions)
        return data


DEFAULT_PARAMETERS = ProtocolParameters()


_T = TypeVar("_T")


def per_parameters(build: Callable[[ProtocolParameters], _T]) -> Callable[[ProtocolParameters], _T]:
    """``build(params)`` computed once per parameters object (thresholds prepared for a version).

    Keyed by the object's identity, which is cheaper than hashing its fields; the object is kept
    in the entry, so its id cannot be reused while the entry exists. Bounded (32 entries)."""
    memo: dict[int, tuple[ProtocolParameters, _T]] = {}

    def cached(params: ProtocolParameters) -> _T:
        hit = memo.get(id(params))
        if hit is not None and hit[0] is params:
            return hit[1]
        value = build(params)
        if len(memo) >= 32:
            memo.clear()
        memo[id(params)] = (params, value)
        return value

    return cached
