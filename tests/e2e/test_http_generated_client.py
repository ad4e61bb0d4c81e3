"""A client generated from the OpenAPI document works (issue 21): ``openapi-python-client`` (from
PyPI) generates a package from ``/schema/openapi.json``; through the generated code a patient's
course is recorded (screen, apheresis, D1-D3, a toxicity, an assessment, a decision) against a
real ``cart-course serve`` and the patient is read back. The test fails if the client does not
build, or cannot do this."""

from __future__ import annotations

import importlib
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from server_support import Server, demo_server

from cart_course.demo import cohort

GENERATOR = Path(sys.executable).with_name("openapi-python-client")
#: A patient of the demo cohort with every step the issue names (renamed: a new patient).
SOURCE = "P-0003"
PATIENT = "GEN-0001"
STEPS = (
    "screen",
    "record_apheresis",
    "give_infusion",
    "give_infusion",
    "give_infusion",
    "report_toxicity",
    "assess_response",
    "cease",
)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    with demo_server(tmp_path_factory.mktemp("client")) as s:
        yield s


@pytest.fixture(scope="module")
def client_package(server: Server, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    if not GENERATOR.exists():
        pytest.fail(f"{GENERATOR} is missing: install the dev extra (openapi-python-client)")
    root = tmp_path_factory.mktemp("generated")
    document = root / "openapi.json"
    document.write_bytes(httpx.get(server.url + "/schema/openapi.json", timeout=30).content)
    built = subprocess.run(
        [
            str(GENERATOR),
            "generate",
            "--path",
            str(document),
            "--meta",
            "none",
            "--output-path",
            str(root / "cart_course_client"),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert built.returncode == 0, built.stdout + built.stderr
    sys.path.insert(0, str(root))
    try:
        yield "cart_course_client"
    finally:
        sys.path.remove(str(root))
        for name in [m for m in sys.modules if m.startswith("cart_course_client")]:
            del sys.modules[name]


def _course() -> list[dict[str, Any]]:
    commands = [c for c in cohort(40, 1, sites=True) if c["patient_id"] == SOURCE]  # as --demo
    steps = [c for c in commands if c["command"] in STEPS]
    assert [c["command"] for c in steps] == list(STEPS)
    return steps


def test_a_generated_client_records_a_course_and_reads_it_back(
    server: Server, client_package: str
) -> None:
    package = importlib.import_module(client_package)
    client = package.AuthenticatedClient(base_url=server.url, token=server.tokens["clinician"])
    for step in _course():
        operation = importlib.import_module(
            f"{client_package}.api.commands.record_{step['command']}"
        )
        body_type = operation.sync_detailed.__annotations__["body"]
        if isinstance(body_type, str):
            body_type = getattr(importlib.import_module(f"{client_package}.models"), body_type)
        body = body_type.from_dict(
            {k: v for k, v in step.items() if k not in ("command", "patient_id", "actor")}
        )
        answer = operation.sync_detailed(PATIENT, client=client, body=body)
        assert answer.status_code == 201, (step["command"], answer.content)
        assert answer.parsed.command == step["command"]
    reader = package.AuthenticatedClient(base_url=server.url, token=server.tokens["monitor"])
    get_patient = importlib.import_module(
        f"{client_package}.api.patients.v1_patients_patient_id_get_patient"
    )
    answer = get_patient.sync_detailed(PATIENT, client=reader)
    assert answer.status_code == 200, answer.content
    record = answer.parsed.to_dict() if hasattr(answer.parsed, "to_dict") else answer.parsed
    assert record["patient_id"] == PATIENT and record["state"] == "ceased"
    history = importlib.import_module(
        f"{client_package}.api.patients.v1_patients_patient_id_history_get_history"
    )
    events = history.sync_detailed(PATIENT, client=reader)
    assert events.status_code == 200, events.content
    recorded = [e.to_dict() for e in events.parsed]
    # screen registers the patient (Registered) and records the screening: one event more
    assert len(recorded) == len(STEPS) + 1 and recorded[-1]["trigger"] == "cease"
