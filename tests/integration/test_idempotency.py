"""Idempotency: a retried command returns the first result and records nothing (also after a
restart); the same key with a different command is a conflict."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from integration_helpers import T0, Course, crs, envelope, screening

from cart_course.contract import parse_command
from cart_course.errors import (
    IdempotencyConflictError,
    IdempotencyKeyOfAnotherActorError,
    SameCommandOfAnotherActorError,
)
from cart_course.service import CourseService
from cart_course.storage import open_application, parse_store_url

SHARED_BACKENDS = ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]


def _toxicity(key: str | None, grade: int = 1, reason: str | None = None) -> dict[str, object]:
    return envelope(
        "report_toxicity",
        "I-1",
        {"toxicity": crs(grade)},
        at=T0.replace(day=20),
        key=key,
        reason=reason,
    )


def _prepared(service: CourseService) -> None:
    p = Course(service, "I-1")
    p.screen()
    p.apheresis()


def test_a_retry_returns_the_first_result_and_records_nothing(service: CourseService) -> None:
    _prepared(service)
    first = service.execute(parse_command(_toxicity("tox-1")))
    again = service.execute(parse_command(_toxicity("tox-1")))
    assert first.status == "recorded"
    assert again.status == "duplicate"
    assert (again.version, again.event, again.outcome) == (
        first.version,
        first.event,
        first.outcome,
    )
    assert again.outcome["toxicity_id"] == "CRS-1"
    assert len(service.events("I-1")) == 4
    # Also when the retry comes in a batch, next to a new command.
    batch = service.execute_batch(
        [parse_command(_toxicity("tox-1")), parse_command(_toxicity("tox-2", grade=2))]
    )
    assert [getattr(r, "status", None) for r in batch] == ["duplicate", "recorded"]
    assert len(service.events("I-1")) == 5


def test_the_same_key_with_a_different_command_is_a_conflict(service: CourseService) -> None:
    _prepared(service)
    service.execute(parse_command(_toxicity("tox-1", grade=1)))
    for changed in (_toxicity("tox-1", grade=2), _toxicity("tox-1", reason="fever")):
        with pytest.raises(IdempotencyConflictError) as info:
            service.execute(parse_command(changed))
        body = info.value.to_json()
        assert body["error"] == "idempotency_conflict"
        assert "tox-1" in body["message"]
        assert info.value.version == 4
    assert len(service.events("I-1")) == 4
    # In a batch the conflict is that line's error; the rest of the batch records.
    results = service.execute_batch(
        [parse_command(_toxicity("tox-1", grade=3)), parse_command(_toxicity("tox-9"))]
    )
    assert isinstance(results[0], IdempotencyConflictError)
    assert getattr(results[1], "status", None) == "recorded"


@pytest.mark.parametrize("key", ["tox-1", None])
def test_the_same_key_from_another_actor_is_a_conflict_not_their_event(
    service: CourseService, key: str | None
) -> None:
    _prepared(service)
    first = service.execute(parse_command(_toxicity(key)))
    other = {**_toxicity(key), "actor": {"id": "dr.other", "role": "clinician"}}
    # with a key: a key of another actor (422); without one, the same command on record is a
    # conflict with the record (409: the sender misused no key)
    error = IdempotencyKeyOfAnotherActorError if key else SameCommandOfAnotherActorError
    with pytest.raises(error) as info:
        service.execute(parse_command(other))
    body = info.value.to_json()
    assert body["error"] == ("idempotency_conflict" if key else "record_conflict")
    assert "another actor" in body["message"]
    assert info.value.version == first.version == 4  # type: ignore[attr-defined]
    # In a batch too; the sender's own retry stays a duplicate.
    results = service.execute_batch([parse_command(other), parse_command(_toxicity(key))])
    assert isinstance(results[0], error)
    assert getattr(results[1], "status", None) == "duplicate"
    assert len(service.events("I-1")) == 4


def test_without_a_key_the_content_is_the_key(service: CourseService) -> None:
    _prepared(service)
    first = service.execute(parse_command(_toxicity(None)))
    again = service.execute(parse_command(_toxicity(None)))
    assert (first.status, again.status) == ("recorded", "duplicate")
    other = service.execute(parse_command(_toxicity(None, grade=2)))
    assert other.status == "recorded"
    assert len(service.events("I-1")) == 5


def test_the_first_screening_registers_once_even_when_retried(service: CourseService) -> None:
    screen = Course(service, "I-2").command("screen", {"screening": screening()}, key="s-1")
    assert service.execute(screen).version == 2
    assert service.execute(screen).status == "duplicate"
    assert [type(e).__name__ for e in service.events("I-2")] == ["Registered", "Screened"]


@pytest.mark.parametrize("backend", SHARED_BACKENDS)
def test_idempotency_survives_a_restart(
    backend: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    url = (
        str(tmp_path / "restart.sqlite")
        if backend == "sqlite"
        else str(request.getfixturevalue("pg_url"))
    )
    before = CourseService(open_application(parse_store_url(url)))
    try:
        _prepared(before)
        first = before.execute(parse_command(_toxicity("tox-1")))
    finally:
        before.close()
    after = CourseService(open_application(parse_store_url(url)))  # a new process's service
    try:
        again = after.execute(parse_command(_toxicity("tox-1")))
        assert again.status == "duplicate"
        assert (again.version, again.outcome) == (first.version, first.outcome)
        with pytest.raises(IdempotencyConflictError):
            after.execute(parse_command(_toxicity("tox-1", grade=3)))
        assert len(after.events("I-1")) == 4
    finally:
        after.close()


def test_a_retry_returns_the_same_result_for_every_kind_of_command(
    service: CourseService,
) -> None:
    """Moves, corrections and signatures: the retry's result equals the first (but status)."""
    p = Course(service, "I-3")
    commands = [p.command("screen", {"screening": screening()})]
    commands.append(p.command("record_apheresis", {"apheresis_contraindication": False}, days=3))
    firsts = [service.execute(c) for c in commands]
    correct = p.command(
        "correct",
        {"corrects": 3, "changes": {"occurred_at": "2026-01-08T07:00:00+00:00"}},
        reason="apheresis started an hour earlier",
    )
    sign = p.command(
        "sign",
        {
            "milestone": "eligibility",
            "signs_version": 2,
            "meaning": "approval",
            "printed_name": "Dr. K. Lee",
        },
    )
    # The correction and the signature are retried inside the batch that records them.
    batch = service.execute_batch([correct, sign, correct, sign])
    assert [getattr(r, "status", r) for r in batch] == [
        "recorded",
        "recorded",
        "duplicate",
        "duplicate",
    ]
    firsts += batch[:2]  # type: ignore[list-item]
    for command, first in zip([*commands, correct, sign], firsts, strict=True):
        again = service.execute(command)
        assert again.status == "duplicate"
        a, b = again.to_json(), first.to_json()  # type: ignore[union-attr]
        for body in (a, b):
            body.pop("status")
            body.pop("allowed_moves")  # the moves allowed now, not then
        assert a == b
    assert len(service.events("I-3")) == 5


