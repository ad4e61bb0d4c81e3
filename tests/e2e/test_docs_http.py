"""docs/http.md is true: every request body of its curl examples (each ``-d '...'``) is sent, in
the page's order, to the real application, and answers what the page shows (the status, and the
body but for what a server generates: a token's id, the token, times)."""

from __future__ import annotations

import json
import re
import shlex
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from http_support import Stack, stack
from litestar.testing import TestClient

from cart_course.demo import ensure_demo_sites

DOC = Path(__file__).resolve().parents[2] / "docs" / "http.md"
SERVER = "http://127.0.0.1:8000"
#: What the server generates: not the same on two runs.
GENERATED = frozenset({"id", "token", "created_at", "created_by", "revoked_at", "revoked_by"})


class Example:
    def __init__(self, line: str, output: list[str]) -> None:
        self.line = line
        self.output = output
        args = shlex.split(line.removeprefix("$ "))
        assert args[0] == "curl", line
        self.method = "GET"
        self.headers: dict[str, str] = {}
        self.body: str | None = None
        self.status_only = False
        self.url = ""
        rest = iter(args[1:])
        for arg in rest:
            if arg == "-X":
                self.method = next(rest)
            elif arg == "-H":
                name, _, value = next(rest).partition(":")
                self.headers[name.strip()] = value.strip()
            elif arg == "-d":
                self.body = next(rest)
            elif arg == "-w":
                self.status_only = next(rest) == "%{http_code}\\n"
            elif arg == "-o":
                next(rest)
            elif arg.startswith(SERVER):
                self.url = arg.removeprefix(SERVER)
            else:
                assert arg in ("-s", "-N"), (arg, line)
        if self.body is not None and self.method == "GET":
            self.method = "POST"


def examples() -> list[Example]:
    """Every curl example with a request body, with the lines of output the page shows."""
    text = DOC.read_text(encoding="utf-8")
    found: list[Example] = []
    for block in re.findall(r"```\n(.*?)```", text, flags=re.DOTALL):
        lines = block.splitlines()
        for i, line in enumerate(lines):
            if not line.startswith("$ curl"):
                continue
            output = []
            for after in lines[i + 1 :]:
                if not after.strip() or after.startswith("$ "):
                    break
                output.append(after)
            if " -d " in line:
                found.append(Example(line, output))
    return found


EXAMPLES = examples()


def _without_generated(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _without_generated(v) for k, v in value.items() if k not in GENERATED}
    if isinstance(value, list):
        return [_without_generated(v) for v in value]
    return value


@pytest.fixture(scope="module")
def api() -> Iterator[tuple[Stack, TestClient[Any]]]:
    with stack("memory:") as s, TestClient(s.app) as client:
        ensure_demo_sites(s.tokens.sites)  # as `cart-course demo` defines them (issue 17)
        yield s, client


def test_the_page_has_request_bodies_to_check() -> None:
    assert len(EXAMPLES) >= 6
    assert all(e.body is not None and e.output for e in EXAMPLES)


def test_every_request_body_is_json_the_server_answers_as_shown(
    api: tuple[Stack, TestClient[Any]],
) -> None:
    s, client = api
    # The page's demo tokens are this server's tokens of the same roles.
    tokens = {f"demo-{role}-token": token for role, token in s.token.items()}
    for example in EXAMPLES:
        assert example.body is not None
        assert isinstance(json.loads(example.body), dict), example.line
        headers = dict(example.headers)
        scheme, _, token = headers.get("Authorization", "").partition(" ")
        if token:
            headers["Authorization"] = f"{scheme} {tokens[token]}"
        r = client.request(
            example.method, example.url, content=example.body.encode(), headers=headers
        )
        if example.status_only:
            assert example.output == [str(r.status_code)], (example.line, r.text)
            continue
        (shown,) = example.output
        documented = json.loads(shown)
        answer = r.json()
        assert _without_generated(answer) == _without_generated(documented), example.line
        status = documented.get("status")
        if isinstance(status, int):  # a problem: the status is in the body
            assert r.status_code == status, example.line
        else:
            assert r.status_code in (200, 201), (example.line, r.text)
