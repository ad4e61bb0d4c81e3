"""Keys and checkpoints in the signed-note formats, against the format's own published example."""

from __future__ import annotations

import base64
import datetime as dt
from pathlib import Path

import pytest

from cart_course.keys import (
    KeyFormatError,
    SigningKey,
    generate,
    parse_public_keys,
    read_signing_key,
)
from cart_course.ledger.checkpoint import CheckpointFormatError, new_checkpoint, parse_checkpoint
from cart_course.ledger.merkle import EMPTY_ROOT

# The example of golang.org/x/mod/sumdb/note (the signed-note format C2SP specifies).
GO_SIGNER = "PRIVATE+KEY+PeterNeumann+c74f20a3+AYEKFALVFGyNhPJEMzD1QIDr+Y7hfZx09iUvxdXHKDFz"
GO_VERIFIER = "PeterNeumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW"
GO_TEXT = (
    "If you think cryptography is the answer to your problem,\n"
    "then you don't know what your problem is.\n"
)
GO_SIGNATURE = (
    "x08go/ZJkuBS9UG/SffcvIAQxVBtiFupLLr8pAcElZInNIuGUgYN1FFYC2pZSNXgKvqfqdngotpRZb6KE6RyyBwJnAM="
)


def test_the_signed_note_example_signs_and_verifies_byte_for_byte(tmp_path: Path) -> None:
    path = tmp_path / "go.key"
    path.write_text(GO_SIGNER + "\n")
    key = read_signing_key(path)
    assert key.public_key.line() == GO_VERIFIER
    assert key.line() == GO_SIGNER
    signed = base64.b64encode(key.id + key.sign(GO_TEXT.encode())).decode()
    assert signed == GO_SIGNATURE
    (public,) = parse_public_keys(GO_VERIFIER, "verifier")
    raw = base64.b64decode(GO_SIGNATURE)
    assert raw[:4] == public.id and public.verify(GO_TEXT.encode(), raw[4:])
    assert not public.verify(GO_TEXT.replace("answer", "question").encode(), raw[4:])


@pytest.mark.parametrize(
    "line",
    [
        "PeterNeumann+c74f20a4+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW",  # wrong key id
        "PeterNeumann+c74f20a3+Apc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW",  # not 0x01 + 32
        "PeterNeumann+c74f20a3",
        "Peter Neumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW",
    ],
)
def test_a_public_key_that_is_not_one_is_refused(line: str) -> None:
    with pytest.raises(KeyFormatError):
        parse_public_keys(line, "given")


def test_checkpoint_round_trip_and_rotation() -> None:
    old, new = generate("site-a"), generate("site-b")
    at = dt.datetime(2026, 12, 7, 1, 0, tzinfo=dt.UTC)
    checkpoint = new_checkpoint("cart-course", 0, EMPTY_ROOT, 0, at).signed(old)
    text = checkpoint.text()
    assert text.splitlines()[:5] == [
        "cart-course",
        "0",
        "47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU=",
        "cart-course-time 2026-12-07T01:00:00.000000Z",
        "cart-course-notification 0",
    ]
    parsed = parse_checkpoint(text)
    assert parsed == checkpoint
    assert parsed.verified_by([new.public_key]) is None
    assert parsed.verified_by([new.public_key, old.public_key]) == old.public_key
    both = parse_checkpoint(checkpoint.signed(new).text())
    assert both.verified_by([new.public_key]) == new.public_key
    forged = text.replace("\n0\n", "\n1\n", 1)
    assert parse_checkpoint(forged).verified_by([old.public_key]) is None


@pytest.mark.parametrize(
    "text",
    [
        "",
        "cart-course\n3\n",
        "cart-course\nthree\nAAAA\n\n",
        "cart-course\n3\n47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU=\n\n\u2014 k AAAA\n",
    ],
)
def test_what_is_not_a_checkpoint_is_refused(text: str) -> None:
    with pytest.raises(CheckpointFormatError):
        parse_checkpoint(text)


def test_a_generated_key_reads_back(tmp_path: Path) -> None:
    key = generate()
    path = tmp_path / "k.key"
    path.write_text(key.line())
    assert read_signing_key(path) == SigningKey(key.name, key.seed)
