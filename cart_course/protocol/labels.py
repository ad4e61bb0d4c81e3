"""The words a clinician reads for the protocol's identifiers: states, actions, responses.

One table (the dashboard, the board's CSV and the audit report all read it, served at
``GET /v1/protocol/labels``): a state or a command is shown with these words, never as its
identifier, and the words are the trial text's where it has them (D1 10 %, D2 30 %, D3 60 %;
CR, CRi, PR, NR; "treatment may be discontinued due to any severe toxicity").
"""

from __future__ import annotations

import re
from typing import Any, Final

from .eligibility import CRITERIA
from .response import RESPONSES
from .states import State

#: Each state as a clinician reads it aloud.
STATE_LABELS: Final[dict[str, str]] = {
    State.CANDIDATE: "Candidate (not yet screened)",
    State.SCREENED: "Eligible (screened)",
    State.SCREEN_FAILED: "Not eligible (screening failed)",
    State.APHERESED: "Apheresis done",
    State.INFUSED_D1: "D1 given (10 %)",
    State.INFUSED_D2: "D2 given (30 %)",
    State.INFUSED_D3: "D3 given (60 %)",
    State.ASSESSED: "Response assessed",
    State.CONTINUED: "Another course decided",
    State.CEASED: "Treatment ceased",
    State.DISCONTINUED: "Treatment discontinued (toxicity)",
    State.WITHDRAWN: "Withdrawn from the study",
    State.DIED: "Died",
}

#: Each command and trigger as an action still to do (the board's next action, the buttons).
ACTION_LABELS: Final[dict[str, str]] = {
    "screen": "Screen",
    "rescreen": "Screen again",
    "record_apheresis": "Record apheresis (T-cell collection)",
    "start_manufacture": "Start manufacture",
    "release_product": "Record the release decision",
    "repeat_apheresis": "Repeat apheresis",
    "give_infusion": "Give a fraction",
    "infuse_d1": "Give D1, 10 % of the dose",
    "infuse_d2": "Give D2, 30 % of the dose",
    "infuse_d3": "Give D3, 60 % of the dose",
    "report_toxicity": "Report toxicity",
    "resolve_toxicity": "Resolve toxicity",
    "cancel_remaining_fractions": "Cancel the remaining fractions",
    "assess_response": "Assess response",
    "continue_treatment": "Give another course",
    "cease": "Cease treatment",
    "discontinue": "Discontinue (severe toxicity)",
    "withdraw": "Withdraw from the study",
    "record_death": "Record death",
    "record_follow_up": "Follow-up visit",
    "record_missed_visit": "Record a missed visit",
    "record_sae_report": "Send SAE report",
    "correct": "Correct a recorded fact",
    "sign": "Sign a milestone",
    "assess_pre_infusion": "Re-assess before the next fraction",
    "transfer_site": "Transfer to another site",
    "open_query": "Open a data query",
    "answer_query": "Answer a data query",
    "close_query": "Close a data query",
    "reopen_query": "Re-open a data query",
    #: the board's next action after a response assessment (``views.projection``)
    "decide": "Decide: another course, cease or discontinue",
}

#: Each command and trigger as a thing done (the patient's timeline).
DONE_LABELS: Final[dict[str, str]] = {
    "register": "Registered",
    "screen": "Screened",
    "rescreen": "Screened again",
    "record_apheresis": "Apheresis done",
    "start_manufacture": "Manufacture started",
    "release_product": "Release decision recorded",
    "repeat_apheresis": "Apheresis repeated",
    "give_infusion": "Fraction given",
    "infuse_d1": "D1 given (10 %)",
    "infuse_d2": "D2 given (30 %)",
    "infuse_d3": "D3 given (60 %)",
    "report_toxicity": "Toxicity reported",
    "resolve_toxicity": "Toxicity resolved",
    "cancel_remaining_fractions": "Remaining fractions cancelled",
    "assess_response": "Response assessed",
    "continue_treatment": "Another course decided",
    "cease": "Treatment ceased",
    "discontinue": "Treatment discontinued",
    "withdraw": "Withdrawn from the study",
    "record_death": "Death recorded",
    "record_follow_up": "Follow-up visit",
    "record_missed_visit": "Visit missed",
    "record_sae_report": "SAE report sent",
    "correct": "Correction",
    "sign": "Signed",
    "assess_pre_infusion": "Pre-infusion assessment",
    "transfer_site": "Transferred to another site",
    "open_query": "Data query opened",
    "answer_query": "Data query answered",
    "close_query": "Data query closed",
    "reopen_query": "Data query re-opened",
}

