"""The OpenAPI document says exactly what the server accepts (issue 21), checked as a client
would check it: schemathesis's own command line (``st run``) against a real ``cart-course serve``,
with **every** check (``--checks all``: no server error, status codes, content types, response
headers and schemas, positive data accepted, negative data rejected, missing headers,
unsupported methods and ``Allow``, authentication ignored or not ...), over **every** operation
of ``/schema/openapi.json`` (the event stream and ``POST /v1/audit/verify`` included: the server
has a signing key), once per role, with a fixed seed and a bounded number of examples. Any
finding fails the test, with schemathesis's report; no role is expected to fail.

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

from cart_course.keys import generate, write_key_pair
from cart_course.tokens import ROLES

HERE = Path(__file__).resolve().parent
ST = str(Path(sys.executable).with_name("st"))
#: The run is the same every time: the seed, the examples per operation (phases: examples,
#: coverage, fuzzing, stateful), one worker.
SEED = 21
MAX_EXAMPLES = 8


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    here = tmp_path_factory.mktemp("schemathesis")
    private, public = write_key_pair(generate("st-key"), here / "keys")
    # a demo cohort and a demo token per role; a signing key: checkpoints to verify
    s = Server(
        str(here / "st.sqlite"),
        free_port(),
        "--demo",
        env={"CART_COURSE_SIGNING_KEY": str(private)},
    )
    s.public_key = public.read_text().strip()  # type: ignore[attr-defined]
    try:
        yield s
    finally:
        s.stop()


#: Every role, the admin last: its run revokes tokens (DELETE /v1/tokens/{id}), the other runs'
#: among them (the auditor's, which each run uses for the checkpoint).
ROLE_ORDER = sorted(ROLES, key=lambda role: role == "admin")


@pytest.mark.timeout(900)
@pytest.mark.parametrize("role", ROLE_ORDER)
def test_every_check_passes_over_every_operation(server: Server, role: str, tmp_path: Path) -> None:
    token = server.tokens[role]
    feed = httpx.get(
        server.url + "/v1/events?limit=1",
        headers={"Authorization": f"Bearer {server.tokens['monitor']}"},
        timeout=30,
    ).json()
    first = feed["events"][0]["recorded_at"]  # the log's first event (a page starts after 0)
    checkpoint = httpx.get(
        server.url + "/v1/audit/checkpoint",
        headers={"Authorization": f"Bearer {server.tokens['auditor']}"},
        timeout=30,
    )
    assert checkpoint.status_code == 200, checkpoint.text
    registered = httpx.get(
        server.url + "/v1/tokens",
        headers={"Authorization": f"Bearer {server.tokens['admin']}"},
        timeout=30,
    ).json()
    signer = next(t for t in registered if t["role"] == role and t["active"])
    env = {
        **os.environ,
        "SCHEMATHESIS_HOOKS": "schemathesis_hooks",
        "PYTHONPATH": os.pathsep.join(filter(None, [str(HERE), os.environ.get("PYTHONPATH")])),
        "CART_COURSE_TEST_LAST_POSITION": str(feed["last_position"]),
        "CART_COURSE_TEST_FIRST_RECORDED": first,
        "CART_COURSE_TEST_CHECKPOINT": checkpoint.text,
        "CART_COURSE_TEST_PUBLIC_KEY": server.public_key,  # type: ignore[attr-defined]
        "CART_COURSE_TEST_ROLE": role,
        "CART_COURSE_TEST_SIGNER_NAME": signer["name"] or "",
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
    ]
    # in a directory of its own: st keeps a cache of its findings (.schemathesis/) where it runs
    run = subprocess.run(
        command, env=env, capture_output=True, text=True, timeout=840, cwd=tmp_path
    )
    report = run.stdout + run.stderr
    assert run.returncode == 0, f"schemathesis found something for role {role}:\n{report[-30000:]}"
    assert "Tested: " in report and "errors" not in report.splitlines()[-1], report[-3000:]
