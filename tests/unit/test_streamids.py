"""Keyed stream ids and pseudonyms (``cart_course.streamids``): what a reader without the key
cannot recompute, and what the operator with it always gets again."""

from __future__ import annotations

import uuid

import pytest
from hypothesis import given
from hypothesis import strategies as st

from cart_course.course import stream_id as uuid5
from cart_course.storage import new_cipher_key
from cart_course.streamids import (
    LABEL_ACCESS,
    LABEL_MARKER,
    LABEL_STREAM,
    SCHEME_KEYED,
    SCHEME_UUID5,
    Marker,
    StreamIds,
    derive_key,
    keyed_uuid,
    pseudonymise_request,
)

KEY = new_cipher_key()
PATIENT_IDS = st.from_regex(r"[A-Za-z0-9._:-]{1,64}", fullmatch=True)


@given(PATIENT_IDS)
def test_a_keyed_stream_id_is_stable_and_is_not_the_public_one(patient_id: str) -> None:
    ids = StreamIds(SCHEME_KEYED, cipher_key=KEY)
    sid = ids.stream_id(patient_id)
    assert sid == StreamIds(SCHEME_KEYED, cipher_key=KEY).stream_id(patient_id)
    assert sid != uuid5(patient_id)
    assert sid.version == 8 and sid.variant == uuid.RFC_4122


@given(PATIENT_IDS, PATIENT_IDS)
def test_two_patients_two_streams(a: str, b: str) -> None:
    ids = StreamIds(SCHEME_KEYED, cipher_key=KEY)
    assert (ids.stream_id(a) == ids.stream_id(b)) == (a == b)


def test_another_key_gives_other_ids_and_pseudonyms() -> None:
    one, two = (
        StreamIds(SCHEME_KEYED, cipher_key=KEY),
        StreamIds(SCHEME_KEYED, cipher_key=new_cipher_key()),
    )
    assert one.stream_id("P-0001") != two.stream_id("P-0001")
    assert one.pseudonym("P-0001") != two.pseudonym("P-0001")


def test_each_use_has_its_own_key_none_of_them_the_cipher_key() -> None:
    keys = {derive_key(KEY, label) for label in (LABEL_STREAM, LABEL_ACCESS, LABEL_MARKER)}
    assert len(keys) == 3 and all(len(k) == 32 for k in keys)
    import base64

    assert base64.b64decode(KEY) not in keys
    # the stream id is the HMAC under the stream key, not under the access or marker key
    sid = StreamIds(SCHEME_KEYED, cipher_key=KEY).stream_id("P-0001")
    assert sid == keyed_uuid(derive_key(KEY, LABEL_STREAM), "P-0001")
    assert sid != keyed_uuid(derive_key(KEY, LABEL_ACCESS), "P-0001")


def test_a_plain_store_keeps_uuid5_and_logs_patient_ids_as_they_are() -> None:
    ids = StreamIds(SCHEME_UUID5)
    assert ids.stream_id("P-0001") == uuid5("P-0001")
    assert ids.pseudonym("P-0001") == "P-0001"


def test_an_encrypted_store_of_uuid5_ids_pseudonymises_its_access_log() -> None:
    """Not migrated yet: uuid5 stream ids, but the access log already names no patient."""
    ids = StreamIds(SCHEME_UUID5, cipher_key=KEY)
    assert ids.stream_id("P-0001") == uuid5("P-0001")
    assert ids.pseudonym("P-0001").startswith("pid-") and "P-0001" not in ids.pseudonym("P-0001")


@pytest.mark.parametrize(
    ("path", "query", "want_path", "want_query"),
    [
        ("/v1/patients/P-0001/history", "", "/v1/patients/{p}/history", ""),
        ("/v1/patients/P-0001", "", "/v1/patients/{p}", ""),
        (
            "/v1/exports/timeline.csv",
            "patient_id=P-0001",
            "/v1/exports/timeline.csv",
            "patient_id={p}",
        ),
        ("/v1/events", "after=3&limit=10", "/v1/events", "after=3&limit=10"),
        ("/v1/audit/verify", "", "/v1/audit/verify", ""),
        ("/v1/audit/product/LOT-P-0001", "", "/v1/audit/product/prd-{lot}", ""),
    ],
)
def test_logged_requests_name_pseudonyms(
    path: str, query: str, want_path: str, want_query: str
) -> None:
    ids = StreamIds(SCHEME_KEYED, cipher_key=KEY)
    p = ids.pseudonym("P-0001")
    lot = ids.pseudonym("LOT-P-0001").removeprefix("pid-")
    got = pseudonymise_request(path, query, ids.pseudonym)
    assert got == (want_path.format(p=p, lot=lot), want_query.format(p=p))
    assert "P-0001" not in got[0] + got[1]


@pytest.mark.parametrize(
    "query",
    [
        "patient%5Fid=P-0001",  # the server decodes the key: the handler reads patient_id
        "patient%5fid=P-0001&after=2",
        "%70atient_id=P-0001",
        "patient_id=P%2D0001",
    ],
)
def test_a_percent_encoded_query_key_is_pseudonymised_too(query: str) -> None:
    """An auditor's client (or one avoiding the log) may percent-encode the query: the server
    decodes keys and values before the handler reads them, so the log must too (issue 14
    item 7: the access log names no patient)."""
    ids = StreamIds(SCHEME_KEYED, cipher_key=KEY)
    logged = pseudonymise_request("/v1/exports/timeline.csv", query, ids.pseudonym)[1]
    assert "P-0001" not in logged and "P%2D0001" not in logged, logged
    assert ids.pseudonym("P-0001") in logged


def test_the_marker_tag_covers_every_field() -> None:
    key = derive_key(KEY, LABEL_MARKER)
    marker = Marker(scheme=SCHEME_KEYED, migrated_up_to=59, migrated_at="t", migrated_streams=6)
    parsed, tag = Marker.parse(marker.text(key))
    assert parsed == marker and tag == marker.tag(key)
    for changed in (
        Marker(scheme=SCHEME_UUID5, migrated_up_to=59, migrated_at="t", migrated_streams=6),
        Marker(scheme=SCHEME_KEYED, migrated_up_to=60, migrated_at="t", migrated_streams=6),
        Marker(scheme=SCHEME_KEYED),
    ):
        assert changed.tag(key) != tag
    assert marker.tag(derive_key(new_cipher_key(), LABEL_MARKER)) != tag
