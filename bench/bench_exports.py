"""CDISC exports (issue 19): ODM with the audit trail and the SDTM datasets of a whole cohort,
as a ratio to a raw read of the same log.

Baseline, same run, same rows: a raw ``sqlite3`` read of every stored event and ``json.loads``
of its state (``bench_audit.raw_read``). The cohort is ``bench_audit``'s cached one, cut down to
about 100,000 events.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

from bench.bench_audit import build, raw_read
from bench.harness import QUICK, Section
from cart_course.exports import source
from cart_course.exports.odm import write_odm
from cart_course.exports.sdtm import build as build_sdtm
from cart_course.exports.write import write_datasets
from cart_course.service import CourseService
from cart_course.storage import open_application, parse_store_url

PATIENTS = 200 if QUICK else 11_500  # the demo cohort: ~8.7 events a patient, ~100k events


def _timed_export(path: Path, what: str) -> tuple[int, float]:
    service = CourseService(open_application(parse_store_url(str(path)), cache_size=1))
    try:
        started = time.perf_counter()
        cut = source.read(service.log)
        with tempfile.TemporaryDirectory() as tmp:
            if what == "odm":
                with open(Path(tmp) / "odm.xml", "w", encoding="utf-8") as fh:
                    write_odm(cut, fh)
            else:
                write_datasets(build_sdtm(cut), Path(tmp), what)
        return cut.event_count, time.perf_counter() - started
    finally:
        service.close()


def run() -> Section:
    section = Section(
        title="CDISC exports of a cohort (SQLite)",
        method=(
            "`cart-course export odm` (every value with its AuditRecord, a transactional ODM "
            "1.3.2 file) and `export sdtm` (SDTMIG 3.4 datasets as SAS XPORT v5 or Dataset-JSON "
            "v1.1, define.xml, define.html), each from a store opened cold, the cut-off pass "
            "included (the log is read twice: once to check the cut-off, once to export). "
            "Baseline: raw `sqlite3` read + `json.loads` of the same rows, same run. Best of 2 "
            "interleaved runs each."
        ),
    )
    path = build(PATIENTS)
    for what in ("odm", "xpt", "dataset-json"):
        raws, runs = [], []
        for _ in range(2):
            raws.append(raw_read(path))
            runs.append(_timed_export(path, what))
        rows, raw_s = min(raws, key=lambda r: r[1])
        events, export_s = min(runs, key=lambda r: r[1])
        section.rows.append(
            {
                "export": what,
                "patients": PATIENTS,
                "events": events,
                "raw read+decode (events/s)": rows / raw_s,
                "export (events/s)": events / export_s,
                "export (s)": export_s,
                "ratio export / raw read": (events / export_s) / (rows / raw_s),
            }
        )
    section.notes.append(
        "The exports decode, hash and check every row (the audit's reader), so they are bounded "
        "by the audit's own ratio to a raw read; the ODM file is large (an AuditRecord per "
        "value) and the XPT writer (pyreadstat via pandas) pays a data frame per dataset."
    )
    return section
