"""The chain of custody of a cell product: ``cart-course audit product ID``.

``ID`` names a collection (its ISBT 128 DIN or the site's id), a lot or a bag. Every patient's
history is read from the stored log (never the aggregate); the steps of the patient whose product
it is are listed in order -- the collection, each manufacture, each release decision, each bedside
check -- each with who recorded it, when (clinical and record time) and under which release
decision. The product's identifiers are kept in the events' facts, so the chain is what was
recorded, and it verifies with the hash chain like every other event.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from .log import MOVED, LoggedEvent

#: The moves that are steps of a product's chain of custody.
PRODUCT_MOVES = (
    "record_apheresis",
    "repeat_apheresis",
    "start_manufacture",
    "release_product",
    "infuse_d1",
    "infuse_d2",
    "infuse_d3",
)


def _norm(value: str) -> str:
    return value.replace(" ", "").upper()


def ids_of(facts: dict[str, Any]) -> tuple[str | None, str | None, list[str]]:
    """(collection, lot, bags) a step's facts name."""
    collection = facts.get("collection")
    bag = facts.get("bag") if isinstance(facts.get("bag"), dict) else None
    col = collection.get("id") if isinstance(collection, dict) else facts.get("collection_id")
    if bag is not None:
        col = bag.get("collection_id")
    lot = facts.get("lot_id") or (bag.get("lot_id") if bag else None)
    bags = [b["bag_id"] for b in facts.get("bags", ()) if isinstance(b, dict)]
    if facts.get("bag_id"):
        bags.append(str(facts["bag_id"]))
    return (col if isinstance(col, str) else None, lot if isinstance(lot, str) else None, bags)


def _step(e: LoggedEvent, facts: dict[str, Any], decision: dict[str, Any] | None) -> dict[str, Any]:
    trigger = str(e.get("trigger"))
    step: dict[str, Any] = {
        "version": e.version,
        "step": trigger,
        "occurred_at": e.occurred_at,
        "recorded_at": e.recorded_at,
        "actor": e.get("actor"),
        "role": e.get("role"),
        "reason": e.get("reason"),
    }
    if trigger in ("record_apheresis", "repeat_apheresis"):
        step["collection"] = facts.get("collection")
    elif trigger == "start_manufacture":
        step.update(lot_id=facts.get("lot_id"), collection_id=facts.get("collection_id"))
    elif trigger == "release_product":
        outcome = e.get("outcome") or {}
        step.update(
            lot_id=facts.get("lot_id"),
            decision=facts.get("decision"),
            released_by=facts.get("released_by"),
            tests=facts.get("tests"),
            out_of_specification=outcome.get("out_of_specification"),
            exception_reason=facts.get("exception_reason"),
            manufactured_on=facts.get("manufactured_on"),
            expires_at=facts.get("expires_at"),
            bags=facts.get("bags"),
        )
    else:
        outcome = e.get("outcome") or {}
        step.update(
            bag_id=facts.get("bag_id"),
            lot_id=(facts.get("bag") or {}).get("lot_id"),
            day=outcome.get("day"),
            cells=outcome.get("cells"),
            administered_by=facts.get("administered_by"),
            verified_by=facts.get("verified_by"),
            thawed_at=facts.get("thawed_at"),
            release_decision=decision,
        )
    return step


def chain_of_custody(
    product_id: str, histories: Iterable[tuple[str, list[LoggedEvent]]]
) -> dict[str, Any] | None:
    """The chain of custody of the collection, lot or bag ``product_id`` (None: not on record)."""
    wanted = _norm(product_id)
    for patient_id, events in histories:
        steps = [e for e in events if e.kind == MOVED and e.get("trigger") in PRODUCT_MOVES]
        collections: dict[str, set[str]] = {}  # collection -> lots
        lot_of_bag: dict[str, str] = {}
        lot_collection: dict[str, str] = {}
        for e in steps:
            col, lot, bags = ids_of(dict(e.get("facts") or {}))
            if col is not None:
                collections.setdefault(_norm(col), set())
            if lot is not None and col is not None:
                collections.setdefault(_norm(col), set()).add(lot)
                lot_collection[lot] = _norm(col)
            for bag in bags:
                if lot is not None:
                    lot_of_bag[bag] = lot
        kind: str | None = None
        collection = lot_id = None
        if wanted in collections:
            kind, collection = "collection", wanted
        elif product_id in lot_collection:
            kind, lot_id = "lot", product_id
            collection = lot_collection[product_id]
        elif product_id in lot_of_bag:
            kind, lot_id = "bag", lot_of_bag[product_id]
            collection = lot_collection.get(lot_id)
        if kind is None:
            continue
        lots = {lot_id} if lot_id else collections.get(collection or "", set())
        decisions: dict[str, dict[str, Any]] = {}
        chain: list[dict[str, Any]] = []
        for e in steps:
            facts = dict(e.get("facts") or {})
            col, lot, bags = ids_of(facts)
            trigger = e.get("trigger")
            if trigger == "release_product" and lot is not None:
                decisions[lot] = {
                    "version": e.version,
                    "decision": facts.get("decision"),
                    "released_by": facts.get("released_by"),
                    "decided_at": e.occurred_at,
                }
            if kind == "bag" and trigger in ("infuse_d1", "infuse_d2", "infuse_d3"):
                keep = product_id in bags
            elif trigger in ("record_apheresis", "repeat_apheresis"):
                keep = col is not None and _norm(col) == collection
            else:
                keep = lot in lots
            if keep:
                chain.append(_step(e, facts, decisions.get(lot) if lot else None))
        return {
            "product_id": product_id,
            "kind": kind,
            "patient_id": patient_id,
            "collection_id": collection,
            "lots": sorted(lots),
            "steps": chain,
        }
    return None


def render(chain: dict[str, Any]) -> list[str]:
    """The chain of custody as lines of text."""
    lines = [
        f"{chain['kind']} {chain['product_id']}: patient {chain['patient_id']}, collection "
        f"{chain['collection_id']}, lot(s) {', '.join(chain['lots']) or 'none'}"
    ]
    for s in chain["steps"]:
        who = f"{s['actor']} ({s['role']})"
        head = f"  v{s['version']} {s['occurred_at']} {s['step']} by {who}"
        if s["step"] == "release_product":
            oos = " OUT OF SPECIFICATION" if s.get("out_of_specification") else ""
            tests = ", ".join(
                f"{t['name']} {t['result']} {'pass' if t['passed'] else 'FAIL'}"
                for t in s.get("tests") or ()
            )
            head += f": lot {s['lot_id']} {s['decision']}{oos} by {s['released_by']} [{tests}]"
            if s.get("exception_reason"):
                head += f"; exception: {s['exception_reason']}"
        elif s["step"] == "start_manufacture":
            head += f": lot {s['lot_id']} from collection {s['collection_id']}"
        elif s["step"].startswith("infuse_d"):
            decision = s.get("release_decision") or {}
            head += (
                f": bag {s['bag_id']} (lot {s['lot_id']}) D{s['day']} {s['cells']:.3g} cells, "
                f"given by {s['administered_by']}, verified by {s['verified_by']}, thawed "
                f"{s['thawed_at']}; release v{decision.get('version')} "
                f"{decision.get('decision')} by {decision.get('released_by')}"
            )
        else:
            col = s.get("collection") or {}
            head += f": collection {col.get('id')} ({col.get('id_type')})"
            if s.get("reason"):
                head += f"; reason: {s['reason']}"
        lines.append(head)
    return lines
