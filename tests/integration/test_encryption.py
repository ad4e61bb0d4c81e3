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


# ----------------------------------------------------------------------------------------------
# A writer whose key (or compression) setting is not the store's is refused before it writes.
# ----------------------------------------------------------------------------------------------

NEW_PATIENT = "ZZ-NEWCOMER-0815"
KEY = new_cipher_key()

#: (the store's settings, the writer's settings, what the error says is wrong)
MISMATCHES = [
    (
        {"CART_COURSE_CIPHER_KEY": KEY},
        {},
        "the store is encrypted but CART_COURSE_CIPHER_KEY is not set",
    ),
    (
        {"CART_COURSE_CIPHER_KEY": KEY},
        {"CART_COURSE_CIPHER_KEY": new_cipher_key()},
        "CART_COURSE_CIPHER_KEY is not the store's key",
    ),
    (
        {"CART_COURSE_CIPHER_KEY": KEY},
        {"CART_COURSE_CIPHER_KEY": KEY, "CART_COURSE_COMPRESS": "1"},
        "CART_COURSE_CIPHER_KEY is not the store's key, or CART_COURSE_COMPRESS differs",
    ),
    (
        {},
        {"CART_COURSE_CIPHER_KEY": KEY},
        "the store is not encrypted but CART_COURSE_CIPHER_KEY is set",
    ),
    (
        {},
        {"CART_COURSE_COMPRESS": "1"},
        "the store is not compressed but CART_COURSE_COMPRESS is set",
    ),
    (
        {"CART_COURSE_COMPRESS": "1"},
        {},
        "the store is compressed but CART_COURSE_COMPRESS is not set",
    ),
]


def _register(url: str, environ: dict[str, str], patient_id: str) -> None:
    service = build_service(Settings.from_env(url, environ))
    try:
        Course(service, patient_id).screen()
    finally:
        service.close()


def _rows(url: str, environ: dict[str, str]) -> int:
    service = build_service(Settings.from_env(url, environ))
    try:
        return int(service.app.recorder.max_notification_id() or 0)
    finally:
        service.close()


def _assert_refused_before_writing(
    url: str, store: dict[str, str], writer: dict[str, str], says: str
) -> None:
    _register(url, store, SECRET_PATIENT)
    before = _rows(url, store)
    with pytest.raises(CipherKeyError) as info:
        _register(url, writer, NEW_PATIENT)  # a new patient: no stored event is read first
    message = info.value.message
    assert says in message, message
    assert "nothing was written" in message and "\n" not in message
    assert _rows(url, store) == before
    # The store still reads with its own settings, and has no trace of the refused patient.
    service = build_service(Settings.from_env(url, store))
    try:
        assert [r["patient_id"] for r in service.patients()] == [SECRET_PATIENT]
    finally:
        service.close()


@pytest.mark.parametrize(("store", "writer", "says"), MISMATCHES)
def test_a_writer_with_other_key_settings_is_refused_before_writing(
    tmp_path: Path, store: dict[str, str], writer: dict[str, str], says: str
) -> None:
    db = tmp_path / "store.sqlite"
    _assert_refused_before_writing(str(db), store, writer, says)
    assert NEW_PATIENT.encode() not in _raw_bytes(db)


@pytest.mark.parametrize(("store", "writer", "says"), [MISMATCHES[0], MISMATCHES[3]])
def test_a_writer_with_other_key_settings_is_refused_on_postgres(
    pg_url: str, store: dict[str, str], writer: dict[str, str], says: str
) -> None:
    _assert_refused_before_writing(pg_url, store, writer, says)


def test_the_same_settings_write_as_before(tmp_path: Path) -> None:
    """The check costs one row read and passes for the store's own settings (and any setting
    on an empty store)."""
    db = str(tmp_path / "store.sqlite")
    env = {"CART_COURSE_CIPHER_KEY": KEY, "CART_COURSE_COMPRESS": "1"}
    _register(db, env, SECRET_PATIENT)
    _register(db, env, NEW_PATIENT)
    assert _rows(db, env) == 4


def test_the_views_of_an_encrypted_store_stay_out_of_the_file(tmp_path: Path) -> None:
    """The monitors' views (board, toxicities, deviations) hold patient ids, states and texts as
    plain columns: for an encrypted store they live in the process's memory, rebuilt from the
    encrypted log, never next to the events on disk."""
    from cart_course.views import Views

    db = tmp_path / "encrypted.sqlite"
    env = {"CART_COURSE_CIPHER_KEY": new_cipher_key()}
    _write(db, env)
    settings = Settings.from_env(str(db), env)
    service = build_service(settings)
    try:
        views = Views(service.log, settings.store)
        try:
            assert views.in_memory
            views.catch_up()
            assert [r[0] for r in views.dump()["view_board"]] == [SECRET_PATIENT]
        finally:
            views.close()
    finally:
        service.close()
    raw = _raw_bytes(db)
    assert SECRET_PATIENT.encode() not in raw
    assert b"view_board" not in raw  # not even the tables
