"""The trial's sites (issue 17): id, name, IANA time zone, active; kept in the store.

**Where they live, and why.** Site definitions are the trial's configuration, not a patient's
clinical record: they live in a table of the store's database, ``cart_course_sites``, beside the
API tokens (``cart_course_tokens``, which name the sites a token is limited to) and the
audit-access log, on the same backends (SQLite file, PostgreSQL database, memory). So every
process of the trial (CLI, each HTTP worker, ingest) reads the same sites, and a token and the
sites it names are in one place. Each row keeps who added the site and when, and who deactivated
it and when (a site is never deleted or renamed: deactivating it closes it to new patients);
every change is also appended to ``cart_course_site_changes`` (who, when, what), which is never
updated. They are not events of the event log: every reader of the log (views, audit, exports,
feed, conformance) takes each stream for a patient's course, and a patient's site is in the
patient's own events (``screen``'s ``site``, ``transfer_site``), hash-chained like every fact.

A patient screened without a site (stores of the previous release, or a trial that defines no
site) is in ``S00`` "Unassigned (before sites)" (:data:`~cart_course.protocol.sites.DEFAULT_SITE`),
which is no row of the table. Once the trial has at least one site, ``screen`` requires one.
"""

from __future__ import annotations

import builtins
import datetime as dt
import re
import threading
import time
import zoneinfo
from collections.abc import Callable, Sequence
from typing import Any, Protocol

import attrs

from .contract import UNPRINTABLE_CATEGORIES, check_printable
from .errors import CartCourseError, InvalidCommandError
from .protocol.errors import ProtocolInputError
from .protocol.sites import DEFAULT_SITE, DEFAULT_SITE_NAME, check_site_id

__all__ = [
    "DEFAULT_SITE",
    "DEFAULT_SITE_NAME",
    "Site",
    "SiteNotFoundError",
    "SiteStore",
    "UnknownSiteError",
]

SITES_DDL = (
    """CREATE TABLE IF NOT EXISTS cart_course_sites (
        id TEXT PRIMARY KEY, name TEXT NOT NULL, time_zone TEXT NOT NULL,
        active INTEGER NOT NULL, created_at TEXT NOT NULL, created_by TEXT,
        deactivated_at TEXT, deactivated_by TEXT, deactivation_reason TEXT)""",
    """CREATE TABLE IF NOT EXISTS cart_course_site_changes (
        site_id TEXT NOT NULL, at TEXT NOT NULL, actor TEXT, change TEXT NOT NULL,
        detail TEXT NOT NULL)""",
)
_COLUMNS = (
    "id, name, time_zone, active, created_at, created_by, deactivated_at, deactivated_by, "
    "deactivation_reason"
)
#: How long the list of sites read from the database is trusted by a process (a change made
#: through this process is seen at once; one made by another process within this time).
SITE_CACHE_SECONDS = 2.0
MAX_SITE_NAME = 200


class UnknownSiteError(InvalidCommandError):
    """A site that is not a known active site of the trial (422, nothing recorded)."""


class SiteExistsError(CartCourseError):
    """A site id that the trial has already (409: ids are never reused)."""

    code = "site_exists"
    title = "Site exists"


class SiteNotFoundError(CartCourseError):
    code = "site_not_found"
    title = "Site not found"

    def __init__(self, site_id: str, known: str) -> None:
        self.site_id = site_id
        super().__init__(f"no site {site_id!r}; sites: {known}")


@attrs.frozen(kw_only=True)
class Site:
    id: str
    name: str
    time_zone: str
    active: bool
    created_at: str
    created_by: str | None = None
    deactivated_at: str | None = None
    deactivated_by: str | None = None
    deactivation_reason: str | None = None

    def to_json(self) -> dict[str, Any]:
        return attrs.asdict(self)

    def label(self) -> str:
        return f"{self.id} ({self.name}, {self.time_zone})"


class _Executor(Protocol):
    def _execute(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]: ...

    def _sql(self, sql: str) -> str: ...


def _now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="microseconds")


