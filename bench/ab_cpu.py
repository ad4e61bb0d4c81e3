"""``python -m bench.ab_cpu [AUDIT_STORE]``: three CPU-time ratios (``time.process_time``), each
against its baseline in the same process, printed as JSON: run it on two trees in turn
(``cd TREE && PYTHONPATH=TREE python -m bench.ab_cpu``) to compare versions of the code on a
shared machine, where wall-clock figures of separate runs do not compare.

- the audit (``verify``) of a SQLite cohort vs raw read + ``json.loads`` of its rows;
- the ingest's ``record_batch`` (one process, new SQLite file) vs raw sqlite3 ``executemany``;
- the command path in memory vs the bare eventsourcing app (as ``bench_commands``).
"""

from __future__ import annotations

import json
import os
import sqlite3
import sys
import tempfile
import time
from pathlib import Path

from bench.bench_audit import build, raw_read
from bench.bench_commands import bare_saves, command_path
from cart_course.audit import verify
from cart_course.bulk import bulk_gc
from cart_course.contract import parse_command
from cart_course.demo import cohort
from cart_course.ingest import record_batch
from cart_course.service import CourseService
from cart_course.storage import open_application, parse_store_url


def best(fn, n=3):
    return min(fn() for _ in range(n))


out = {}
# audit
p = Path(sys.argv[1]) if len(sys.argv) > 1 else build(2500)


def raw() -> float:
    count, seconds = raw_read(p, time.process_time)
    return seconds / count


def aud():
    s = CourseService(open_application(parse_store_url(str(p)), cache_size=1))
    t = time.process_time()
    r = verify(getattr(s, "log", s.app))  # the read interface; older trees take the app
    el = time.process_time() - t
    s.close()
    assert r.ok
    return el / r.events


out["audit verify / raw read+decode (CPU)"] = best(raw) / best(aud)
# ingest (one process, record_batch as the ingest runs it) vs raw sqlite3 insert of the same rows
raw_cmds = list(cohort(600, 11))
lines = [(i, json.dumps(c)) for i, c in enumerate(raw_cmds, 1)]
regs = len({c["patient_id"] for c in raw_cmds})


def ingest():
    url = os.path.join(tempfile.mkdtemp(), "x.sqlite")
    svc = CourseService(open_application(parse_store_url(url)))
    with bulk_gc() as settle:
        t = time.process_time()
        for i in range(0, len(lines), 2000):
            _counts, rej = record_batch(svc, lines[i : i + 2000])
            assert not rej
            settle()
        el = time.process_time() - t
    svc.close()
    return el / (len(raw_cmds) + regs)


def raw_insert():
    db = os.path.join(tempfile.mkdtemp(), "r.sqlite")
    con = sqlite3.connect(db, isolation_level=None)
    con.execute("PRAGMA journal_mode=WAL")
    con.execute(
        "CREATE TABLE events (id INTEGER PRIMARY KEY AUTOINCREMENT, stream TEXT, version INTEGER, topic TEXT, state BLOB, UNIQUE(stream, version))"
    )
    t = time.process_time()
    versions = {}
    rows = []
    for (_, line), c in zip(lines, raw_cmds, strict=False):
        v = versions.get(c["patient_id"], 0) + 1
        versions[c["patient_id"]] = v
        rows.append((c["patient_id"], v, c["command"], line.encode()))
    for i in range(0, len(rows), 2000):
        con.execute("BEGIN")
        con.executemany(
            "INSERT INTO events (stream, version, topic, state) VALUES (?,?,?,?)",
            rows[i : i + 2000],
        )
        con.execute("COMMIT")
    el = time.process_time() - t
    con.close()
    return el / len(rows)


out["ingest one process / raw sqlite3 insert (CPU)"] = best(raw_insert) / best(ingest)
# command path in memory vs bare eventsourcing app
raw60 = list(cohort(60, 7))
cmds = [parse_command(c) for c in raw60]


def ours() -> float:
    return 1 / command_path(cmds, "memory:", time.process_time)


def bare() -> float:
    return 1 / bare_saves(raw60, "memory:", time.process_time)


o = []
b = []
for _ in range(5):
    o.append(ours())
    b.append(bare())
out["command path in memory / bare app (CPU)"] = min(b) / min(o)
print(json.dumps(out))
