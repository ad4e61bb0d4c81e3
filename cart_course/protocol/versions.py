"""Protocol versions: the machine and its parameters under a version identifier.

An amendment is a new :class:`ProtocolVersion` registered under a new identifier; an existing
version is never changed (its parameters are frozen and the registry refuses re-registration).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from types import MappingProxyType
from typing import Any

import attrs
from transitions import Machine

from .machine import (
    DryRun,
    Probe,
    allowed_moves,
    allowed_moves_by,
    build_machine,
    dry_run,
    dry_run_probe,
)
from .parameters import DEFAULT_PARAMETERS, ProtocolParameters


@attrs.frozen(kw_only=True)
class ProtocolVersion:
    id: str
    title: str
    effective: str  # ISO date the version takes effect
    params: ProtocolParameters
    machine: Machine = attrs.field(eq=False, repr=False)

    def dry_run(
        self, state: str, trigger: str, facts: Mapping[str, Any], *, hypothetical: bool = False
    ) -> DryRun:
        return dry_run(self.machine, self.params, state, trigger, facts, hypothetical=hypothetical)

    def dry_run_on(self, probe: Probe, trigger: str) -> DryRun:
        """:meth:`dry_run` on a probe made with this version's parameters (its cache is kept)."""
        return dry_run_probe(self.machine, probe, trigger)

    def allowed_moves(self, state: str, context: Mapping[str, Any]) -> list[str]:
        return allowed_moves(self.machine, self.params, state, context)

    def allowed_moves_by(
        self, state: str, facts_of: Callable[[str], Mapping[str, Any]]
    ) -> list[str]:
        """The moves allowed now, each judged on its own facts (``facts_of(trigger)``)."""
        return allowed_moves_by(self.machine, self.params, state, facts_of)

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "title": self.title,
            "effective": self.effective,
            "parameters": self.params.to_json(),
        }


def make_version(
    id: str, title: str, effective: str, params: ProtocolParameters = DEFAULT_PARAMETERS
) -> ProtocolVersion:
    return ProtocolVersion(
        id=id, title=title, effective=effective, params=params, machine=build_machine()
    )


_REGISTRY: dict[str, ProtocolVersion] = {}
VERSIONS: Mapping[str, ProtocolVersion] = MappingProxyType(_REGISTRY)


class UnknownProtocolVersionError(KeyError):
    def __init__(self, version: str) -> None:
        self.version = version
        super().__init__(f"unknown protocol version {version!r}; known: {', '.join(VERSIONS)}")

    def __str__(self) -> str:
        return str(self.args[0])


def register(version: ProtocolVersion) -> ProtocolVersion:
    if version.id in _REGISTRY:
        raise ValueError(f"protocol version {version.id!r} exists and is never changed")
    _REGISTRY[version.id] = version
    return version


def get_version(version_id: str) -> ProtocolVersion:
    try:
        return VERSIONS[version_id]
    except KeyError:
        raise UnknownProtocolVersionError(version_id) from None


V1 = register(
    make_version(
        "1.0",
        "NCT03599375 as registered: CD19 CAR-T, 1e6 cells/kg over D1 10 % / D2 30 % / D3 60 %",
        "2018-07-01",
    )
)
#: Amendment 1 (issue 20): the pre-infusion observations are required before D2 and D3 (under
#: 1.0 they are optional and the gate judges them when they are sent). Records made under 1.0
#: keep their version; ``audit conformance --protocol 1.1`` lists the fractions it would refuse.
V1_1 = register(
    make_version(
        "1.1",
        "Amendment 1: the pre-infusion observations (temperature, room-air SpO2, vasopressors, "
        "infection) are required before D2 and D3",
        "2026-12-01",
        attrs.evolve(DEFAULT_PARAMETERS, pre_infusion_required_days=(2, 3)),
    )
)
#: The version new records are made under unless the operator chooses another
#: (``--protocol`` / ``CART_COURSE_PROTOCOL_VERSION``, read in ``bootstrap.Settings``).
CURRENT: ProtocolVersion = V1