#: A site's time zone: an IANA Area/Location name of the tz database (``Europe/Paris``), or
#: ``UTC``; not the legacy aliases (``GMT0``, ``Etc/GMT+1``, ``Zulu``), which name no place.
_TIME_ZONE_FORM = re.compile(r"^(UTC|[A-Z][A-Za-z]+(/[A-Za-z][A-Za-z_-]*)+)$")
SITE_TIME_ZONES: tuple[str, ...] = tuple(
    sorted(z for z in zoneinfo.available_timezones() if _TIME_ZONE_FORM.fullmatch(z))
)
_SITE_TIME_ZONES = frozenset(SITE_TIME_ZONES)


def check_time_zone(value: object) -> str:
    """An IANA time zone name (``Europe/Paris``), or :class:`InvalidCommandError`."""
    if not isinstance(value, str) or not value.strip() or len(value) > 64:
        raise InvalidCommandError(
            "time_zone", "an IANA time zone name is required, e.g. Europe/Paris"
        )
    if value not in _SITE_TIME_ZONES:
        raise InvalidCommandError(
            "time_zone",
            f"{value!r} is not an IANA time zone; give an Area/Location name of the tz "
            "database, e.g. Europe/Paris, America/New_York, Asia/Tokyo (or UTC)",
        )
    return value


def parse_site_id(value: object, field: str = "id") -> str:
    try:
        return check_site_id(value, field)
    except ProtocolInputError as exc:
        raise InvalidCommandError(exc.field, exc.message) from None


