"""HTTP: command latency and throughput through a real uvicorn server on SQLite, 16 clients.

Baseline in the same run, on the same server: a bare Litestar endpoint (``GET /health``: no
auth, no store). Two phases: paced at 200 requests/s overall (latency p50/p99), then closed-loop
saturation (throughput).
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

from cart_course.demo import cohort
from cart_course.storage import parse_store_url
from cart_course.tokens import open_token_store

from .harness import QUICK, Section, percentiles

CLIENTS = 16
RATE = 200.0


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _serve(db: str, port: int) -> subprocess.Popen[bytes]:
    cli = str(Path(sys.executable).with_name("cart-course"))
    proc = subprocess.Popen(
        [cli, "serve", "--host", "127.0.0.1", "--port", str(port)],
        env={**os.environ, "CART_COURSE_DB": db},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    for _ in range(300):
        try:
            if httpx.get(f"http://127.0.0.1:{port}/ready", timeout=1).status_code == 200:
                return proc
        except httpx.HTTPError:
            time.sleep(0.1)
    proc.kill()
    raise RuntimeError("server did not start")


def _drive(
    jobs: list[list[Callable[[httpx.Client], int]]], rate: float | None
) -> tuple[list[float], float, int]:
    """Each client runs its job list in order; paced to ``rate`` requests/s overall or flat out."""
    latencies: list[float] = []
    errors = 0
    lock = threading.Lock()
    interval = CLIENTS / rate if rate else 0.0

    def client(work: list[Callable[[httpx.Client], int]], offset: float) -> None:
        nonlocal errors
        mine: list[float] = []
        bad = 0
        with httpx.Client(timeout=30) as http:
            start = time.perf_counter() + offset
            for i, job in enumerate(work):
                if interval:
                    delay = start + i * interval - time.perf_counter()
                    if delay > 0:
                        time.sleep(delay)
                t0 = time.perf_counter()
                status = job(http)
                mine.append(time.perf_counter() - t0)
                bad += status >= 300
        with lock:
            latencies.extend(mine)
            errors += bad

    threads = [
        threading.Thread(target=client, args=(w, i * interval / CLIENTS))
        for i, w in enumerate(jobs)
    ]
    started = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return latencies, time.perf_counter() - started, errors


def run() -> Section:
    n_patients = 48 if QUICK else 320
    with tempfile.TemporaryDirectory() as tmp:
        db = str(Path(tmp) / "bench.sqlite")
        store = open_token_store(parse_store_url(db))
        _, token = store.add("bench.clinician", "clinician")
        store.close()
        port = _port()
        proc = _serve(db, port)
        base = f"http://127.0.0.1:{port}"
        headers = {"Authorization": f"Bearer {token}"}
        try:
            by_patient: dict[str, list[dict[str, Any]]] = {}
            for c in cohort(n_patients, 3):
                c = {k: v for k, v in c.items() if k != "actor"}
                by_patient.setdefault(c["patient_id"], []).append(c)
            patients = list(by_patient.values())

            def commands(
                part: list[list[dict[str, Any]]],
            ) -> list[list[Callable[[httpx.Client], int]]]:
                jobs: list[list[Callable[[httpx.Client], int]]] = [[] for _ in range(CLIENTS)]
                for i, cmds in enumerate(part):
                    for c in cmds:
                        jobs[i % CLIENTS].append(
                            lambda h, c=c: (
                                h.post(base + "/v1/commands", json=c, headers=headers).status_code
                            )
                        )
                return jobs

            half = len(patients) // 2
            paced_cmd = commands(patients[:half])
            flat_cmd = commands(patients[half:])
            count = sum(len(j) for j in paced_cmd)
            per = max(1, count // CLIENTS)
            bare = [[lambda h: h.get(base + "/health").status_code] * per for _ in range(CLIENTS)]
            rows = []
            for label, jobs, rate in (
                ("bare Litestar GET /health, paced", bare, RATE),
                ("POST /v1/commands, paced", paced_cmd, RATE),
                ("bare Litestar GET /health, flat out", bare, None),
                ("POST /v1/commands, flat out", flat_cmd, None),
            ):
                lat, seconds, errors = _drive(jobs, rate)
                p50, p99 = percentiles(lat, 50, 99)
                rows.append(
                    {
                        "workload (16 clients)": label,
                        "requests": len(lat),
                        "errors": errors,
                        "requests/s": len(lat) / seconds,
                        "p50 ms": p50 * 1e3,
                        "p99 ms": p99 * 1e3,
                    }
                )
        finally:
            proc.terminate()
            proc.wait(timeout=15)
    bare_p, cmd_p, bare_f, cmd_f = rows
    notes = [
        f"paced at {RATE:.0f} requests/s: command p99 {cmd_p['p99 ms']:.1f} ms "
        f"(target < 25 ms), {cmd_p['p99 ms'] / bare_p['p99 ms']:.1f}x the bare endpoint's p99",
        f"flat out: commands at {cmd_f['requests/s']:.0f} requests/s = "
        f"{cmd_f['requests/s'] / bare_f['requests/s']:.2f} of the bare endpoint's throughput",
        "one uvicorn worker on the SQLite default; each command is authenticated (token lookup), "
        "validated, replayed from the aggregate cache, decided by the protocol and committed",
    ]
    return Section(
        title="HTTP service (uvicorn, SQLite)",
        method=(
            "`bench/bench_http.py`: a real `cart-course serve` process on a fresh SQLite file; 16 "
            "client threads (httpx) send the demo cohort's commands (each client its own patients, "
            "in order), first paced at 200 requests/s overall, then flat out; the baseline is a bare "
            "Litestar endpoint of the same server in the same run."
        ),
        rows=rows,
        notes=notes,
    )
