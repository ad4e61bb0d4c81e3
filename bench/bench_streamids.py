"""Keyed stream ids (issue 14 item 7): what a patient's stream id costs per lookup, and the
command path on an encrypted store with keyed ids against the same store with uuid5 ids."""

from __future__ import annotations

import time
import uuid
from typing import Any

from cart_course.contract import parse_command
from cart_course.course import PATIENT_NAMESPACE
from cart_course.demo import cohort
from cart_course.service import CourseService
from cart_course.storage import new_cipher_key, open_application, parse_store_url
from cart_course.streamids import (
    LABEL_STREAM,
    SCHEME_KEYED,
    SCHEME_UUID5,
    StreamIds,
    derive_key,
    keyed_uuid,
)

from .harness import QUICK, Section, best_of


def _per_call(fn: Any, ids: list[str]) -> float:
    """Microseconds per call of ``fn`` over ``ids`` (best of 5)."""

    def loop() -> None:
        for pid in ids:
            fn(pid)

    return best_of(loop) / len(ids) * 1e6


def _command_path(commands: list[Any], key: str, scheme: str) -> float:
    """Events per second through ``CourseService.execute`` on an encrypted in-memory store
    whose stream ids follow ``scheme``."""
    app = open_application(parse_store_url("memory:"), cipher_key=key)
    app.stream_ids = StreamIds(scheme, cipher_key=key)
    if scheme == SCHEME_UUID5:
        # a new store is keyed (its marker says so): forcing uuid5 ids on it makes each write's
        # check for a migration refuse. The baseline is the uuid5 store as it was before keyed
        # ids (no such check), so the check is left out here.
        app._check_not_migrated = lambda: None  # type: ignore[method-assign]
    service = CourseService(app)
    started = time.perf_counter()
    events = 0
    for c in commands:
        events += 2 if service.execute(c).version == 2 else 1
    elapsed = time.perf_counter() - started
    service.close()
    return events / elapsed


def run() -> Section:
    key = new_cipher_key()
    n = 2_000 if QUICK else 20_000
    ids = [f"P-{i:05d}" for i in range(n)]
    stream_key = derive_key(key, LABEL_STREAM)
    keyed = StreamIds(SCHEME_KEYED, cipher_key=key)
    plain = StreamIds(SCHEME_UUID5)
    for pid in ids:  # warm both caches: a process looks each patient up many times
        keyed.stream_id(pid)
        plain.stream_id(pid)
    rows: list[dict[str, Any]] = [
        {
            "lookup": "uuid.uuid5 (baseline, uncached)",
            "us per call": _per_call(lambda p: uuid.uuid5(PATIENT_NAMESPACE, p), ids),
        },
        {
            "lookup": "keyed: HMAC-SHA256 -> UUID (uncached)",
            "us per call": _per_call(lambda p: keyed_uuid(stream_key, p), ids),
        },
        {"lookup": "uuid5 stream id (cached)", "us per call": _per_call(plain.stream_id, ids)},
        {"lookup": "keyed stream id (cached)", "us per call": _per_call(keyed.stream_id, ids)},
    ]
    patients = 15 if QUICK else 60
    rounds = 3 if QUICK else 5
    commands = [parse_command(c) for c in cohort(patients, 7)]
    keyed_rates, uuid5_rates = [], []
    for _ in range(rounds):  # interleaved: both see the same machine load
        keyed_rates.append(_command_path(commands, key, SCHEME_KEYED))
        uuid5_rates.append(_command_path(commands, key, SCHEME_UUID5))
    k, u = max(keyed_rates), max(uuid5_rates)
    rows += [
        {"lookup": "command path, encrypted memory store, keyed ids (events/s)", "us per call": k},
        {"lookup": "command path, encrypted memory store, uuid5 ids (events/s)", "us per call": u},
    ]
    return Section(
        title="Keyed stream ids (encrypted stores)",
        method=(
            f"A patient's stream id, {n} patients, each called once per round (best of 5): "
            "uncached (`uuid.uuid5`, and the keyed HMAC-SHA256 as `streamids.keyed_uuid` "
            "computes it) and as the service calls it (`StreamIds.stream_id`, an LRU cache of "
            "65,536 patients per process, warm). Then the command path "
            f"(`CourseService.execute`, {len(commands)} demo commands for {patients} patients) "
            "on an encrypted in-memory store with keyed ids and with uuid5 ids, "
            f"{rounds} rounds interleaved, best of each."
        ),
        rows=rows,
        notes=[f"command path keyed / uuid5: {k / u:.2f} (target >= 0.95)"],
    )
