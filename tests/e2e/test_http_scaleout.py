"""Scale-out: two ``cart-course serve`` processes on one PostgreSQL, writing the same patients at
once through HTTP, lose nothing and record nothing twice."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
from http_support import free_port
from server_support import Server

from cart_course.demo import CLINICIAN, cohort
from cart_course.service import CourseService
from cart_course.storage import open_application, parse_store_url
from cart_course.tokens import open_token_store

PATIENTS = 12


@pytest.mark.slow
def test_two_servers_one_postgres_lose_and_double_nothing(pg_url: str) -> None:
    store = open_token_store(parse_store_url(pg_url))
    _, token = store.add("dr.feed", "clinician", name=CLINICIAN["name"])  # the cohort signs
    store.close()
    commands = list(cohort(PATIENTS, 7))
    servers = [Server(pg_url, free_port()), Server(pg_url, free_port())]
    try:
        headers = {"Authorization": f"Bearer {token}"}

        def send(i_cmd: tuple[int, dict[str, object]]) -> list[int]:
            # every command goes to BOTH servers at once (a retrying client); per patient in order
            _, cmd = i_cmd
            body = {k: v for k, v in cmd.items() if k != "actor"}
            with ThreadPoolExecutor(2) as both:
                replies = list(
                    both.map(
                        lambda s: httpx.post(
                            s.url + "/v1/commands", json=body, headers=headers, timeout=60
                        ),
                        servers,
                    )
                )
            return [r.status_code for r in replies]

        by_patient: dict[str, list[dict[str, object]]] = {}
        for c in commands:
            by_patient.setdefault(str(c["patient_id"]), []).append(c)

        def run_patient(cmds: list[dict[str, object]]) -> list[list[int]]:
            return [send((0, c)) for c in cmds]

        with ThreadPoolExecutor(8) as pool:
            results = [s for per in pool.map(run_patient, by_patient.values()) for s in per]
        for pair in results:  # one server records it, the other answers "already recorded"
            assert sorted(pair) == [200, 201], pair
        created = sum(p.count(201) for p in results)
    finally:
        for s in servers:
            s.stop()
    service = CourseService(open_application(parse_store_url(pg_url)))
    try:
        expected = CourseService(open_application(parse_store_url("memory:")))
        from cart_course.contract import parse_command

        expected.execute_batch([parse_command(c) for c in commands])
        for pid in by_patient:
            got = [
                (e.originator_version, type(e).__name__, getattr(e, "idempotency_key", None))
                for e in service.events(pid)
            ]
            want = [
                (e.originator_version, type(e).__name__, getattr(e, "idempotency_key", None))
                for e in expected.events(pid)
            ]
            assert got == want, pid
        keys = [
            getattr(e, "idempotency_key", None)
            for pid in by_patient
            for e in service.events(pid)
            if getattr(e, "idempotency_key", None)
        ]
        assert len(keys) == len(set(keys)) == len(commands)
        assert created == len(commands)
    finally:
        service.close()