#: Responses of B-ALL (clinical.md s5), with their abbreviation.
RESPONSE_LABELS: Final[dict[str, str]] = {
    "CR": "Complete response (CR)",
    "CRi": "CR with incomplete count recovery (CRi)",
    "PR": "Partial response (PR)",
    "NR": "No response (NR)",
}
assert set(RESPONSE_LABELS) == set(RESPONSES)

#: Toxicity kinds.
TOXICITY_LABELS: Final[dict[str, str]] = {
    "CRS": "Cytokine release syndrome (CRS)",
    "ICANS": "Neurotoxicity (ICANS)",
    "other": "Other toxicity",
}

_NEXT = re.compile(r"^(?P<code>[a-z0-9_]+)(?::\s*(?P<choices>.*)|\s*\((?P<detail>.*)\))?$", re.S)


_SUPERSCRIPT = str.maketrans("0123456789-", "⁰¹²³⁴⁵⁶⁷⁸⁹⁻")


def cells_text(n: float | None) -> str:
    """A cell count as people write it: 55000000 -> ``5.5 × 10⁷`` (two significant digits)."""
    if n is None:
        return "-"
    if n == 0:
        return "0"
    mantissa, exponent = f"{n:.1e}".split("e")
    return f"{mantissa} × 10{str(int(exponent)).translate(_SUPERSCRIPT)}"


def state_label(state: str | None) -> str:
    """A state's words (an unknown state: as it is)."""
    return "" if state is None else STATE_LABELS.get(state, state)


def action_label(code: str) -> str:
    """A command's or trigger's words; a command without an entry reads as its words."""
    return ACTION_LABELS.get(code) or code.replace("_", " ").capitalize()


def next_action_label(text: str | None) -> str | None:
    """The board's next action in words: ``record_follow_up (M3, window 2026-12-01 to
    2026-12-29)`` -> ``Follow-up visit (M3, window 2026-12-01 to 2026-12-29)``; the detail in
    parentheses is kept (its dates as the board gives them)."""
    if not text:
        return None
    m = _NEXT.match(text)
    if m is None:  # words already (``lost to follow-up``)
        return text[:1].upper() + text[1:]
    if m.group("choices") is not None:
        return ACTION_LABELS["decide"] if m.group("code") == "decide" else text
    label = action_label(m.group("code"))
    detail = m.group("detail")
    return f"{label} ({detail})" if detail else label


def next_action_code(text: str | None) -> str | None:
    """The command or trigger a board's next action names (``decide`` after an assessment)."""
    if not text:
        return None
    m = _NEXT.match(text)
    return m.group("code") if m else None


def labels_document() -> dict[str, Any]:
    """Every table above, and the eligibility criteria in the trial's words (by id)."""
    return {
        "states": {str(k): v for k, v in STATE_LABELS.items()},
        "actions": dict(ACTION_LABELS),
        "done": dict(DONE_LABELS),
        "responses": dict(RESPONSE_LABELS),
        "toxicities": dict(TOXICITY_LABELS),
        "criteria": {
            c.id: {"kind": c.kind.value, "text": c.text, "inputs": list(c.inputs)} for c in CRITERIA
        },
    }
