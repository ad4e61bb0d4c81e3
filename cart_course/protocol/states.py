"""Course states and triggers: the words a clinician reads aloud."""

from __future__ import annotations

from enum import StrEnum


class State(StrEnum):
    #: Before the first screening: the patient is not yet on record (FHIR: candidate).
    CANDIDATE = "candidate"
    SCREENED = "screened"  # eligible
    SCREEN_FAILED = "screen_failed"
    APHERESED = "apheresed"
    INFUSED_D1 = "infused_d1"
    INFUSED_D2 = "infused_d2"
    INFUSED_D3 = "infused_d3"
    ASSESSED = "assessed"
    CONTINUED = "continued"  # another course decided
    CEASED = "ceased"
    DISCONTINUED = "discontinued"
    WITHDRAWN = "withdrawn"
    DIED = "died"


TERMINAL: frozenset[State] = frozenset(
    {State.CEASED, State.DISCONTINUED, State.WITHDRAWN, State.DIED}
)
#: From apheresis onwards, until the end of treatment: toxicity may be reported here.
ON_TREATMENT: tuple[State, ...] = (
    State.APHERESED,
    State.INFUSED_D1,
    State.INFUSED_D2,
    State.INFUSED_D3,
    State.ASSESSED,
    State.CONTINUED,
)
#: After the end of treatment, toxicities are still followed up (reported and resolved).
FOLLOW_UP: tuple[State, ...] = (State.CEASED, State.DISCONTINUED)
NON_TERMINAL: tuple[State, ...] = tuple(
    s for s in State if s not in TERMINAL and s is not State.CANDIDATE
)
INFUSED: tuple[State, ...] = (State.INFUSED_D1, State.INFUSED_D2, State.INFUSED_D3)


class Trigger(StrEnum):
    SCREEN = "screen"
    RESCREEN = "rescreen"
    RECORD_APHERESIS = "record_apheresis"
    START_MANUFACTURE = "start_manufacture"
    RELEASE_PRODUCT = "release_product"
    REPEAT_APHERESIS = "repeat_apheresis"
    INFUSE_D1 = "infuse_d1"
    INFUSE_D2 = "infuse_d2"
    INFUSE_D3 = "infuse_d3"
    REPORT_TOXICITY = "report_toxicity"
    RESOLVE_TOXICITY = "resolve_toxicity"
    CANCEL_REMAINING_FRACTIONS = "cancel_remaining_fractions"
    ASSESS_RESPONSE = "assess_response"
    CONTINUE_TREATMENT = "continue_treatment"
    CEASE = "cease"
    DISCONTINUE = "discontinue"
    WITHDRAW = "withdraw"
    RECORD_DEATH = "record_death"
    # after the course (issue 16)
    RECORD_FOLLOW_UP = "record_follow_up"
    RECORD_MISSED_VISIT = "record_missed_visit"
    RECORD_SAE_REPORT = "record_sae_report"
    # the pre-infusion gate (issue 20)
    ASSESS_PRE_INFUSION = "assess_pre_infusion"
    # a multi-site trial (issue 17)
    TRANSFER_SITE = "transfer_site"


INFUSION_TRIGGERS: dict[Trigger, int] = {
    Trigger.INFUSE_D1: 1,
    Trigger.INFUSE_D2: 2,
    Trigger.INFUSE_D3: 3,
}
