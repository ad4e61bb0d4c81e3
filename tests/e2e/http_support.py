"""Shared helpers for the HTTP tests: an app over a real store, with tokens for every role."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from contextlib import contextmanager

from litestar import Litestar

from cart_course.contract import parse_command
from cart_course.demo import cohort
from cart_course.http import create_app
from cart_course.service import CourseService
from cart_course.storage import open_application, parse_store_url
from cart_course.tokens import ROLES, TokenStore, open_token_store


class Stack:
    def __init__(self, url: str, demo: int = 0) -> None:
        settings = parse_store_url(url)
        self.service = CourseService(open_application(settings))
        self.tokens: TokenStore = open_token_store(settings)
        self.token: dict[str, str] = {}
        for role in ROLES:
            _, self.token[role] = self.tokens.add(f"{role}.tester", role)
        if demo:
            self.service.execute_batch([parse_command(c) for c in cohort(demo, 1)])
        self.app: Litestar = create_app(self.service, self.tokens, store=settings)

    def auth(self, role: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token[role]}"}

    def close(self) -> None:
        self.service.close()
        self.tokens.close()


@contextmanager
def stack(url: str = "memory:", demo: int = 0) -> Iterator[Stack]:
    s = Stack(url, demo)
    try:
        yield s
    finally:
        s.close()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def screen_body(patient_id: str, **extra: object) -> dict[str, object]:
    """A valid screening of an eligible patient (taken from the demo cohort's first patient)."""
    first = next(c for c in cohort(1, 1) if c["command"] == "screen")
    body = {k: v for k, v in first.items() if k not in ("actor", "idempotency_key")}
    body["patient_id"] = patient_id
    body.update(extra)
    return body


def crs_report() -> dict[str, object]:
    """A ``report_toxicity`` payload: a grade 1 CRS (fever only)."""
    return {
        "toxicity": {
            "kind": "CRS",
            "observations": {
                "temperature": {"value": 38.4, "unit": "C"},
                "hypotension": False,
                "oxygen": {"device": "none"},
            },
        }
    }
