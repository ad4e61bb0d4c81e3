"""Query rules: checks of the recorded data that open a data query by themselves, and close it
when the data no longer match (issue 17; clinicedc's edc-data-manager "query rules").

A rule is pure: an id, a sentence, the moves it reads, and a check of one recorded move (as it
stands after its corrections) that returns findings, each naming the event version and the field
path the query is about. The service runs the rules on the move each command records or
corrects (:func:`reconcile` says which system queries to open and which to close) and records
the queries as the actor :data:`~cart_course.protocol.queries.RULES_ACTOR`, so that running the
rules again on the same data opens nothing new, and a corrected record closes its query.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import attrs

from .queries import SYSTEM_ACTOR_PREFIX
from .states import INFUSION_TRIGGERS


@attrs.frozen(kw_only=True)
class Entry:
    """A recorded move as it stands now: its version and trigger, and its payload, facts and
    outcome as last corrected (the latest ``correct`` of it wins)."""

    version: int
    trigger: str
    payload: Mapping[str, Any]
    facts: Mapping[str, Any] = attrs.field(factory=dict)
    outcome: Mapping[str, Any] = attrs.field(factory=dict)


@attrs.frozen(kw_only=True)
class Finding:
    """What a rule found: the rule, the event version and field path, and the query's text."""

    rule: str
    version: int
    field: str
    text: str

    @property
    def key(self) -> tuple[str, int, str]:
        return (self.rule, self.version, self.field)


@attrs.frozen(kw_only=True)
class QueryRule:
    id: str
    #: What the rule checks, in one sentence (docs, the query's text).
    text: str
    #: The moves (triggers) it reads.
    reads: frozenset[str]
    check: Callable[[Entry], list[Finding]]


_INFUSIONS = frozenset(str(t) for t in INFUSION_TRIGGERS)


def _day(entry: Entry) -> str:
    day = entry.payload.get("day")
    return f"D{day}" if day is not None else "the fraction"


def _fraction_unverified(entry: Entry) -> list[Finding]:
    p = entry.payload
    if (p.get("bag_id") and p.get("verified_by")) or p.get("product_lot"):
        return []
    return [
        Finding(
            rule="fraction_unverified",
            version=entry.version,
            field="payload.product_lot",
            text=f"{_day(entry)} (v{entry.version}) is recorded without its bedside check (bag_id "
            "and verified_by) and without its lot (product_lot): give the lot of the product "
            "infused (correct: product_lot), or say why it is unknown",
        )
    ]


def _deviation_without_reason(entry: Entry) -> list[Finding]:
    deviations = entry.outcome.get("deviations") or ()
    reason = entry.payload.get("deviation_reason")
    if not deviations or (isinstance(reason, str) and reason.strip()):
        return []
    return [
        Finding(
            rule="deviation_without_reason",
            version=entry.version,
            field="payload.deviation_reason",
            text=f"{_day(entry)} (v{entry.version}) deviates from the plan without a reason ("
            + "; ".join(str(d) for d in deviations)
            + "): give the reason (correct: deviation_reason) or the right dose",
        )
    ]


def _response_without_baseline(entry: Entry) -> list[Finding]:
    assessment = entry.payload.get("assessment")
    if (
        not isinstance(assessment, Mapping)
        or assessment.get("baseline_marrow_blasts_pct") is not None
    ):
        return []
    return [
        Finding(
            rule="response_without_baseline",
            version=entry.version,
            field="payload.assessment.baseline_marrow_blasts_pct",
            text=f"the response assessment (v{entry.version}) has no baseline marrow blasts: a "
            "partial response cannot be judged without it; give the baseline (correct: "
            "assessment)",
        )
    ]


def _follow_up_out_of_window(entry: Entry) -> list[Finding]:
    out = entry.outcome
    if out.get("in_window") is not False:
        return []
    return [
        Finding(
            rule="follow_up_out_of_window",
            version=entry.version,
            field="occurred_at",
            text=f"follow-up visit {out.get('visit')} (v{entry.version}) is outside its window "
            f"({out.get('window_start')} to {out.get('window_end')}, "
            f"{out.get('days_outside_window', '?')} days out): confirm the visit date",
        )
    ]


RULES: tuple[QueryRule, ...] = (
    QueryRule(
        id="fraction_unverified",
        text="A fraction recorded without its bedside check (bag and second verifier) or its lot.",
        reads=_INFUSIONS,
        check=_fraction_unverified,
    ),
    QueryRule(
        id="deviation_without_reason",
        text="A fraction that deviates from the plan (dose, day) without a deviation reason.",
        reads=_INFUSIONS,
        check=_deviation_without_reason,
    ),
    QueryRule(
        id="response_without_baseline",
        text="A response assessment without the baseline marrow blasts.",
        reads=frozenset({"assess_response"}),
        check=_response_without_baseline,
    ),
    QueryRule(
        id="follow_up_out_of_window",
        text="A follow-up visit recorded outside its window.",
        reads=frozenset({"record_follow_up"}),
        check=_follow_up_out_of_window,
    ),
)
RULE_IDS = tuple(r.id for r in RULES)
#: Every move some rule reads.
READ_TRIGGERS: frozenset[str] = frozenset(t for r in RULES for t in r.reads)


def findings(entries: Iterable[Entry], rules: Sequence[QueryRule] = RULES) -> list[Finding]:
    """What the rules find in these recorded moves, in order."""
    out: list[Finding] = []
    for entry in entries:
        for rule in rules:
            if entry.trigger in rule.reads:
                out.extend(rule.check(entry))
    return out


@attrs.frozen(kw_only=True)
class Reconciled:
    #: Findings without an unresolved system query: open one each.
    open: list[Finding]
    #: Unresolved system queries (by id) whose finding is gone: close them.
    close: list[str]


def reconcile(
    found: Iterable[Finding],
    queries: Mapping[str, Mapping[str, Any]],
    versions: Iterable[int],
) -> Reconciled:
    """Which system queries to open and to close, the rules having looked at ``versions``
    (their findings ``found``), given the patient's ``queries`` (``record.queries``).

    Never two unresolved system queries for one rule, version and field; a finding whose query
    a monitor closed (accepted as it is) is not asked again; a system query whose finding is
    gone (the data were corrected) is closed, unless a monitor re-opened it once (then it is
    the monitor's question: the site answers it, the monitor closes it)."""
    looked = set(versions)
    unresolved: dict[tuple[str, int, str], str] = {}
    accepted: set[tuple[str, int, str]] = set()
    held: set[tuple[str, int, str]] = set()
    for q in queries.values():
        rule = q.get("rule")
        if not rule or q.get("on_version") not in looked:
            continue
        key = (str(rule), int(q["on_version"]), str(q.get("field")))
        if q.get("status") != "closed":
            unresolved[key] = str(q["id"])
            if any(step.get("action") == "reopen" for step in q.get("history", ())):
                held.add(key)  # only a person re-opens a query: it is theirs since
        elif not str(q.get("closed_by", "")).startswith(SYSTEM_ACTOR_PREFIX):
            accepted.add(key)
    keys = set()
    to_open = []
    for f in found:
        if f.key in keys:
            continue
        keys.add(f.key)
        if f.key not in unresolved and f.key not in accepted:
            to_open.append(f)
    to_close = [
        qid for key, qid in sorted(unresolved.items()) if key not in keys and key not in held
    ]
    return Reconciled(open=to_open, close=to_close)
