"""``/ready`` is not ready when the store's events do not read with the server's cipher key
(issue 14 item 7): a load balancer must not send traffic to a server that cannot read the log."""

from __future__ import annotations

from pathlib import Path

from litestar.testing import TestClient

from cart_course.bootstrap import Settings, build_service
from cart_course.contract import parse_command
from cart_course.demo import cohort
from cart_course.http import create_app
from cart_course.storage import new_cipher_key
from cart_course.tokens import open_token_store


def test_ready_only_with_the_key_the_store_was_written_with(tmp_path: Path) -> None:
    db = str(tmp_path / "enc.sqlite")
    right, wrong = new_cipher_key(), new_cipher_key()
    settings = Settings.for_store(db, cipher_key=right)
    service = build_service(settings)
    service.execute_batch([parse_command(c) for c in cohort(1, 1)])
    service.close()
    for key, status in ((wrong, 503), (right, 200), (None, 503)):
        settings = Settings.for_store(db, cipher_key=key)
        service = build_service(settings)
        tokens = open_token_store(settings.store)
        try:
            app = create_app(service, tokens, store=settings.store)
            with TestClient(app) as client:
                r = client.get("/ready")
                assert r.status_code == status, (key is right, r.text)
                if status == 503:
                    assert "cipher key" in r.json()["detail"]
        finally:
            service.close()
            tokens.close()
