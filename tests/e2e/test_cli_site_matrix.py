"""The CLI side of issue 17's acceptance matrix: every CLI command that reads or writes patient
data x a trial-wide and a site-limited token x own-site, other-site and unknown patients, on
SQLite (and one PostgreSQL case: the token store and the access log are the store's).

What it holds, for each cell (as ``test_http_site_matrix`` does over HTTP):

- a trial-wide token sees both sites' patients: for the other site's patient the command exits
  as for the own site's; a listing that shows the own site's patient shows the other's too;
- a site-limited token gets, for the other site's patient, exactly what it gets for a patient
  that does not exist (exit status, stdout and stderr with the id swapped): no existence leak;
- no output of a site-limited token (stdout, stderr, files it writes) carries the other site's
  patient id or stream id, unless the command named that id itself (then the answer is the
  not-on-record answer, which echoes what was asked);
- a role the command's HTTP route does not name, and a site-limited token on a command that
  reads the whole trial (the audit, the CDISC exports, the cohort report, the metrics), are
  refused (exit 1, ``forbidden``/``site_scope``) and nothing is shown;
- every run with a token is written to the audit-access log with the token's scope.

Run in-process (``cli.main``), so that the matrix's few hundred runs stay cheap.
"""

from __future__ import annotations

import datetime as dt
import itertools
import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from http_support import crs_report, screen_body
from test_cli_json_errors import invoke

from cart_course.bootstrap import Settings, System
from cart_course.course import stream_id

OWN, OTHER, NONE = "P-OWN1", "P-OTHR2", "P-NONE3"  # the same length: swapped, columns align
T0 = dt.datetime(2026, 3, 2, 9, 0, tzinfo=dt.UTC)
OPERATOR = {"id": "op.tester", "role": "clinician"}

Run = Callable[..., tuple[int, str, str]]


