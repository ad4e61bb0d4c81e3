"""Property-based run of the service against its own OpenAPI document (schemathesis, in-process
ASGI): no input may produce a server error, and every response must match the document."""

from __future__ import annotations

import schemathesis
from http_support import Stack
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from cart_course.http.app import route_table

STACK = Stack("memory:", demo=3)
ROLES = {(m, p.replace(":str", "")): r for m, p, r in route_table(STACK.app)}
schema = schemathesis.openapi.from_asgi("/schema/openapi.json", STACK.app).exclude(
    path="/v1/events/stream"  # an endless stream: covered by test_http
)
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
]


@schema.parametrize()
@settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=list(HealthCheck),
)
def test_api_conforms_to_its_own_schema(case: schemathesis.Case) -> None:
    roles = ROLES.get((case.method.upper(), case.path))
    headers = dict(case.headers or {})
    if roles:
        headers["Authorization"] = f"Bearer {STACK.token[roles[0]]}"
    case.call_and_validate(headers=headers, checks=CHECKS)
