"""Encryption at rest (CART_COURSE_CIPHER_KEY): patient data is not in the SQLite file, and a wrong
or missing key is a clear error, not a traceback."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from integration_helpers import Course

from cart_course.bootstrap import Settings, build_service
from cart_course.errors import CipherKeyError, StoreError
from cart_course.storage import new_cipher_key

SECRET_PATIENT = "ZZ-PATIENT-4711"
SECRET_LOT = "LOT-ZZ-PATIENT-4711"


def _write(db: Path, environ: dict[str, str]) -> None:
    service = build_service(Settings.from_env(str(db), environ))
    try:
        p = Course(service, SECRET_PATIENT)
        p.screen()
        p.apheresis()  # product_id LOT-<patient>
        for _ in range(3):
            p.do(
                "report_toxicity",
                {
                    "toxicity": {
                        "kind": "CRS",
                        "observations": {
                            "temperature": {"value": 38.6, "unit": "C"},
                            "hypotension": False,
                            "oxygen": {"device": "none"},
                        },
                    }
                },
            )
        # Enough events for a snapshot too (snapshots hold the whole record).
        for _ in range(50):
            p.do(
                "report_toxicity",
                {
                    "toxicity": {
                        "kind": "CRS",
                        "observations": {
                            "temperature": {"value": 38.2, "unit": "C"},
                            "hypotension": False,
                            "oxygen": {"device": "none"},
                        },
                    }
                },
                hours=0.1,
            )
    finally:
        service.close()


def _raw_bytes(db: Path) -> bytes:
    return b"".join(p.read_bytes() for p in db.parent.glob(db.name + "*"))


def test_patient_data_is_in_the_file_without_a_key(tmp_path: Path) -> None:
    """The control: the search below can find patient data when it is there."""
    db = tmp_path / "plain.sqlite"
    _write(db, {})
    raw = _raw_bytes(db)
    assert SECRET_PATIENT.encode() in raw
    assert SECRET_LOT.encode() in raw


@pytest.mark.parametrize("compress", ["", "1"])
def test_with_a_key_patient_data_cannot_be_found_in_the_file(tmp_path: Path, compress: str) -> None:
    db = tmp_path / "encrypted.sqlite"
    env = {"CART_COURSE_CIPHER_KEY": new_cipher_key(), "CART_COURSE_COMPRESS": compress}
    _write(db, env)
    raw = _raw_bytes(db)
    for secret in (SECRET_PATIENT, SECRET_LOT, "dr.lee", "informed_consent_signed"):
        assert secret.encode() not in raw, secret
    # With the right key everything reads back (events, snapshot, patients list).
    service = build_service(Settings.from_env(str(db), env))
    try:
        assert service.record(SECRET_PATIENT).state == "apheresed"
        assert service.record(SECRET_PATIENT).version == 56
        assert [r["patient_id"] for r in service.patients()] == [SECRET_PATIENT]
        assert service.app.snapshots is not None
        assert list(service.app.snapshots.get(service.stream_id(SECRET_PATIENT)))
    finally:
        service.close()


@pytest.mark.parametrize("reader_key", ["wrong", "missing"])
def test_a_wrong_or_missing_key_is_a_clear_error(tmp_path: Path, reader_key: str) -> None:
    db = tmp_path / "encrypted.sqlite"
    _write(db, {"CART_COURSE_CIPHER_KEY": new_cipher_key()})
    env = {"CART_COURSE_CIPHER_KEY": new_cipher_key()} if reader_key == "wrong" else {}
    service = build_service(Settings.from_env(str(db), env))
    try:
        for query in (
            lambda: service.record(SECRET_PATIENT),
            lambda: service.events(SECRET_PATIENT),
            lambda: service.patients(),
        ):
            with pytest.raises(CipherKeyError) as info:
                query()
            body = info.value.to_json()
            assert body["error"] == "cipher_key_mismatch"
            assert "CART_COURSE_CIPHER_KEY" in body["message"]
            assert "\n" not in body["message"]
            assert isinstance(info.value, StoreError)
    finally:
        service.close()


def test_a_key_that_is_not_a_key_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(StoreError) as info:
        build_service(
            Settings.from_env(str(tmp_path / "x.sqlite"), {"CART_COURSE_CIPHER_KEY": "not-a-key"})
        )
    assert "CART_COURSE_CIPHER_KEY" in info.value.message