@pytest.fixture
def run(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> Run:
    """``run(*args, env=None)``: the CLI in this process; returns (exit status, stdout, stderr)."""

    def run_with(*args: str, env: dict[str, str] | None = None) -> tuple[int, str, str]:
        monkeypatch.delenv("CART_COURSE_TOKEN", raising=False)
        for name, value in (env or {}).items():
            monkeypatch.setenv(name, value)
        return invoke(capsys, monkeypatch, *args)

    return run_with


def _toxicity(pid: str, n: int) -> dict[str, Any]:
    return {
        "command": "report_toxicity",
        "patient_id": pid,
        "occurred_at": (T0 + dt.timedelta(days=4)).isoformat(),
        "idempotency_key": f"matrix-{n}",
        "payload": crs_report(),
    }


class Trial:
    """Two sites, a patient at each (screened, apheresis, a data query), and tokens."""

    def __init__(self, run: Run, db: str, tmp: Path) -> None:
        self.run = run
        self.db = db
        self.tmp = tmp
        self.counter = itertools.count(1)
        for site, name, zone in (("S01", "Paris", "Europe/Paris"), ("S02", "Tokyo", "Asia/Tokyo")):
            self.ok("sites", "add", site, name, zone)
        for pid, site in ((OWN, "S01"), (OTHER, "S02")):
            screen = screen_body(pid, actor=OPERATOR, occurred_at=T0.isoformat())
            screen["payload"] = {**screen["payload"], "site": site}  # type: ignore[dict-item]
            apheresis = {
                "command": "record_apheresis",
                "patient_id": pid,
                "occurred_at": (T0 + dt.timedelta(days=3)).isoformat(),
                "actor": OPERATOR,
                "payload": {"apheresis_contraindication": False, "collection_id": f"COL-{pid}"},
            }
            query = {
                "command": "open_query",
                "patient_id": pid,
                "occurred_at": (T0 + dt.timedelta(days=3, hours=1)).isoformat(),
                "actor": {"id": "cra.tester", "role": "monitor"},
                "payload": {"text": f"matrix: please check {pid}'s source"},
            }
            for body in (screen, apheresis, query):
                self.ok("record", json.dumps(body))
        #: (role, scope) -> a file holding the token
        self.token_files: dict[tuple[str, str], str] = {}
        for role, scope in (
            ("clinician", "trial"),
            ("monitor", "trial"),
            ("auditor", "trial"),
            ("clinician", "S01"),
            ("monitor", "S01"),
        ):
            extra = () if scope == "trial" else ("--site", scope)
            issued = json.loads(self.ok("tokens", "add", f"{role}.{scope}", role, *extra, "--json"))
            path = tmp / f"token-{role}-{scope}"
            path.write_text(issued["token"] + "\n", encoding="utf-8")
            path.chmod(0o600)
            self.token_files[(role, scope)] = str(path)
        self.secrets = (OTHER, str(stream_id(OTHER)))

    def ok(self, *args: str) -> str:
        status, out, err = self.run("--db", self.db, *args)
        assert status == 0, (args, out, err)
        return out

    def as_token(self, role: str, scope: str, *args: str) -> tuple[int, str, str]:
        return self.run("--db", self.db, *args, "--token-file", self.token_files[(role, scope)])

    def access_log(self) -> list[tuple[Any, ...]]:
        system = System(Settings.for_store(self.db))
        try:
            return [
                (e.actor, e.role, e.method, e.path, e.query, e.status, e.scope)
                for e in system.tokens.access_log(limit=100_000)
            ]
        finally:
            system.close()


#: A command's roles, as its HTTP route's: who is refused which command.
WRITE, READ, VIEW, AUDIT = "write", "read", "view", "audit"
#: Commands that read the whole trial: a site-limited token is refused them.
TRIAL_WIDE = "trial-wide"


def _role(kind: str, scope: str) -> str:
    """The role a cell uses: one the command allows (an auditor cannot be site-limited: the
    site-limited cells of the audit commands use a monitor, who is refused)."""
    if kind == WRITE:
        return "clinician"
    if kind == AUDIT and scope == "trial":
        return "auditor"
    return "monitor"


def _patient_commands(
    tmp: Path, n: Callable[[], int]
) -> list[tuple[str, Callable[[str], list[str]]]]:
    """(kind, target -> the command line) of each command that names a patient."""

    def ingest(pid: str) -> list[str]:
        path = tmp / f"ingest-{n()}.jsonl"
        path.write_text(json.dumps(_toxicity(pid, n())) + "\n", encoding="utf-8")
        return ["ingest", str(path), "--workers", "1"]

    return [
        (WRITE, lambda pid: ["record", json.dumps(_toxicity(pid, n()))]),
        (WRITE, ingest),
        (READ, lambda pid: ["show", pid]),
        (READ, lambda pid: ["show", pid, "--json"]),
        (READ, lambda pid: ["queries", "show", pid]),
        (VIEW, lambda pid: ["queries", "list", "--patient", pid]),
        (VIEW, lambda pid: ["views", "deviations", "--patient", pid]),
        (AUDIT, lambda pid: ["audit", "history", pid]),
        (AUDIT, lambda pid: ["audit", "history", pid, "--csv"]),
        (AUDIT, lambda pid: ["audit", "as-of", pid, "--version", "1"]),
        (AUDIT, lambda pid: ["audit", "conformance", pid]),
        (AUDIT, lambda pid: ["audit", "product", f"COL-{pid}"]),
        (AUDIT, lambda pid: ["audit", "export", "fhir", "--patient", pid]),
        (AUDIT, lambda pid: ["audit", "export", "csv", "--patient", pid]),
        (AUDIT, lambda pid: ["audit", "export", "jsonl", "--patient", pid]),
        (AUDIT, lambda pid: ["audit", "export", "html", "--patient", pid]),
    ]


def _trial_commands() -> list[tuple[str, bool, list[str]]]:
    """(kind, reads the whole trial, command line) of each command over many patients (OUT: a
    new path of each run's own)."""
    return [
        (READ, False, ["patients"]),
        (VIEW, False, ["status"]),
        (VIEW, False, ["status", "--json"]),
        (VIEW, False, ["status", "--sites"]),
        (VIEW, False, ["status", "--sites", "--json"]),
        (VIEW, False, ["status", "--site", "S01"]),
        (VIEW, False, ["status", "--state", "apheresed"]),
        (VIEW, False, ["status", "--overdue", "--now", "2026-12-01T00:00:00+00:00"]),
        (VIEW, False, ["status", "--toxicity"]),
        (VIEW, False, ["status", "--follow-up-due"]),
        (VIEW, False, ["status", "--sae"]),
        (VIEW, False, ["status", "--ae-grade", "1"]),
        (VIEW, False, ["status", "--product", "any"]),
        (VIEW, False, ["status", "--open-queries"]),
        (VIEW, False, ["watch", "--once", "--since", "0"]),
        (VIEW, False, ["views", "watchlist"]),
        (VIEW, False, ["views", "cohort", "--json"]),
        (VIEW, False, ["views", "deviations"]),
        (VIEW, False, ["queries", "list"]),
        (VIEW, False, ["queries", "list", "--json"]),
        (VIEW, True, ["report", "cohort", "--out", "OUT.html"]),
        ("metrics", True, ["views", "metrics"]),
        (AUDIT, True, ["audit", "conformance"]),
        (AUDIT, True, ["audit", "verify"]),
        (AUDIT, True, ["audit", "export", "jsonl"]),
        (AUDIT, True, ["audit", "export", "csv"]),
        (AUDIT, True, ["audit", "export", "fhir"]),
        (AUDIT, True, ["audit", "export", "html", "--out", "OUT"]),
        (AUDIT, True, ["export", "odm", "--out", "OUT.xml"]),
        (AUDIT, True, ["export", "sdtm", "--out", "OUT"]),
    ]


def _swapped(result: tuple[int, str, str], old: str) -> tuple[int, str, str]:
    status, out, err = result

    def norm(text: str) -> str:  # the ingest's timing varies from run to run
        return re.sub(r"\d+(\.\d+)? s\b", "N s", text.replace(old, "<PATIENT>"))

    return status, norm(out), norm(err)


def _read_all(path: Path) -> str:
    """What a command wrote at ``path`` (a file, or a directory of files), or nothing."""
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    return "".join(p.read_text("utf-8", "replace") for p in files if p.is_file())


def _refused(result: tuple[int, str, str]) -> bool:
    status, _out, err = result
    return status == 1 and ("may not use" in err or "reads the whole trial" in err)


def test_every_command_every_scope_on_sqlite(run: Run, tmp_path: Path) -> None:
    trial = Trial(run, str(tmp_path / "matrix.sqlite"), tmp_path)
    counter = itertools.count(1)

    def n() -> int:
        return next(counter)

    cells = 0
    for kind, line in _patient_commands(tmp_path, n):
        for scope in ("trial", "S01"):
            role = _role(kind, scope)
            got = {pid: trial.as_token(role, scope, *line(pid)) for pid in (OWN, OTHER, NONE)}
            cells += 3
            what = (line(OWN)[:3], role, scope)
            if kind == AUDIT and scope != "trial":  # the audit is the auditors' (trial-wide)
                assert all(_refused(r) for r in got.values()), (what, got)
            else:
                assert got[OWN][0] == 0, (what, got[OWN])
            if scope == "trial":
                assert got[OTHER][0] == got[OWN][0], (what, got[OTHER])
                continue
            # a site-limited token: the other site's patient is a patient not on record
            assert _swapped(got[OTHER], OTHER) == _swapped(got[NONE], NONE), (what, got)
            for pid in (OWN, NONE):
                leaked = [s for s in trial.secrets if s in got[pid][1] + got[pid][2]]
                assert not leaked, (what, pid, leaked, got[pid])
    for kind, trial_wide, template in _trial_commands():
        for scope in ("trial", "S01"):
            line = [a.replace("OUT", str(tmp_path / f"out-{n()}")) for a in template]
            role = "monitor" if kind == "metrics" else _role(kind, scope)
            status, out, err = trial.as_token(role, scope, *line)
            cells += 1
            what = (line, role, scope)
            if scope == "trial":
                assert status == 0, (what, out, err)
                if OWN in out and "--site" not in line:
                    assert OTHER in out, (what, out)  # trial-wide: every site's patients
                continue
            if trial_wide or kind == AUDIT:
                assert _refused((status, out, err)), (what, status, out, err)
                assert out == "" or '"error"' in out, (what, out)
            else:
                assert status == 0, (what, out, err)
            files = [Path(line[i + 1]) for i, a in enumerate(line) if a == "--out"]
            written = "".join(_read_all(f) for f in files)
            leaked = [s for s in trial.secrets if s in out + err + written]
            assert not leaked, (what, leaked, out, err)
    assert cells > 100
    # the board of a site-limited token lists its site's patient, never the other's
    board = json.loads(trial.as_token("monitor", "S01", "status", "--json")[1])
    assert [r["patient_id"] for r in board["patients"]] == [OWN]
    counts = json.loads(trial.as_token("monitor", "S01", "status", "--sites", "--json")[1])
    assert set(counts["sites"]) == {"S01"} and counts["sites"]["S01"]["patients"] == 1
    listed = json.loads(trial.as_token("monitor", "S01", "queries", "list", "--json")[1])
    assert {q["patient_id"] for q in listed["queries"]} == {OWN}
    # another site asked for by name: refused (as over HTTP), an unknown one: bad input
    status, _out, err = trial.as_token("monitor", "S01", "status", "--site", "S02")
    assert status == 1 and "may not read site 'S02'" in err and OTHER not in err
    status, _out, err = trial.as_token("monitor", "S01", "status", "--sites", "--site", "S02")
    assert status == 1 and OTHER not in err


def test_writes_as_the_token_and_within_its_sites(run: Run, tmp_path: Path) -> None:
    trial = Trial(run, str(tmp_path / "writes.sqlite"), tmp_path)
    # the envelope's actor is dropped: the token is the actor (as over HTTP)
    body = {**_toxicity(OWN, 1), "actor": {"id": "someone.else", "role": "service"}}
    status, _out, err = trial.as_token("clinician", "S01", "record", json.dumps(body))
    assert status == 0, err
    history = json.loads(trial.as_token("auditor", "trial", "audit", "history", OWN, "--json")[1])
    assert (history[-1]["actor"], history[-1]["role"]) == ("clinician.S01", "clinician")
    # a site-limited clinician cannot screen a patient at another site, nor ingest for one
    screen = screen_body("P-NEW44", occurred_at=T0.isoformat())
    screen["payload"] = {**screen["payload"], "site": "S02"}  # type: ignore[dict-item]
    status, _out, err = trial.as_token("clinician", "S01", "record", json.dumps(screen))
    assert status == 1 and "S01" in err
    lines = tmp_path / "mixed.jsonl"
    lines.write_text(
        "\n".join(json.dumps(_toxicity(pid, 10 + i)) for i, pid in enumerate((OWN, OTHER))) + "\n",
        encoding="utf-8",
    )
    status, out, err = trial.as_token(
        "clinician", "S01", "ingest", str(lines), "--workers", "2", "--json"
    )  # workers asked for: recorded in this process, by the service as the token sees it
    assert status == 1
    summary = json.loads(out[out.index("{") :])  # in-process, the report may share stdout
    assert (summary["recorded"], summary["rejected"]) == (1, 1)
    assert f"line 2: patient_not_found: no patient {OTHER!r} on record" in out + err
    # the role's permissions hold as on HTTP: a monitor may open a query, not report toxicity;
    # an auditor may not record at all
    status, _out, err = trial.as_token("monitor", "S01", "record", json.dumps(_toxicity(OWN, 20)))
    assert status == 1 and "monitor" in err, err
    status, _out, err = trial.as_token("auditor", "trial", "record", json.dumps(_toxicity(OWN, 21)))
    assert status == 1 and "role 'auditor' may not use 'cart-course record'" in err


def test_bad_tokens_and_the_operator(run: Run, tmp_path: Path) -> None:
    trial = Trial(run, str(tmp_path / "tokens.sqlite"), tmp_path)
    db = trial.db
    before = len(trial.access_log())
    # an unknown token: one clear line, exit 1, nothing done and nothing logged
    unknown = tmp_path / "unknown"
    unknown.write_text("cc_not-a-token\n", encoding="utf-8")
    unknown.chmod(0o600)
    status, out, err = run("--db", db, "show", OWN, "--token-file", str(unknown))
    assert (status, out) == (1, "") and err.strip() == "error: unknown or revoked token"
    status, out, err = run("--db", db, "show", OWN, env={"CART_COURSE_TOKEN": "cc_nope"})
    assert status == 1 and "unknown or revoked token" in err
    status, out, _err = run("--db", db, "show", OWN, "--json", env={"CART_COURSE_TOKEN": "cc_no"})
    assert status == 1 and json.loads(out)["error"] == "unauthenticated"
    # a revoked token: the same; the record is unchanged
    issued = json.loads(trial.ok("tokens", "add", "gone", "clinician", "--json"))
    trial.ok("tokens", "revoke", issued["info"]["id"])
    status, _out, err = run(
        "--db",
        db,
        "record",
        json.dumps(_toxicity(OWN, 1)),
        env={"CART_COURSE_TOKEN": issued["token"]},
    )
    assert status == 1 and "unknown or revoked token" in err
    assert "ToxicityReported" not in trial.ok("audit", "history", OWN)
    # a blank CART_COURSE_TOKEN is an error, not the operator
    status, _out, err = run("--db", db, "patients", env={"CART_COURSE_TOKEN": " "})
    assert status == 1 and "CART_COURSE_TOKEN is set but empty" in err
    # an unreadable or empty token file: bad input (2)
    status, _out, err = run("--db", db, "patients", "--token-file", str(tmp_path / "missing"))
    assert status == 2 and "--token-file" in err
    empty = tmp_path / "empty"
    empty.write_text("\n", encoding="utf-8")
    status, _out, err = run("--db", db, "patients", "--token-file", str(empty))
    assert status == 2 and "one token on one line" in err
    # a token file others may read: a warning, and it works
    loose = tmp_path / "loose"
    loose.write_text(Path(trial.token_files[("monitor", "S01")]).read_text(), encoding="utf-8")
    loose.chmod(0o644)
    status, out, err = run("--db", db, "patients", "--token-file", str(loose))
    assert status == 0 and "chmod 600" in err and OWN in out and OTHER not in out
    # CART_COURSE_TOKEN works like --token-file (which wins over it)
    limited = Path(trial.token_files[("monitor", "S01")]).read_text().strip()
    status, out, _err = run("--db", db, "patients", env={"CART_COURSE_TOKEN": limited})
    assert status == 0 and OWN in out and OTHER not in out
    wide = trial.token_files[("monitor", "trial")]
    status, out, _err = run(
        "--db", db, "patients", "--token-file", wide, env={"CART_COURSE_TOKEN": limited}
    )
    assert status == 0 and OTHER in out
    # a command that acts as the operator refuses to run under CART_COURSE_TOKEN
    for line in (["tokens", "list"], ["demo", "--patients", "1"], ["queries", "run-rules"]):
        status, out, err = run("--db", db, *line, env={"CART_COURSE_TOKEN": limited})
        assert status == 1 and "takes no token" in err and OTHER not in out + err, line
    # no token: the operator, on the whole trial
    out = trial.ok("patients")
    assert OWN in out and OTHER in out
    assert len(trial.access_log()) == before + 3  # the loose file's run, the env var's two


def test_the_access_log_records_the_cli_and_its_scope(run: Run, tmp_path: Path) -> None:
    trial = Trial(run, str(tmp_path / "log.sqlite"), tmp_path)
    before = len(trial.access_log())
    trial.as_token("monitor", "S01", "show", OWN)
    trial.as_token("monitor", "S01", "status", "--site", "S01", "--json")
    trial.as_token("monitor", "S01", "audit", "history", OWN)  # refused: logged as 403
    trial.as_token("auditor", "trial", "audit", "product", f"COL-{OTHER}")
    entries = trial.access_log()[before:]
    assert entries == [
        ("monitor.S01", "monitor", "CLI", "/cli/show", f"patient_id={OWN}", 200, "S01"),
        ("monitor.S01", "monitor", "CLI", "/cli/status", "json=true&site=S01", 200, "S01"),
        ("monitor.S01", "monitor", "CLI", "/cli/audit/history", f"patient_id={OWN}", 403, "S01"),
        ("auditor.trial", "auditor", "CLI", f"/cli/audit/product/COL-{OTHER}", "", 200, "trial"),
    ]


def test_a_site_limited_token_on_postgresql(run: Run, pg_url: str, tmp_path: Path) -> None:
    """The token store and the access log live in the store: on PostgreSQL as on SQLite."""
    trial = Trial(run, pg_url, tmp_path)
    own = trial.as_token("monitor", "S01", "show", OWN)
    assert own[0] == 0 and OWN in own[1]
    other = trial.as_token("monitor", "S01", "show", OTHER)
    none = trial.as_token("monitor", "S01", "show", NONE)
    assert other[0] == 1 and _swapped(other, OTHER) == _swapped(none, NONE)
    status, out, err = trial.as_token("monitor", "S01", "status", "--json")
    assert status == 0 and OTHER not in out + err
    assert [r["patient_id"] for r in json.loads(out)["patients"]] == [OWN]
    status, _out, err = trial.as_token("monitor", "S01", "audit", "verify")
    assert status == 1 and "may not use" in err
    assert [(e[0], e[3], e[5], e[6]) for e in trial.access_log()] == [
        ("monitor.S01", "/cli/show", 200, "S01"),
        ("monitor.S01", "/cli/show", 200, "S01"),
        ("monitor.S01", "/cli/show", 200, "S01"),
        ("monitor.S01", "/cli/status", 200, "S01"),
        ("monitor.S01", "/cli/audit/verify", 403, "S01"),
    ]


def test_patient_ids_in_the_access_log_are_pseudonymised_on_an_encrypted_store(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """As over HTTP: on an encrypted store the access log names a patient by its keyed
    pseudonym, never by its id."""
    from cart_course.cli import main
    from cart_course.storage import new_cipher_key

    key, db = new_cipher_key(), str(tmp_path / "encrypted.sqlite")
    monkeypatch.setenv("CART_COURSE_CIPHER_KEY", key)
    monkeypatch.setenv("CART_COURSE_DB", db)
    monkeypatch.delenv("CART_COURSE_TOKEN", raising=False)

    def cli(*args: str) -> str:
        capsys.readouterr()
        with pytest.raises(SystemExit) as exited:
            main(list(args))
        out, err = capsys.readouterr()
        assert exited.value.code == 0, err
        return out

    cli("sites", "add", "S01", "Paris", "Europe/Paris")
    screen = screen_body(OWN, actor=OPERATOR, occurred_at=T0.isoformat())
    screen["payload"] = {**screen["payload"], "site": "S01"}  # type: ignore[dict-item]
    cli("record", json.dumps(screen))
    token = tmp_path / "token"
    token.write_text(json.loads(cli("tokens", "add", "cra", "monitor", "--json"))["token"])
    token.chmod(0o600)
    assert OWN in cli("show", OWN, "--token-file", str(token))
    assert "0 query(ies)" in cli("queries", "list", "--patient", OWN, "--token-file", str(token))
    system = System(Settings.for_store(db, cipher_key=key))
    try:
        entries = system.tokens.access_log()
    finally:
        system.close()
    assert [(e.path, e.query.split("=")[0]) for e in entries] == [
        ("/cli/show", "patient_id"),
        ("/cli/queries/list", "patient"),
    ]
    assert not any(OWN in e.path + e.query for e in entries)
