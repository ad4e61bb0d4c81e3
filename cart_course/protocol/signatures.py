"""``sign``: an investigator's electronic signature of a milestone (21 CFR 11.50/11.70), decided
as pure protocol code: which milestones there are, who may sign, what a signature means, and
whether the signed version is a milestone of that kind. No I/O: the caller says what the signed
version recorded (its move and the hash of its event).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import attrs

from .errors import ProtocolInputError, RecordConflictInputError, key_name

#: The milestones an investigator signs, and the moves each may sign.
MILESTONES: dict[str, tuple[str, ...]] = {
    "eligibility": ("screen", "rescreen"),
    "infusion": ("infuse_d1", "infuse_d2", "infuse_d3"),
    "response_assessment": ("assess_response",),
    "end_of_treatment": ("cease", "discontinue", "withdraw", "record_death"),
}
#: Every move some milestone signature may sign.
SIGNABLE_TRIGGERS = frozenset(t for triggers in MILESTONES.values() for t in triggers)
SIGNATURE_MEANINGS = ("review", "approval", "authorship")
SIGNING_ROLES = ("clinician",)
SIGNATURE_KEYS = ("milestone", "signs_version", "meaning", "printed_name")


class SignerNotPermittedError(Exception):
    """The actor's role may not sign (the service answers ``forbidden``)."""

    def __init__(self, role: str) -> None:
        self.role = role
        super().__init__(
            f"a {role} may not sign; signatures are given by: "
            + ", ".join(SIGNING_ROLES)
            + " (an investigator)"
        )


@attrs.frozen(kw_only=True)
class Signature:
    """What a signature records (``MilestoneSigned``'s fields besides who, when, why)."""

    milestone: str
    signs_version: int
    signed_hash: str
    meaning: str
    printed_name: str

    def outcome(self) -> dict[str, Any]:
        return {
            "milestone": self.milestone,
            "signs_version": self.signs_version,
            "meaning": self.meaning,
        }


def _shown(value: str) -> str:
    return repr(value) if len(value) <= 60 else repr(value[:60]) + "..."


def event_version(value: Any, version_now: int, field: str, what: str) -> int:
    """A payload's reference to one of the patient's events (1..its version), or a clear error."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ProtocolInputError(field, f"must be the version of {what} (1..{version_now})")
    if value > version_now:  # well-formed, but not on this patient's record
        raise RecordConflictInputError(field, f"must be the version of {what} (1..{version_now})")
    return value


#: What the signed version recorded: version -> (its move, the hash of its event), or None when
#: it recorded no move.
SignedLookup = Callable[[int], tuple[str, str] | None]


def decide_signature(
    payload: Mapping[str, Any],
    role: str,
    version_now: int,
    signed: SignedLookup,
    registered_name: str | None = None,
    *,
    actor: str = "the signer",
) -> Signature:
    """The signature ``payload`` asks for by an actor of ``role`` on a patient at ``version_now``
    (raises :class:`ProtocolInputError` naming the field, or :class:`SignerNotPermittedError`).

    ``printed_name`` must be ``registered_name``, the signer's name as registered with their
    identity (over HTTP: the token's name; in an envelope sent by the CLI or Python: the actor's
    ``name``), never a name only the body states (21 CFR 11.50: the printed name of the signer).
    A signer without a registered name cannot sign."""
    extra = sorted(set(payload) - set(SIGNATURE_KEYS), key=str)
    if extra:
        raise ProtocolInputError(
            f"payload.{key_name(extra[0])}", "unknown key; allowed: " + ", ".join(SIGNATURE_KEYS)
        )
    if role not in SIGNING_ROLES:
        raise SignerNotPermittedError(role)
    milestone = payload.get("milestone")
    if milestone not in MILESTONES:
        raise ProtocolInputError("payload.milestone", f"must be one of {', '.join(MILESTONES)}")
    meaning = payload.get("meaning")
    if meaning not in SIGNATURE_MEANINGS:
        raise ProtocolInputError(
            "payload.meaning", f"must be one of {', '.join(SIGNATURE_MEANINGS)}"
        )
    name = payload.get("printed_name")
    if not isinstance(name, str) or not name.strip():
        raise ProtocolInputError("payload.printed_name", "the signer's printed name is required")
    if len(name) > 200 or any(ch < " " or "\x7f" <= ch <= "\x9f" for ch in name):
        raise ProtocolInputError(
            "payload.printed_name",
            "must be the signer's name as printed: one line of at most 200 characters, "
            "without control characters",
        )
    if registered_name is None:
        raise ProtocolInputError(
            "payload.printed_name",
            f"{actor} has no registered name to sign with: signers need a token issued with "
            "their name ('cart-course tokens add ACTOR ROLE --name \"...\"'; in an envelope: "
            '"actor": {..., "name": "..."})',
        )
    if name != registered_name:
        raise ProtocolInputError(
            "payload.printed_name",
            f"{_shown(name)} is not the signer's registered name {_shown(registered_name)}: a "
            "signature carries the name registered with the signer's token",
        )
    signs = event_version(
        payload.get("signs_version"), version_now, "payload.signs_version", "the signed event"
    )
    found = signed(signs)
    if found is None or found[0] not in MILESTONES[milestone]:
        raise RecordConflictInputError(
            "payload.signs_version",
            f"version {signs} is not a {milestone} milestone (one of: "
            f"{', '.join(MILESTONES[milestone])})",
        )
    return Signature(
        milestone=milestone,
        signs_version=signs,
        signed_hash=found[1],
        meaning=meaning,
        printed_name=name,
    )
