"""Errors of the application, each with a stable machine-readable code.

Every error says what was wrong and what is allowed; ``to_json`` is the rejection body of the
command contract (the same for Python, CLI, JSON Lines and HTTP).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any


class CartCourseError(Exception):
    code = "error"
    title = "Error"

    def __init__(self, message: str) -> None:
        self.message = message
        super().__init__(message)

    def to_json(self) -> dict[str, Any]:
        return {"error": self.code, "message": self.message}


class InvalidCommandError(CartCourseError):
    """The command is malformed: names the field and what is allowed.

    ``field`` and ``detail`` are the first problem; ``problems`` lists every invalid field
    (the first included), each as ``(field, message)``: the rejection body carries them as
    ``problems: [{"field": ..., "message": ...}, ...]`` beside ``field`` and ``message``."""

    code = "invalid_command"
    title = "Invalid command"

    def __init__(self, field: str, message: str, *, others: Sequence[tuple[str, str]] = ()) -> None:
        self.field = field
        super().__init__(f"{field}: {message}")
        self.detail = message
        self.problems: tuple[tuple[str, str], ...] = (
            (field, message),
            *((str(f), str(m)) for f, m in others),
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "error": self.code,
            "message": self.message,
            "field": self.field,
            "problems": [{"field": f, "message": m} for f, m in self.problems],
        }


class RecordConflictError(InvalidCommandError):
    """A well-formed command that conflicts with the patient's record: a clinical time before
    the patient's last move (or first event), a version that is not a correctable move or the
    milestone signed. Names the field like :class:`InvalidCommandError` (HTTP 409, not 422)."""

    code = "record_conflict"
    title = "Conflicts with the patient's record"


class MoveRefused(CartCourseError):
    """The protocol refuses the move: the failed rules and the moves allowed now."""

    code = "move_refused"
    title = "Move refused by the protocol"

    def __init__(
        self,
        message: str,
        *,
        state: str,
        trigger: str,
        failed: list[dict[str, str]],
        allowed: list[str],
    ) -> None:
        super().__init__(message)
        self.state = state
        self.trigger = trigger
        self.failed = failed
        self.allowed = allowed

    def to_json(self) -> dict[str, Any]:
        return {
            "error": self.code,
            "message": self.message,
            "state": self.state,
            "move": self.trigger,
            "failed_rules": self.failed,
            "allowed_moves": self.allowed,
        }


class VersionConflictError(CartCourseError):
    code = "version_conflict"
    title = "Version conflict"

    def __init__(self, patient_id: str, expected: int, actual: int) -> None:
        self.expected = expected
        self.actual = actual
        super().__init__(
            f"patient {patient_id} is at version {actual}, not the expected {expected}: "
            "re-read the patient and decide again"
        )

    def to_json(self) -> dict[str, Any]:
        return {
            **super().to_json(),
            "expected_version": self.expected,
            "actual_version": self.actual,
        }


class IdempotencyConflictError(CartCourseError):
    code = "idempotency_conflict"
    title = "Idempotency key reused with a different command"

    def __init__(self, key: str, version: int) -> None:
        self.key = key
        self.version = version
        super().__init__(
            f"idempotency key {key!r} was used for a different command (recorded as version "
            f"{version}); use a new key for a new command"
        )


class IdempotencyKeyOfAnotherActorError(IdempotencyConflictError):
    """The key was recorded by another actor: answering it as a duplicate would hand this actor
    someone else's event as their own. (Without a key: :class:`SameCommandOfAnotherActorError`.)"""

    def __init__(self, key: str, version: int) -> None:
        self.key = key
        self.version = version
        what = (
            "the same command (no idempotency key)"
            if key.startswith("auto:")
            else f"idempotency key {key!r}"
        )
        CartCourseError.__init__(
            self,
            f"{what} was recorded by another actor (as version {version}); a retry must come from "
            "the actor who sent it: use a new key for your own command",
        )


class SameCommandOfAnotherActorError(RecordConflictError):
    """The same command, sent without an idempotency key (its content is its key), was recorded
    by another actor. The sender misused no key: the command conflicts with the patient's record
    (HTTP 409 ``record_conflict``), and is neither recorded twice nor handed back as the sender's
    own event."""

    def __init__(self, key: str, version: int) -> None:
        self.key = key
        self.version = version
        super().__init__(
            "idempotency_key",
            f"the same command was recorded by another actor (as version {version}); it is not "
            "recorded twice: if yours is a new command, send it with an idempotency key of your "
            "own",
        )


class PatientNotFoundError(CartCourseError):
    code = "patient_not_found"
    title = "Patient not found"

    def __init__(self, patient_id: str) -> None:
        self.patient_id = patient_id
        super().__init__(
            f"no patient {patient_id!r} on record; a patient is registered by 'screen'"
        )


class StoreError(CartCourseError):
    code = "store_error"
    title = "Store unavailable"


class CipherKeyError(StoreError):
    """The stored events cannot be decrypted with the configured key (or no key is set)."""

    code = "cipher_key_mismatch"
    title = "Encryption key does not match the store"


class ForbiddenError(CartCourseError):
    code = "forbidden"
    title = "Forbidden"


class UnauthenticatedError(CartCourseError):
    """No token where one is needed, or an unknown or revoked token (HTTP 401; the CLI: exit 1)."""

    code = "unauthenticated"
    title = "Authentication required"
