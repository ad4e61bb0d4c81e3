"""HTTP keeps the contract: ``If-Match`` does not make a malformed body ``expected_version``
acceptable, a version has one bound in the header and in the body, and every problem carries the
contract's rejection keys (``error``, ``message``) next to RFC 9457's."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from http_support import Stack, screen_body, stack
from litestar.testing import TestClient

from cart_course.contract import MAX_VERSION


@pytest.fixture
def api() -> Iterator[tuple[Stack, TestClient[Any]]]:
    with stack("memory:") as s, TestClient(s.app) as client:
        r = client.post("/v1/commands", json=screen_body("H-1"), headers=s.auth("clinician"))
        assert r.status_code == 201, r.text  # H-1 at version 2
        yield s, client


APHERESIS: dict[str, Any] = {
    "command": "record_apheresis",
    "patient_id": "H-1",
    "occurred_at": "2026-01-08T10:00:00+00:00",
    "payload": {"apheresis_contraindication": False},
}
SHORT = {k: v for k, v in APHERESIS.items() if k not in ("command", "patient_id")}
ROUTES = [
    ("/v1/commands", APHERESIS),
    ("/v1/patients/H-1/commands/record_apheresis", SHORT),
]


@pytest.mark.parametrize(("path", "body"), ROUTES, ids=["envelope", "patient"])
@pytest.mark.parametrize(
    ("expected", "header"),
    [(2.0, '"2"'), (True, '"1"'), (False, '"0"'), ("2", '"2"'), (10**29, '"2"'), (-1, '"2"')],
)
def test_if_match_does_not_hide_a_bad_body_expected_version(
    api: tuple[Stack, TestClient[Any]], path: str, body: dict[str, Any], expected: Any, header: str
) -> None:
    s, client = api
    sent = {**body, "expected_version": expected}
    with_header = client.post(path, json=sent, headers={**s.auth("service"), "If-Match": header})
    without = client.post(path, json=sent, headers=s.auth("service"))
    for r in (with_header, without):
        assert r.status_code == 422, r.text
        assert (r.json()["error"], r.json()["field"]) == ("invalid_command", "expected_version")
    assert s.service.record("H-1").version == 2


@pytest.mark.parametrize(("path", "body"), ROUTES, ids=["envelope", "patient"])
def test_a_matching_body_and_header_record(
    api: tuple[Stack, TestClient[Any]], path: str, body: dict[str, Any]
) -> None:
    s, client = api
    r = client.post(
        path, json={**body, "expected_version": 2}, headers={**s.auth("service"), "If-Match": '"2"'}
    )
    assert r.status_code == 201, r.text


def test_a_version_has_one_bound_in_the_header_and_the_body(
    api: tuple[Stack, TestClient[Any]],
) -> None:
    s, client = api
    too_big = MAX_VERSION + 1  # 19 digits
    header = client.post(
        "/v1/commands", json=APHERESIS, headers={**s.auth("service"), "If-Match": f'"{too_big}"'}
    )
    assert header.status_code == 422 and header.json()["field"] == "If-Match"
    assert str(MAX_VERSION) in header.json()["message"]
    body = client.post(
        "/v1/commands", json={**APHERESIS, "expected_version": too_big}, headers=s.auth("service")
    )
    assert body.status_code == 422 and body.json()["field"] == "expected_version"
    assert str(MAX_VERSION) in body.json()["message"]
    # The largest version is a version, in both: the patient is not at it (412).
    for headers, sent in (
        ({"If-Match": f'"{MAX_VERSION}"'}, APHERESIS),
        ({}, {**APHERESIS, "expected_version": MAX_VERSION}),
    ):
        r = client.post("/v1/commands", json=sent, headers={**s.auth("service"), **headers})
        assert r.status_code == 412, r.text
        assert r.json()["expected_version"] == MAX_VERSION


def test_every_problem_carries_message_as_detail(api: tuple[Stack, TestClient[Any]]) -> None:
    s, client = api
    answers = [
        client.get("/v1/patients"),  # 401
        client.get("/v1/audit/verify", headers=s.auth("monitor")),  # 403
        client.get("/v1/patients/NOPE", headers=s.auth("monitor")),  # 404
        client.post(  # 409
            "/v1/commands",
            json={
                **APHERESIS,
                "command": "give_infusion",
                "payload": {"day": 2, "cells": {"value": 1, "unit": "cells"}},
            },
            headers=s.auth("service"),
        ),
        client.post("/v1/commands", json=APHERESIS, headers={**s.auth("service"), "If-Match": "1"}),
        client.post("/v1/commands", json={"command": "fly"}, headers=s.auth("service")),  # 422
        client.post(
            "/v1/commands",
            content=b"{",
            headers={**s.auth("service"), "Content-Type": "application/json"},
        ),  # 400
    ]
    assert [r.status_code for r in answers] == [401, 403, 404, 409, 412, 422, 400]
    for r in answers:
        problem = r.json()
        assert r.headers["content-type"].startswith("application/problem+json")
        assert problem["message"] == problem["detail"], problem
        assert problem["type"] == f"urn:cart-course:problem:{problem['error']}"
        assert problem["status"] == r.status_code


def test_the_openapi_problem_documents_error_and_message(
    api: tuple[Stack, TestClient[Any]],
) -> None:
    _, client = api
    document = client.get("/schema/openapi.json").json()
    (problem,) = [v for k, v in document["components"]["schemas"].items() if k.endswith("Problem")]
    assert {"type", "title", "status", "detail", "error", "message"} <= set(problem["required"])
    assert problem["properties"]["message"]["type"] == "string"


def test_http_statuses_live_only_in_the_http_layer() -> None:
    """The domain, the stores, the views and the audit raise errors that know nothing of HTTP:
    ``problems.STATUS_OF`` maps each error type to its status."""
    import cart_course
    from cart_course.errors import CartCourseError, MoveRefused, PatientNotFoundError
    from cart_course.http.problems import STATUS_OF, status_of

    package = Path(cart_course.__file__).parent
    outside = [
        str(path.relative_to(package))
        for path in package.rglob("*.py")
        if "http" not in path.relative_to(package).parts and "http_status" in path.read_text()
    ]
    assert outside == []
    assert status_of(MoveRefused("no", state="s", trigger="t", failed=[], allowed=[])) == 409
    assert status_of(PatientNotFoundError("P-1")) == 404
    assert status_of(CartCourseError("plain")) == 400
    assert all(400 <= status < 600 for status in STATUS_OF.values())
