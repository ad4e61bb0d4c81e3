"""The signed ledger over HTTP: the latest checkpoint for auditors and monitors to archive, and
verification of the log against a checkpoint an auditor holds (``cart_course.ledger``)."""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Annotated, Any

import msgspec
from litestar import Request, Response, get, post
from litestar.di import NamedDependency
from litestar.params import JSONBody

from ..errors import InvalidCommandError
from ..keys import KeyFormatError, PublicKey, parse_public_keys
from ..ledger.checkpoint import CheckpointFormatError
from ..ledger.core import issue, verify_checkpoint
from ..ledger.store import LedgerStore
from ..ledger.views import views_problems
from ..service import CourseService
from .auth import AUDITORS
from .common import read_json_object
from .problems import CheckpointUnavailableError, problem_responses

Svc = NamedDependency[CourseService]
#: Auditors and monitors archive checkpoints outside the system.
CHECKPOINT_READERS = ("auditor", "monitor")


@contextmanager
def _store(service: CourseService, request: Request[Any, Any, Any]) -> Iterator[LedgerStore]:
    if service.ledger is not None:
        yield service.ledger.store
        return
    settings = request.app.state.get("store")
    if settings is None:
        raise CheckpointUnavailableError("this service keeps no checkpoints (no signing key)")
    store = LedgerStore.open(settings)
    try:
        yield store
    finally:
        store.close()


@get(
    "/v1/audit/checkpoint",
    opt={"roles": CHECKPOINT_READERS, "audit": True, "trial_wide": True},
    sync_to_thread=True,
    responses=problem_responses(404),
    media_type="text/plain; charset=utf-8",
    summary="The latest signed checkpoint of the log (C2SP signed note): archive it",
    tags=["audit"],
)
def get_checkpoint(service: Svc, request: Request[Any, Any, Any]) -> Response[str]:
    """Signs the log as it stands now when the service has its key (else the latest stored
    checkpoint). Keep it outside the system; check the log against it later with
    ``POST /v1/audit/verify`` or ``cart-course audit verify --checkpoint``."""
    ledger = service.ledger
    if ledger is not None:
        text = issue(service.log, ledger.store, ledger.key, origin=ledger.origin).text()
    else:
        with _store(service, request) as store:
            latest = store.latest()
        if latest is None:
            raise CheckpointUnavailableError(
                "no checkpoint was issued: the service has no signing key "
                "(CART_COURSE_SIGNING_KEY); nothing is signed"
            )
        text = latest.note
    return Response(text, media_type="text/plain; charset=utf-8")


#: A checkpoint as ``GET /v1/audit/checkpoint`` serves it (``ledger.checkpoint``'s canonical
#: text: origin, size, root hash, time and position lines, a blank line, Ed25519 signature
#: lines); whether a key given signed it no schema can say.
CHECKPOINT_PATTERN = (
    r"^[^\n]*\n(0|[1-9][0-9]*)\n[A-Za-z0-9+/]{42}[AEIMQUYcgkosw048]=\n"
    r"cart-course-time [^\n]+\ncart-course-notification (0|[1-9][0-9]*)\n\n"
    r"(\u2014 [!-*,-~]+ [A-Za-z0-9+/]{90}[AEIMQUYcgkosw048]=\n)+$"
)
#: A public key line as ``cart-course keys generate`` writes it: name+key id+base64 key.
PUBLIC_KEY_PATTERN = r"^[!-*,-~]+\+[0-9A-Fa-f]{8}\+A[Q-Za-f][A-Za-z0-9+/]{42}$"


class VerifyRequest(msgspec.Struct, forbid_unknown_fields=True):
    """The body of ``POST /v1/audit/verify``."""

    checkpoint: Annotated[
        str,
        msgspec.Meta(
            pattern=CHECKPOINT_PATTERN,
            description="the checkpoint's text as GET /v1/audit/checkpoint served it (a signed "
            "note; its signature must verify with one of the keys)",
        ),
    ]
    public_keys: (
        Annotated[
            list[Annotated[str, msgspec.Meta(pattern=PUBLIC_KEY_PATTERN)]],
            msgspec.Meta(
                min_length=1,
                description="public key lines (cart-course keys generate); default: the "
                "service's own key",
            ),
        ]
        | None
    ) = None


def read_verify_request(data: Any) -> VerifyRequest:
    """The body as a :class:`VerifyRequest`, or ``invalid_command`` naming the field."""
    try:
        return msgspec.convert(data, VerifyRequest, strict=True)
    except msgspec.ValidationError as exc:
        message, _, where = str(exc).partition(" - at `$")
        field = where.rstrip("`").lstrip(".") or "(body)"
        field = re.sub(r"\[(\d+)\]", r".\1", field)
        missing = message.partition("missing required field `")[2].rstrip("`")
        unknown = message.partition("unknown field `")[2].rstrip("`")
        if missing:
            field, message = missing, "is required: the checkpoint's text you hold"
        elif unknown:
            field, message = unknown, "unknown key; allowed keys are: checkpoint, public_keys"
        raise InvalidCommandError(field, message) from None


def _keys(service: CourseService, given: list[str] | None) -> list[PublicKey]:
    if given is None:
        return [service.ledger.key.public_key] if service.ledger is not None else []
    try:
        return parse_public_keys("\n".join(given), "public_keys")
    except KeyFormatError as exc:
        raise InvalidCommandError("public_keys", str(exc)) from None


@post(
    "/v1/audit/verify",
    opt={"roles": AUDITORS, "audit": True, "body": "verify"},
    before_request=read_json_object,
    sync_to_thread=True,
    status_code=200,
    responses=problem_responses(),
    summary="Verify the log against a checkpoint you hold (consistency, e-signatures, views)",
    tags=["audit"],
)
def post_verify(
    service: Svc, request: Request[Any, Any, Any], data: JSONBody[VerifyRequest]
) -> dict[str, Any]:
    """Body: ``{"checkpoint": "<the checkpoint's text>", "public_keys": ["name+id+key", ...]}``
    (``public_keys`` defaults to the service's own key). Answers the chain verification and the
    ledger's: ``ok`` is false when either found tampering."""
    from ..audit import verify

    text = data.checkpoint
    keys = _keys(service, data.public_keys)
    with _store(service, request) as store:
        try:
            ledger = verify_checkpoint(service.log, store, text, keys)
        except CheckpointFormatError as exc:
            raise InvalidCommandError("checkpoint", str(exc)) from None
    settings = request.app.state.get("store")
    if settings is not None:
        ledger.problems.extend(views_problems(service.log, settings))
    chain = verify(service.log)
    return {"ok": chain.ok and ledger.ok, "verify": chain.to_json(), "ledger": ledger.to_json()}


ROUTES = [get_checkpoint, post_verify]
