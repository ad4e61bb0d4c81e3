"""The signed ledger over HTTP: the checkpoint for archiving, verification against one held."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from litestar.testing import TestClient

from cart_course.bootstrap import Settings, build_service
from cart_course.contract import parse_command
from cart_course.course import stream_id
from cart_course.demo import cohort
from cart_course.http import create_app
from cart_course.keys import generate, write_key_pair
from cart_course.storage import parse_store_url
from cart_course.tokens import open_token_store


def test_checkpoint_is_served_and_a_held_one_verifies_over_http(tmp_path: Path) -> None:
    url = str(tmp_path / "h.sqlite")
    private, public = write_key_pair(generate("http-key"), tmp_path / "keys")
    store = parse_store_url(url)
    service = build_service(Settings(store=store, signing_key=str(private)))
    tokens = open_token_store(store)
    try:
        service.execute_batch([parse_command(c) for c in cohort(4, seed=2)])
        _, monitor = tokens.add("mon", "monitor")
        _, auditor = tokens.add("aud", "auditor")
        app = create_app(service, tokens, store=store)
        with TestClient(app) as client:
            r = client.get("/v1/audit/checkpoint", headers={"Authorization": f"Bearer {monitor}"})
            assert r.status_code == 200, r.text
            assert r.headers["content-type"].startswith("text/plain")
            held = r.text
            assert held.startswith("cart-course\n") and "\n\u2014 http-key " in held
            body = {"checkpoint": held, "public_keys": [public.read_text().strip()]}
            a = {"Authorization": f"Bearer {auditor}"}
            ok = client.post("/v1/audit/verify", json=body, headers=a).json()
            assert ok["ok"] is True, ok
            assert ok["ledger"]["checkpoint"]["signed_by"].startswith("http-key ")
            with sqlite3.connect(url) as conn:
                conn.execute(
                    "UPDATE stored_events SET state = CAST(replace(CAST(state AS TEXT), "
                    "'clinician', 'clinicianX') AS BLOB) WHERE originator_id = ? "
                    "AND originator_version = 2",
                    (stream_id("P-0002").hex,),
                )
            bad = client.post("/v1/audit/verify", json=body, headers=a).json()
            assert bad["ok"] is False
            assert any(
                p["patient_id"] == "P-0002" and p["version"] == 2 and p["check"] == "checkpoint"
                for p in bad["ledger"]["problems"]
            ), bad["ledger"]
            lines = held.split("\n")
            lines[1] = str(int(lines[1]) + 1)  # a bigger tree than was signed
            forged = {"checkpoint": "\n".join(lines), "public_keys": body["public_keys"]}
            assert client.post("/v1/audit/verify", json=forged, headers=a).status_code == 422
            r = client.post(
                "/v1/audit/verify", json=body, headers={"Authorization": f"Bearer {monitor}"}
            )
            assert r.status_code == 403
    finally:
        service.close()
        tokens.close()


def test_without_a_key_nothing_is_signed(tmp_path: Path) -> None:
    store = parse_store_url(str(tmp_path / "n.sqlite"))
    service = build_service(Settings(store=store))
    tokens = open_token_store(store)
    try:
        service.execute_batch([parse_command(c) for c in cohort(1, seed=2)])
        _, auditor = tokens.add("aud", "auditor")
        with TestClient(create_app(service, tokens, store=store)) as client:
            r = client.get("/v1/audit/checkpoint", headers={"Authorization": f"Bearer {auditor}"})
            assert r.status_code == 404
            assert "nothing is signed" in r.json()["detail"]
    finally:
        service.close()
        tokens.close()