class SiteStore:
    """The sites table, over the SQL connection of the token store of the same database."""

    def __init__(self, db: _Executor) -> None:
        self._db = db
        self._cache: tuple[float, list[Site]] | None = None
        self._lock = threading.Lock()

    # -- reading -------------------------------------------------------------------------------

    def list(self) -> list[Site]:
        """Every site, active or not, by id (cached for :data:`SITE_CACHE_SECONDS`)."""
        now = time.monotonic()
        cached = self._cache
        if cached is not None and now < cached[0]:
            return cached[1]
        rows = self._db._execute(f"SELECT {_COLUMNS} FROM cart_course_sites ORDER BY id")
        sites = [
            Site(
                id=r[0],
                name=r[1],
                time_zone=r[2],
                active=bool(r[3]),
                created_at=r[4],
                created_by=r[5],
                deactivated_at=r[6],
                deactivated_by=r[7],
                deactivation_reason=r[8],
            )
            for r in rows
        ]
        self._cache = (now + SITE_CACHE_SECONDS, sites)
        return sites

    def forget(self) -> None:
        self._cache = None

    def active(self) -> builtins.list[Site]:
        return [s for s in self.list() if s.active]

    def known_ids(self) -> set[str]:
        """Every site a patient may be in: the table's and the default site."""
        return {DEFAULT_SITE, *(s.id for s in self.list())}

    def get(self, site_id: str) -> Site:
        for site in self.list():
            if site.id == site_id:
                return site
        raise SiteNotFoundError(site_id, self.describe_known())

    def describe_active(self) -> str:
        active = self.active()
        if not active:
            return "none is active (an admin adds one: cart-course sites add ID NAME TIME_ZONE)"
        return ", ".join(s.label() for s in active)

    def describe_known(self) -> str:
        sites = self.list()
        if not sites:
            return "none defined"
        return ", ".join(s.id + ("" if s.active else " (inactive)") for s in sites)

    def check_active(self, site: str | None, field: str = "payload.site") -> str | None:
        """``site`` when it is a known active site. None when no site is given and the trial
        defines none (a single-site trial: the patient is in the default site). Otherwise
        :class:`UnknownSiteError` listing the active sites."""
        sites = self.list()
        if site is None:
            if not sites:
                return None
            raise UnknownSiteError(
                field,
                f"is required: this trial has sites; give one of the active sites: "
                f"{self.describe_active()}",
            )
        for s in sites:
            if s.id == site:
                if s.active:
                    return site
                raise UnknownSiteError(
                    field,
                    f"site {site!r} was deactivated on {s.deactivated_at} and takes no new "
                    f"patients; active sites: {self.describe_active()}",
                )
        raise UnknownSiteError(
            field, f"{site!r} is not a site of this trial; active sites: {self.describe_active()}"
        )

    def check_known(self, sites: Sequence[str], field: str = "sites") -> tuple[str, ...]:
        """Sites a token may be limited to: known sites (active or not) or the default site."""
        known = self.known_ids()
        out: builtins.list[str] = []
        for site in sites:
            parse_site_id(site, field)
            if site not in known:
                raise UnknownSiteError(
                    field,
                    f"{site!r} is not a site of this trial; sites: {self.describe_known()} "
                    f"(and {DEFAULT_SITE}, the patients recorded before sites)",
                )
            if site not in out:
                out.append(site)
        return tuple(sorted(out))

    def changes(self, site_id: str | None = None) -> builtins.list[dict[str, Any]]:
        """The append-only history of site changes (who, when, what)."""
        sql = "SELECT site_id, at, actor, change, detail FROM cart_course_site_changes"
        params: builtins.list[Any] = []
        if site_id is not None:
            sql += " WHERE site_id = ?"
            params.append(site_id)
        rows = self._db._execute(self._db._sql(sql + " ORDER BY at, site_id"), params)
        keys = ("site_id", "at", "actor", "change", "detail")
        return [dict(zip(keys, r, strict=True)) for r in rows]

    # -- changing ------------------------------------------------------------------------------

    def add(self, site_id: str, name: str, time_zone: str, *, created_by: str | None) -> Site:
        site_id = parse_site_id(site_id)
        if site_id == DEFAULT_SITE:
            raise InvalidCommandError(
                "id", f"{DEFAULT_SITE} is the default site ({DEFAULT_SITE_NAME}); choose another id"
            )
        if not isinstance(name, str) or not name.strip() or len(name) > MAX_SITE_NAME:
            raise InvalidCommandError(
                "name", f"a site's name is 1-{MAX_SITE_NAME} characters, e.g. 'Hopital Saint-Louis'"
            )
        check_printable(name, "name", "'Hopital Saint-Louis'", UNPRINTABLE_CATEGORIES | {"Cs"})
        check_time_zone(time_zone)
        with self._lock:
            self.forget()
            if any(s.id == site_id for s in self.list()):
                raise SiteExistsError(
                    f"site {site_id!r} exists already (see 'cart-course sites list'); a site id "
                    "is never reused"
                )
            at = _now()
            self._db._execute(
                self._db._sql(
                    f"INSERT INTO cart_course_sites ({_COLUMNS}) VALUES (?,?,?,?,?,?,?,?,?)"
                ),
                (site_id, name, time_zone, 1, at, created_by, None, None, None),
            )
            self._log(site_id, at, created_by, "added", f"{name} ({time_zone})")
            self.forget()
        return self.get(site_id)

    def deactivate(self, site_id: str, *, by: str | None, reason: str | None = None) -> Site:
        """Close a site to new patients (idempotent: the first deactivation is kept)."""
        site = self.get(site_id)
        if not site.active:
            return site
        with self._lock:
            at = _now()
            self._db._execute(
                self._db._sql(
                    "UPDATE cart_course_sites SET active = 0, deactivated_at = ?, "
                    "deactivated_by = ?, deactivation_reason = ? WHERE id = ? AND active = 1"
                ),
                (at, by, reason, site_id),
            )
            self._log(site_id, at, by, "deactivated", reason or "")
            self.forget()
        return self.get(site_id)

    def _log(self, site_id: str, at: str, actor: str | None, change: str, detail: str) -> None:
        self._db._execute(
            self._db._sql(
                "INSERT INTO cart_course_site_changes (site_id, at, actor, change, detail) "
                "VALUES (?,?,?,?,?)"
            ),
            (site_id, at, actor, change, detail),
        )


class _HasSites(Protocol):
    sites: SiteStore

    def close(self) -> None: ...


class LazySites:
    """The sites of a token store opened on first use (a service that never screens opens
    nothing); ``owned``: the store is this object's to close."""

    def __init__(self, opener: Callable[[], _HasSites], *, owned: bool = False) -> None:
        self._opener = opener
        self._owner: _HasSites | None = None
        self._owned = owned
        self._lock = threading.Lock()

    def store(self) -> SiteStore:
        with self._lock:
            if self._owner is None:
                self._owner = self._opener()
            return self._owner.sites

    def check_active(self, site: str | None, field: str = "payload.site") -> str | None:
        return self.store().check_active(site, field)

    def close(self) -> None:
        with self._lock:
            if self._owner is not None and self._owned:
                self._owner.close()
            self._owner = None
