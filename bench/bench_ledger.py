"""The signed ledger: issuing a checkpoint and verifying against one, on the audit cohorts.

Baseline, same run, same rows: a raw ``sqlite3`` read of every stored event and ``json.loads`` of
its state (as ``bench_audit``). Measured on a copy of each cohort (``bench_audit.build``):

- the first checkpoint (every row's leaf hash, the tree, the signature, the leaves stored): what a
  store from before the ledger pays once, on upgrade;
- a later checkpoint after 1 % more events (only the new rows are read: the tree's frontier is
  kept with each checkpoint);
- ``verify --checkpoint`` without the chain verification (the ledger's part: every row's leaf, the
  roots, the consistency proof, the e-signatures), and one inclusion proof (``audit prove``).
"""

from __future__ import annotations

import shutil
import tempfile
import time
from itertools import islice
from pathlib import Path

from bench.bench_audit import SIZES, build, raw_read
from bench.harness import Section
from cart_course.contract import parse_command
from cart_course.demo import cohort
from cart_course.keys import generate
from cart_course.ledger.core import issue, prove, verify_checkpoint
from cart_course.ledger.log import rows as log_rows
from cart_course.ledger.store import LedgerStore
from cart_course.service import CourseService
from cart_course.storage import open_application, parse_store_url


def measure(source: Path, n: int) -> dict[str, object]:
    key = generate("bench")
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "ledger.sqlite"
        shutil.copy(source, path)
        settings = parse_store_url(str(path))
        service = CourseService(open_application(settings, cache_size=1))
        store = LedgerStore.open(settings)
        try:
            rows, raw_s = min((raw_read(path) for _ in range(3)), key=lambda r: r[1])
            started = time.perf_counter()
            first = issue(service.log, store, key)
            first_s = time.perf_counter() - started
            more = [parse_command(c) for c in cohort(max(1, n // 100), seed=29, prefix="B")]
            for i in range(0, len(more), 500):
                service.execute_batch(more[i : i + 500])
            started = time.perf_counter()
            later = issue(service.log, store, key)
            later_s = time.perf_counter() - started
            text = first.text()
            keys = [key.public_key]
            verify_runs = []
            for _ in range(3):
                started = time.perf_counter()
                report = verify_checkpoint(service.log, store, text, keys)
                verify_runs.append(time.perf_counter() - started)
            verify_s = min(verify_runs)
            started = time.perf_counter()
            middle = next(islice(log_rows(service.log), first.size // 2, None))
            prove(service.log, store, middle.stream, middle.version, checkpoint_text=later.text())
            prove_s = time.perf_counter() - started
        finally:
            store.close()
            service.close()
    raw_rate = rows / raw_s
    return {
        "patients": n,
        "events": first.size,
        "raw read+decode (events/s)": raw_rate,
        "first checkpoint (s)": first_s,
        "ratio to raw": (first.size / first_s) / raw_rate,
        "next checkpoint, +1 % events (ms)": later_s * 1000,
        "verify --checkpoint (s)": verify_s,
        "verify ratio to raw": (report.tree_size / verify_s) / raw_rate,
        "one inclusion proof (s)": prove_s,
        # The smaller cohort is cut from the larger one (whole streams deleted): SQLite's
        # notification ids have gaps there, which verify reports as deleted rows.
        "intact": all(p.check == "gap" for p in report.problems),
    }


def run() -> Section:
    section = Section(
        title="Ledger: signed checkpoints and verification against one (SQLite)",
        method=(
            "`ledger.issue` hashes every stored row as a leaf (RFC 9162: SHA-256 of 0x00 and the "
            "row's bytes as stored), builds the Merkle tree, signs the checkpoint (Ed25519) and "
            "stores it with the leaf hashes; the next checkpoint reads only the rows recorded "
            "since. `ledger.verify_checkpoint` re-hashes every row, checks the signed root and "
            "every stored checkpoint, proves consistency and checks each e-signature's service "
            "signature (the chain verification of `audit verify` is measured under Audit). "
            "Ratios are events/s against a raw `sqlite3` read + `json.loads` of the same rows in "
            "the same run (best of 3)."
        ),
    )
    for n in SIZES:
        section.rows.append(measure(build(n), n))
    section.notes.append(
        "A checkpoint every N events (CART_COURSE_CHECKPOINT_EVERY, default 1000) costs about "
        "what the 'next checkpoint' column shows for N new events, plus one signature."
    )
    return section


if __name__ == "__main__":
    print(run().markdown())
