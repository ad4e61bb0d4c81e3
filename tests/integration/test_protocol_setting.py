"""Issue 20: the protocol version new moves are recorded under is a setting
(``CART_COURSE_PROTOCOL_VERSION`` / ``--protocol``); an unknown version is refused naming the known
ones; events recorded before keep the version they were made under (docs/protocol.md: an
amendment tightens the rule for new moves, each event conforms under its own version)."""

from __future__ import annotations

import datetime as dt
import json
import random
from pathlib import Path
from typing import Any

import pytest

from cart_course.audit import patient_events
from cart_course.audit.conformance import check_history
from cart_course.bootstrap import Settings, build_service, export_store
from cart_course.cli import main
from cart_course.contract import parse_command
from cart_course.demo import _Patient, pre_infusion
from cart_course.errors import StoreError
from cart_course.protocol.versions import CURRENT, V1, V1_1


def test_the_setting_chooses_the_version_and_the_flag_wins() -> None:
    base = {"CART_COURSE_DB": "memory:"}
    assert Settings.from_env(environ=base).protocol is CURRENT is V1
    amended = {**base, "CART_COURSE_PROTOCOL_VERSION": "1.1"}
    assert Settings.from_env(environ=amended).protocol is V1_1
    assert Settings.from_env(environ=amended, protocol="1.0").protocol is V1


@pytest.mark.parametrize(
    ("environ", "flag", "named"),
    [
        ({"CART_COURSE_PROTOCOL_VERSION": "2.0"}, None, "CART_COURSE_PROTOCOL_VERSION"),
        ({}, "1.2", "--protocol"),
    ],
)
def test_an_unknown_version_is_refused_with_the_known_ones(
    environ: dict[str, str], flag: str | None, named: str
) -> None:
    with pytest.raises(StoreError) as caught:
        Settings.from_env(environ={"CART_COURSE_DB": "memory:", **environ}, protocol=flag)
    message = str(caught.value)
    assert message.startswith(f"{named}: ")
    assert "is not a protocol version; known: 1.0, 1.1" in message


Run = tuple[int, str, str]


@pytest.fixture
def run(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> Any:
    """``cart-course ARGS`` with ``CART_COURSE_PROTOCOL_VERSION`` set to ``version`` (or unset):
    (exit status, stdout, stderr)."""

    def invoke(*args: str, version: str | None = None) -> Run:
        if version is None:
            monkeypatch.delenv("CART_COURSE_PROTOCOL_VERSION", raising=False)
        else:
            monkeypatch.setenv("CART_COURSE_PROTOCOL_VERSION", version)
        with pytest.raises(SystemExit) as exited:
            main(list(args))
        out = capsys.readouterr()
        code = exited.value.code
        return (code if isinstance(code, int) else 1, out.out, out.err)

    return invoke


def test_the_cli_refuses_an_unknown_version_and_records_nothing(tmp_path: Path, run: Any) -> None:
    db = str(tmp_path / "s.sqlite")
    p = _Patient("A-1", dt.datetime(2026, 6, 1, 8, tzinfo=dt.UTC), random.Random(3))
    p.screen()
    envelope = json.dumps(p.commands[0])
    code, _, err = run("--db", db, "--protocol", "9", "record", envelope)
    assert code != 0
    assert "--protocol: '9' is not a protocol version; known: 1.0, 1.1" in err
    code, _, err = run("--db", db, "record", envelope, version="1.x")
    assert code != 0
    assert "CART_COURSE_PROTOCOL_VERSION: '1.x' is not a protocol version; known: 1.0, 1.1" in err
    service = build_service(Settings.for_store(db))
    try:
        assert list(service.patient_ids()) == []
    finally:
        service.close()


def test_a_patient_started_under_1_0_keeps_1_0_events_when_the_service_runs_1_1(
    tmp_path: Path, run: Any
) -> None:
    """D1 recorded under 1.0; the operator switches to 1.1 (the setting): D2 without the
    observations is refused by the amendment, with them it is recorded under 1.1; D1 stays 1.0
    and every event conforms under its own version."""
    db = str(tmp_path / "s.sqlite")
    p = _Patient("A-1", dt.datetime(2026, 6, 1, 8, tzinfo=dt.UTC), random.Random(3))
    p.screen()
    p.apheresis()
    p.infusion(1, days=14)
    for command in p.commands:  # no setting: the current version, 1.0
        code, out, err = run("--db", db, "record", json.dumps(command))
        assert code == 0, err
    p.infusion(2)
    d2 = json.dumps(p.commands[-1])
    code, out, err = run("--db", db, "record", "--json", d2, version="1.1")
    assert code == 1, err
    assert [r["rule"] for r in json.loads(out)["failed_rules"]] == ["pre_infusion_criteria_met"]
    p.commands[-1]["payload"]["pre_infusion"] = pre_infusion(37.0)
    code, out, err = run("--db", db, "record", json.dumps(p.commands[-1]), version="1.1")
    assert code == 0, err
    service = build_service(Settings.for_store(db))
    try:
        events = patient_events(service.log, "A-1")
        versions = [
            (e.get("trigger"), e.get("protocol_version")) for e in events if e.get("trigger")
        ]
        assert versions[-2:] == [("infuse_d1", "1.0"), ("infuse_d2", "1.1")]
        assert all(v == "1.0" for _, v in versions[:-1])
        assert check_history("A-1", events).ok
        # a 1.0 service decides the next move under 1.0 again: D3 without observations passes
        p.infusion(3)
        result = service.execute(parse_command(p.commands[-1]))
        assert result.status == "recorded"
    finally:
        service.close()


def test_serve_hands_the_version_to_its_workers(monkeypatch: pytest.MonkeyPatch) -> None:
    """``serve`` exports the settings; each worker (``bootstrap.http_app``) reads them back."""
    # set through monkeypatch first, so that what export_store writes is undone afterwards
    monkeypatch.setenv("CART_COURSE_PROTOCOL_VERSION", "1.0")
    monkeypatch.setenv("CART_COURSE_DB", "memory:")
    export_store(Settings.from_env(protocol="1.1"))
    assert Settings.from_env().protocol is V1_1


def test_the_protocol_commands_default_to_the_configured_version(run: Any) -> None:
    """``cart-course protocol ...`` (no store) applies the version the setting names, unless
    ``--version`` names another."""
    code, out, _ = run("--protocol", "1.1", "protocol", "show")
    assert code == 0 and out.startswith("Protocol version 1.1:")
    code, out, _ = run("protocol", "show", version="1.1")
    assert code == 0 and out.startswith("Protocol version 1.1:")
    code, out, _ = run("--protocol", "1.1", "protocol", "show", "--version", "1.0")
    assert code == 0 and out.startswith("Protocol version 1.0:")
    code, out, _ = run("protocol", "show")
    assert code == 0 and out.startswith("Protocol version 1.0:")
