"""HTTP: command latency and throughput through a real uvicorn server on SQLite, 16 clients.

Baseline in the same run, on the same server: a bare Litestar endpoint (``GET /health``: no
auth, no store). Two phases: paced at 200 requests/s overall (latency p50/p99), then closed-loop
saturation (throughput).

The load generator runs in its own process (so it does not share the server's interpreter, nor
a GIL with it): one asyncio loop, 16 keep-alive connections, requests written as raw HTTP/1.1
bytes (a wrk-style client: a few tens of microseconds of CPU per request, so the figures are the
server's). The CPU time of the server process and of the load generator is reported per request.
"""

from __future__ import annotations

import asyncio
import json
import multiprocessing
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

from cart_course.demo import CLINICIAN, cohort
from cart_course.storage import parse_store_url
from cart_course.tokens import open_token_store

from .harness import QUICK, Section, percentiles

CLIENTS = 16
RATE = 200.0
HOST = "127.0.0.1"

#: One client's work: raw HTTP/1.1 requests, sent in order on one keep-alive connection.
Job = list[bytes]


def _port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        port: int = s.getsockname()[1]
        return port


def _serve(db: str, port: int) -> subprocess.Popen[bytes]:
    cli = str(Path(sys.executable).with_name("cart-course"))
    proc = subprocess.Popen(
        [cli, "serve", "--host", HOST, "--port", str(port)],
        env={**os.environ, "CART_COURSE_DB": db},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    for _ in range(300):
        try:
            if httpx.get(f"http://{HOST}:{port}/ready", timeout=1).status_code == 200:
                return proc
        except httpx.HTTPError:
            time.sleep(0.1)
    proc.kill()
    raise RuntimeError("server did not start")


def _cpu_seconds(pid: int) -> float | None:
    """User + system CPU time of a process (Linux ``/proc``; None elsewhere)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _request(method: str, path: str, headers: dict[str, str], body: Any = None) -> bytes:
    data = b"" if body is None else json.dumps(body).encode()
    lines = [f"{method} {path} HTTP/1.1", f"Host: {HOST}", f"Content-Length: {len(data)}"]
    if body is not None:
        lines.append("Content-Type: application/json")
    lines += [f"{k}: {v}" for k, v in headers.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + data


async def _client(
    port: int, job: Job, offset: float, interval: float, start: float, out: dict[str, Any]
) -> None:
    reader, writer = await asyncio.open_connection(HOST, port)
    try:
        for i, raw in enumerate(job):
            due = start + offset + i * interval
            if interval:
                delay = due - time.perf_counter()
                if delay > 0:
                    await asyncio.sleep(delay)
            sent = time.perf_counter()
            writer.write(raw)
            head = await reader.readuntil(b"\r\n\r\n")
            status = int(head[9:12])
            length = 0
            for line in head.split(b"\r\n")[1:]:
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length":
                    length = int(value)
            body = await reader.readexactly(length)
            # paced: from when the request was due (a late send counts against the server)
            out["latencies"].append(time.perf_counter() - (min(due, sent) if interval else sent))
            if status >= 300:
                out["errors"] += 1
                out.setdefault("first_error", f"{status} {body[:300]!r}")
    finally:
        writer.close()


def _load(port: int, jobs: list[Job], rate: float | None) -> dict[str, Any]:
    """Run in the load-generator process: every client's job, paced or flat out."""
    out: dict[str, Any] = {"latencies": [], "errors": 0}
    interval = CLIENTS / rate if rate else 0.0

    async def main() -> None:
        start = time.perf_counter() + 0.05
        await asyncio.gather(
            *(
                _client(port, job, i * interval / CLIENTS, interval, start, out)
                for i, job in enumerate(jobs)
            )
        )

    cpu = time.process_time()
    started = time.perf_counter()
    asyncio.run(main())
    out["seconds"] = time.perf_counter() - started
    out["client_cpu"] = time.process_time() - cpu
    return out


def _load_entry(port: int, jobs: list[Job], rate: float | None, conn: Any) -> None:
    conn.send(_load(port, jobs, rate))
    conn.close()


def _drive(pid: int, port: int, jobs: list[Job], rate: float | None) -> dict[str, Any]:
    ctx = multiprocessing.get_context("spawn")
    here, there = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=_load_entry, args=(port, jobs, rate, there))
    proc.start()
    before = _cpu_seconds(pid)
    result: dict[str, Any] = here.recv()
    after = _cpu_seconds(pid)
    proc.join()
    result["server_cpu"] = None if before is None or after is None else after - before
    return result


