"""Site-scoped access (issue 17): what a token limited to some sites may see and do.

:class:`ScopedService` stands where the :class:`~cart_course.service.CourseService` stands for a
request made with a site-limited token. It answers only for the patients of the token's sites:
another site's patient is answered exactly as a patient that is not on record (the same error,
raised at the same point), lists are filtered, and a command on such a patient is refused as
for an unknown patient (``CourseService.execute(..., sites=...)``). Anything else the service
offers (the whole log, the ledger, the audit) is refused with :class:`SiteScopeError` (403): a
route that reads the whole trial cannot be served to a site-limited token, by construction, so
that a route added later fails closed rather than leaking.

The entry points share the rest of a token's path here: :func:`authenticate` (a token -> its
:class:`~cart_course.tokens.TokenInfo`), :func:`permit` (its role and scope against what the
route or CLI command allows), :func:`service_for` (the service as the token sees it),
:func:`actor_of` and :func:`parse_as` (commands recorded as the token's actor) and
:func:`narrow` (a view's site filter within the token's sites). The HTTP guard
(``http/auth.py``) and the CLI (``cli/common.py``, ``--token-file`` / ``CART_COURSE_TOKEN``)
call the same functions.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import attrs

from .contract import Actor, Command, parse_command
from .errors import (
    CartCourseError,
    ForbiddenError,
    MoveRefused,
    PatientNotFoundError,
    UnauthenticatedError,
)
from .protocol.queries import system_actor_problem
from .protocol.record import PatientRecord
from .service import CommandResult, CourseService
from .tokens import TokenInfo, TokenStore

#: Who may use what, by role: each HTTP route names one of these (``http/auth.py``), and each
#: CLI command that reads or writes patient data names the same as the route it mirrors.
WRITERS = ("service", "clinician")
#: Who records commands (``POST /v1/commands``, ``cart-course record``): the writers, and the
#: roles that act on data queries (the service refuses a command its role may not record: 403).
COMMANDERS = (*WRITERS, "monitor", "data_manager")
READERS = ("service", "clinician", "monitor", "auditor", "data_manager")
VIEWERS = ("clinician", "monitor", "auditor", "data_manager")
AUDITORS = ("auditor",)
ADMINS = ("admin",)
METRICS_READERS = ("monitor", "auditor", "admin", "data_manager")


class SiteScopeError(ForbiddenError):
    """A site-limited token asked for something that covers the whole trial."""

    code = "site_scope"
    title = "Forbidden for a site-limited token"


def trial_wide_only(sites: Iterable[str], what: str = "this route") -> SiteScopeError:
    return SiteScopeError(
        f"{what} reads the whole trial; this token is limited to site(s) "
        f"{', '.join(sorted(sites))}: use a trial-wide token"
    )


class ScopedService(CourseService):
    """The service as a token limited to ``sites`` sees it.

    A :class:`CourseService` by type (the HTTP layer's dependency), but none of its state: the
    service's own attributes (the log, the ledger, the store, the cache) are not set, so any
    method not overridden here reaches :meth:`__getattr__` and is refused (fails closed)."""

    def __init__(self, base: CourseService, sites: Iterable[str]) -> None:  # no super(): no state
        self.__dict__["base"] = base
        #: The sites the token is limited to (``CourseService.sites`` is the trial's sites).
        self.__dict__["scope"] = frozenset(sites)
        self.__dict__["protocol"] = base.protocol

    base: CourseService
    scope: frozenset[str]

    def __getattr__(self, name: str) -> Any:
        # only the methods below are served; the log, the ledger, the app... are trial-wide
        if name.startswith("__"):
            raise AttributeError(name)
        raise trial_wide_only(self.__dict__.get("scope", ()))

    def covers(self, site: str | None) -> bool:
        return site in self.scope

    def record(self, patient_id: str) -> PatientRecord:
        record = self.base.record(patient_id)
        if record.site not in self.scope:
            raise PatientNotFoundError(patient_id)  # exactly as for a patient not on record
        return record

    def site_of(self, patient_id: str) -> str:
        return self.record(patient_id).site

    def _offered(self, moves: Iterable[str]) -> list[str]:
        """The moves allowed now that this token may record: a token of one site cannot
        transfer (its patients are at its site already; another site is not its to name)."""
        if len(self.scope) > 1:
            return list(moves)
        return [m for m in moves if m != "transfer_site"]

    def summary(self, patient_id: str) -> dict[str, Any]:
        self.record(patient_id)
        data = self.base.summary(patient_id)
        if "allowed_moves" in data:
            data["allowed_moves"] = self._offered(data["allowed_moves"])
        return data

    def queries(self, patient_id: str) -> list[dict[str, Any]]:
        self.record(patient_id)
        return self.base.queries(patient_id)

    def allowed_moves(self, patient_id: str) -> list[str]:
        self.record(patient_id)
        return self._offered(self.base.allowed_moves(patient_id))

    def events(self, patient_id: str) -> list[Any]:
        self.record(patient_id)
        return self.base.events(patient_id)

    def patient_ids(self) -> Iterator[str]:
        for pid in self.base.patient_ids():
            if self.sees(pid):
                yield pid

    def patients(self) -> list[dict[str, Any]]:
        return [row for row in self.base.patients() if row.get("site") in self.scope]

    def sees(self, patient_id: str) -> bool:
        """Whether the patient is on record at one of the token's sites."""
        try:
            self.record(patient_id)
        except PatientNotFoundError:
            return False
        except Exception:
            return False  # unreadable: not shown to a site-limited token
        return True

    def execute(self, command: Command, *, sites: frozenset[str] | None = None) -> CommandResult:
        try:
            result = self.base.execute(
                command, sites=self.scope if sites is None else sites & self.scope
            )
        except MoveRefused as exc:  # its "moves allowed now" too
            exc.allowed = self._offered(exc.allowed)
            raise
        return attrs.evolve(result, allowed_moves=tuple(self._offered(result.allowed_moves)))

    def execute_batch(
        self, commands: Sequence[Command], *, sites: frozenset[str] | None = None
    ) -> list[CommandResult | CartCourseError]:
        scope = self.scope if sites is None else sites & self.scope
        return self.base.execute_batch(commands, sites=scope)

    def close(self) -> None:  # the base service is the application's to close
        pass


def base_service(service: Any) -> CourseService:
    """The service behind a scoped one (for reads that filter by site themselves)."""
    if isinstance(service, ScopedService):
        return service.base
    base: CourseService = service
    return base


def sites_of(service: Any) -> frozenset[str] | None:
    """The sites a (scoped) service is limited to; None: trial-wide."""
    return service.scope if isinstance(service, ScopedService) else None


# -- one token's path, shared by HTTP and the CLI ------------------------------------------------

NO_TOKEN = "send 'Authorization: Bearer <token>'; tokens come from 'cart-course tokens add'"
UNKNOWN_TOKEN = "unknown or revoked token"


def authenticate(tokens: TokenStore, token: str | None, missing: str = NO_TOKEN) -> TokenInfo:
    """The active token's info; no token (``missing`` says how to send one), an unknown or a
    revoked token: :class:`UnauthenticatedError`."""
    if token is None:
        raise UnauthenticatedError(missing)
    info = tokens.authenticate(token)
    if info is None:
        raise UnauthenticatedError(UNKNOWN_TOKEN)
    if system_actor_problem(info.actor) is not None:
        # ``tokens add`` refuses such an actor: this row was written into the token table
        # outside cart-course (a database writer) to act as the query rules
        raise UnauthenticatedError(
            f"token {info.id} names the system's own actor {info.actor!r}, which no token may "
            "carry; it was not issued by cart-course: revoke it (cart-course tokens revoke)"
        )
    return info


def permit(
    info: TokenInfo, roles: Iterable[str], *, trial_wide: bool = False, what: str = "this route"
) -> None:
    """Refuse (:class:`ForbiddenError`) a role ``what`` does not name, and a site-limited token
    where ``what`` reads the whole trial (``trial_wide``)."""
    allowed = tuple(roles)
    if info.role not in allowed:
        raise ForbiddenError(
            f"role {info.role!r} may not use {what}; roles allowed: {', '.join(allowed)}"
        )
    if info.sites and trial_wide:
        raise trial_wide_only(info.sites, what)


def service_for(service: CourseService, info: TokenInfo | None) -> CourseService:
    """The service as ``info``'s token sees it: a :class:`ScopedService` for a site-limited
    token, the service itself for a trial-wide token (or none: the operator)."""
    if info is not None and info.sites:
        return ScopedService(service, info.sites)
    return service


def actor_of(info: TokenInfo) -> Actor:
    return Actor(id=info.actor, role=info.role, name=info.name)


def parse_as(data: Any, info: TokenInfo, **options: Any) -> Command:
    """A command envelope recorded as the token's actor: the body's ``actor`` is dropped (the
    token is the actor), everything else is checked by the contract."""
    if isinstance(data, dict) and "actor" in data:
        data = {k: v for k, v in data.items() if k != "actor"}
    return parse_command(data, actor=actor_of(info), **options)


def narrow(scope: frozenset[str] | None, chosen: Iterable[str] | None) -> frozenset[str] | None:
    """The sites a view reads: the token's (``scope``; None: every site), narrowed to
    ``chosen`` when given; a site outside the token's: :class:`ForbiddenError`."""
    if chosen is None:
        return scope
    wanted = frozenset(chosen)
    outside = sorted(wanted - scope) if scope is not None else []
    if scope is not None and outside:
        raise ForbiddenError(
            f"this token is limited to site(s) {', '.join(sorted(scope))}; it may not read "
            f"site {outside[0]!r}"
        )
    return wanted


def check_visible(service: CourseService, patient_id: str) -> None:
    """A patient a site-limited token names: another site's is answered as not on record."""
    if isinstance(service, ScopedService):
        service.record(patient_id)
