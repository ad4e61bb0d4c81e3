"""The product's part of existing commands: ``record_apheresis`` names its collection,
``give_infusion`` names its bag, its second verifier and the thaw time (``product.py``)."""

from __future__ import annotations

import datetime as dt

from . import building_blocks as blocks
from . import product
from .building_blocks import Facts, Parsed, Payload
from .record import PatientRecord


def parse_apheresis(
    record: PatientRecord, p: Payload, day: dt.date, ctx: Facts, seed: Facts
) -> Parsed:
    """``record_apheresis``: the collection's identifier (``din`` or ``collection_id``) when
    given: the patient's product is tracked from then on."""
    if "din" not in p and "collection_id" not in p:
        return blocks.parse_apheresis(record, p, day, ctx, seed)
    rest = {k: v for k, v in p.items() if k not in ("din", "collection_id")}
    norm, facts = blocks.parse_apheresis(record, rest, day, ctx, seed)
    collection = product.parse_collection(p)
    assert collection is not None
    key = "din" if collection["id_type"] == "isbt128" else "collection_id"
    product._check_new_collection(record, collection, f"payload.{key}")
    norm[key] = collection["id"]
    facts["collection"] = collection
    return norm, facts


def parse_infusion(
    record: PatientRecord, p: Payload, day: dt.date, ctx: Facts, seed: Facts
) -> Parsed:
    """``give_infusion``: the bedside keys parsed (the bag as the record knows it), the cells
    defaulting to the bag's labelled count."""
    if "bag_id" not in p and "verified_by" not in p and "thawed_at" not in p:
        if "cells" not in p:
            product.default_cells(record, p)  # raises: cells are required without a bag
        return blocks.parse_infusion(record, p, day, ctx, seed)
    bedside = product.parse_bedside(record, p, ctx)
    assert bedside is not None
    rest = {
        k: v for k, v in product.default_cells(record, p).items() if k not in product.BEDSIDE_KEYS
    }
    norm, facts = blocks.parse_infusion(record, rest, day, ctx, seed)
    norm.update(bedside[0])
    facts.update(bedside[1])
    return norm, facts
