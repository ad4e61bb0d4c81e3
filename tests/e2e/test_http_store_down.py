"""The PostgreSQL server going away under a running HTTP service: requests are answered 503
(the store does not answer), never 500, and the service recovers when the server is back."""

from __future__ import annotations

import secrets
import sys
from pathlib import Path

from litestar.testing import TestClient

sys.path.insert(0, str(Path(__file__).resolve().parent))
from http_support import free_port, stack


def test_a_token_store_that_does_not_answer_is_503_not_500(pg_url: str) -> None:
    with stack(pg_url) as s:
        store = s.tokens
        live_url = store._url  # type: ignore[attr-defined]
        with TestClient(app=s.app) as client:
            assert client.get("/v1/patients", headers=s.auth("monitor")).status_code == 200
            # the server goes away: nothing listens where the token store connects now
            store._url = f"postgresql://cart:secret@127.0.0.1:{free_port()}/gone"  # type: ignore[attr-defined]
            store._conn.close()  # type: ignore[attr-defined]
            for path in ("/v1/patients", "/v1/board"):
                answer = client.get(
                    path, headers={"Authorization": f"Bearer {secrets.token_urlsafe(16)}"}
                )
                assert answer.status_code == 503, answer.text
                assert answer.json()["error"] == "store_error"
                assert "the token store cannot answer" in answer.json()["message"]
            # back again: the next request connects anew
            store._url = live_url  # type: ignore[attr-defined]
            assert client.get("/v1/patients", headers=s.auth("monitor")).status_code == 200