@pytest.mark.parametrize("backend", SHARED_BACKENDS)
@pytest.mark.parametrize("batch_size", [1, 7, 500])
def test_a_file_sent_again_in_batches_gets_every_first_result_back(
    backend: str, batch_size: int, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    """Ingesting the same commands again (a new process, batches of any size, patients'
    commands spread over batches): every line is a duplicate whose result is the one recorded
    (moves, corrections, signatures), and nothing is recorded twice."""
    from cart_course.demo import cohort

    url = (
        str(tmp_path / "again.sqlite")
        if backend == "sqlite"
        else str(request.getfixturevalue("pg_url"))
    )
    commands = [parse_command(c) for c in cohort(25, 8)]
    first_service = CourseService(open_application(parse_store_url(url)))
    try:
        firsts = first_service.execute_batch(commands)
    finally:
        first_service.close()
    again_service = CourseService(open_application(parse_store_url(url)))
    try:
        agains = []
        for start in range(0, len(commands), batch_size):
            agains += again_service.execute_batch(commands[start : start + batch_size])
        kinds = set()
        for first, again in zip(firsts, agains, strict=True):
            if isinstance(first, Exception):
                assert type(again) is type(first)
                continue
            assert not isinstance(again, Exception), again
            kinds.add(first.command)
            a, b = again.to_json(), first.to_json()
            assert (a.pop("status"), b.pop("status")) == ("duplicate", "recorded")
            a.pop("allowed_moves"), b.pop("allowed_moves")
            assert a == b
        assert {"screen", "give_infusion", "correct", "sign"} <= kinds
        events = sum(len(again_service.events(p)) for p in again_service.patient_ids())
        assert events == sum(1 for r in firsts if not isinstance(r, Exception)) + 25
    finally:
        again_service.close()


def test_lines_retried_through_the_ingest_are_duplicates_of_commands_sent_in_python(
    service: CourseService,
) -> None:
    """The ingest writes the digest of a line it decoded with the fast encoder; commands first
    sent through the Python API (json's encoder) and retried as lines -- MRD sensitivities of
    1e-05, non-ASCII text, commands without an idempotency key (the content is the key) -- are
    duplicates, and a line whose number differs (NaN where a value was recorded) is a
    conflict, not a duplicate."""
    import json

    from cart_course.demo import cohort
    from cart_course.ingest import record_batch

    data = list(cohort(12, 5))
    for i, command in enumerate(data):
        if i % 3 == 0 and command["command"] != "report_toxicity":
            command.pop("idempotency_key", None)
        if command.get("reason") is None and command["command"] == "report_toxicity":
            command["reason"] = "fièvre, e5,null 1e-05 \u2003"  # (U+2028: refused in text)
    firsts = service.execute_batch([parse_command(c) for c in data])
    recorded = sum(1 for r in firsts if not isinstance(r, Exception))
    assert any(c["command"] == "assess_response" for c in data)
    events = sum(len(service.events(p)) for p in service.patient_ids())
    lines = [(n, json.dumps(c, ensure_ascii=n % 2 == 0)) for n, c in enumerate(data, start=1)]
    nan = json.loads(
        json.dumps(
            next(c for c in data if c["command"] == "give_infusion" and "idempotency_key" in c)
        )
    )

    def first_number_to_nan(node: dict[str, object]) -> bool:
        for key, value in node.items():
            if isinstance(value, float | int) and not isinstance(value, bool):
                node[key] = float("nan")
                return True
            if isinstance(value, dict) and first_number_to_nan(value):
                return True
        return False

    assert "idempotency_key" in nan and first_number_to_nan(nan["payload"])
    lines.append((len(data) + 1, json.dumps(nan)))
    counts, rejected = record_batch(service, lines)
    assert counts["duplicate"] == recorded
    assert counts["recorded"] == 0
    assert [n for n, text, _body in rejected if text.startswith("idempotency_conflict")] == [
        len(lines)
    ]
    assert sum(len(service.events(p)) for p in service.patient_ids()) == events