def _balanced(patients: list[list[bytes]]) -> list[Job]:
    """Each patient's commands stay in order on one client; clients get near-equal counts."""
    jobs: list[Job] = [[] for _ in range(CLIENTS)]
    for cmds in sorted(patients, key=len, reverse=True):
        min(jobs, key=len).extend(cmds)
    return jobs


def run() -> Section:
    n_patients = 64 if QUICK else 480
    with tempfile.TemporaryDirectory() as tmp:
        db = str(Path(tmp) / "bench.sqlite")
        store = open_token_store(parse_store_url(db))
        _, token = store.add("bench.clinician", "clinician", name=CLINICIAN["name"])  # signs
        store.close()
        port = _port()
        proc = _serve(db, port)
        auth = {"Authorization": f"Bearer {token}"}
        try:
            by_patient: dict[str, list[bytes]] = {}
            for c in cohort(n_patients, 3):
                c = {k: v for k, v in c.items() if k != "actor"}
                raw = _request("POST", "/v1/commands", auth, c)
                by_patient.setdefault(c["patient_id"], []).append(raw)
            patients = list(by_patient.values())
            # Three paced rounds on fresh patients (a single stall decides a p99 of ~1300
            # requests, so the median round is reported), then one flat-out round.
            quarter = len(patients) // 4
            paced_rounds = [_balanced(patients[i * quarter : (i + 1) * quarter]) for i in range(3)]
            flat_cmd = _balanced(patients[3 * quarter :])
            per = max(1, sum(len(j) for j in paced_rounds[0]) // CLIENTS)
            bare = [[_request("GET", "/health", {})] * per for _ in range(CLIENTS)]
            rows = []
            for label, jobs, rate in (
                ("bare Litestar GET /health, paced", bare, RATE),
                ("POST /v1/commands, paced (round 1)", paced_rounds[0], RATE),
                ("POST /v1/commands, paced (round 2)", paced_rounds[1], RATE),
                ("POST /v1/commands, paced (round 3)", paced_rounds[2], RATE),
                ("bare Litestar GET /health, flat out", bare, None),
                ("POST /v1/commands, flat out", flat_cmd, None),
            ):
                r = _drive(proc.pid, port, jobs, rate)
                lat = r["latencies"]
                if r["errors"]:
                    print(f"bench http: {label}: {r['first_error']}", file=sys.stderr)
                p50, p99 = percentiles(lat, 50, 99)
                server_cpu = r["server_cpu"]
                rows.append(
                    {
                        "workload (16 clients)": label,
                        "requests": len(lat),
                        "errors": r["errors"],
                        "requests/s": len(lat) / r["seconds"],
                        "p50 ms": p50 * 1e3,
                        "p99 ms": p99 * 1e3,
                        "server CPU ms/request": (
                            None if server_cpu is None else server_cpu / len(lat) * 1e3
                        ),
                        "client CPU ms/request": r["client_cpu"] / len(lat) * 1e3,
                    }
                )
        finally:
            proc.terminate()
            proc.wait(timeout=15)
    bare_p, r1, r2, r3, bare_f, cmd_f = rows
    cmd_p = sorted((r1, r2, r3), key=lambda r: r["p99 ms"])[1]
    notes = [
        f"paced at {RATE:.0f} requests/s, median of three rounds: command p50 "
        f"{cmd_p['p50 ms']:.1f} ms, p99 {cmd_p['p99 ms']:.1f} ms (target < 25 ms; rounds: "
        + ", ".join(f"{r['p99 ms']:.1f}" for r in (r1, r2, r3))
        + f" ms); the bare endpoint's p99 {bare_p['p99 ms']:.1f} ms in the same run",
        f"flat out: commands at {cmd_f['requests/s']:.0f} requests/s = "
        f"{cmd_f['requests/s'] / bare_f['requests/s']:.2f} of the bare endpoint's throughput "
        f"({bare_f['requests/s']:.0f} requests/s)",
        "one uvicorn worker on the SQLite default (WAL, one transaction per command); each "
        "command is authenticated (bearer token), validated, replayed from the aggregate cache, "
        "decided by the protocol and committed before it is answered",
        "paced latency is measured from when a request was due, so a late send counts against "
        "the server; flat out, from when it was sent",
    ]
    return Section(
        title="HTTP service (uvicorn, SQLite)",
        method=(
            "`bench/bench_http.py`: a real `cart-course serve` process on a fresh SQLite file; a "
            "separate load-generator process (one asyncio loop, 16 keep-alive connections, raw "
            "HTTP/1.1) sends the demo cohort's commands (each connection its own patients, in "
            "order), first paced at 200 requests/s overall, then flat out; the baseline is a bare "
            "Litestar endpoint of the same server in the same run. CPU per request is the server "
            "process's and the load generator's own (user + system)."
        ),
        rows=rows,
        notes=notes,
    )
