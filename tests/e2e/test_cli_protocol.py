"""``cart-course protocol ...``: what a user types and reads (no store is opened)."""

from __future__ import annotations

import json
import random
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from cart_course.cli import main
from cart_course.cli.protocol import commands_document
from cart_course.demo import assessment, crs, eligible_screening, icans
from cart_course.protocol import catalog
from cart_course.protocol.diagram import markdown, mermaid
from cart_course.protocol.registry import REGISTRY
from cart_course.protocol.versions import CURRENT


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as info:
        main(list(argv))
    out, err = capsys.readouterr()
    return int(info.value.code or 0), out, err


def write(tmp_path: Path, name: str, data: Any) -> str:
    path = tmp_path / name
    path.write_text(json.dumps(data), encoding="utf-8")
    return str(path)


def screening(**changes: Any) -> dict[str, Any]:
    data = eligible_screening(random.Random(2))
    data.update(changes)
    return data


def test_show_lists_version_states_moves_rules_and_parameters(
    capsys: pytest.CaptureFixture[str],
) -> None:
    code, out, _ = run(capsys, "protocol", "show")
    assert code == 0
    assert out.startswith("Protocol version 1.0: ")
    assert "  died  (terminal)" in out
    assert "  infuse_d1: apheresed, continued -> infused_d1" in out
    assert "when no_open_hold: no toxicity hold is open" in out
    assert "unless eligible:" in out
    assert "  dose_tolerance = 0.2" in out


def test_show_json_is_machine_readable(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "protocol", "show", "--version", "1.0", "--json")
    data = json.loads(out)
    assert code == 0 and data["id"] == "1.0"
    moves = {(m["trigger"], m["dest"]) for m in data["moves"]}
    assert ("continue_treatment", "continued") in moves
    cont = next(m for m in data["moves"] if m["trigger"] == "continue_treatment")
    assert cont["conditions"][0]["rule"] == "another_course_permitted"
    assert "PR: fewer than" in cont["conditions"][0]["requires"]
    assert data["parameters"]["fractions"] == [0.1, 0.3, 0.6]


def test_show_unknown_version_is_one_line_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(capsys, "protocol", "show", "--version", "0.9")
    assert code == 2 and out == ""
    assert err.strip() == "error: --version: '0.9' is not a protocol version; known: 1.0, 1.1"


def test_diagram_prints_mermaid_from_the_machine(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "protocol", "diagram")
    assert code == 0
    assert out == mermaid(CURRENT)
    assert out.startswith("stateDiagram-v2\n")
    assert "    candidate --> screen_failed : screen [!eligible]" in out
    assert "    assessed --> continued : continue_treatment [another_course_permitted]" in out
    assert "    died --> [*]" in out


def test_diagram_write_writes_the_docs_page(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    target = tmp_path / "state-machine.md"
    code, out, _ = run(capsys, "protocol", "diagram", "--write", str(target))
    assert code == 0 and out.strip() == f"wrote {target}"
    assert target.read_text(encoding="utf-8") == markdown(CURRENT)


def test_eligibility_verdict_with_reasons(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    path = write(tmp_path, "s.json", screening())
    code, out, _ = run(capsys, "protocol", "eligibility", path, "--date", "2026-01-05")
    assert code == 0
    assert out.splitlines()[0] == "ELIGIBLE on 2026-01-05 (protocol 1.0)"
    bad = write(tmp_path, "b.json", {"screening": screening(kps=80, spo2_room_air_pct=90)})
    code, out, _ = run(capsys, "protocol", "eligibility", bad, "--date", "2026-01-05")
    assert code == 1  # not eligible: exit 1, with or without --json
    assert out.splitlines()[0] == "NOT ELIGIBLE on 2026-01-05 (protocol 1.0)"
    assert "FAIL inclusion kps" in out and "needs KPS > 80" in out
    assert "FAIL inclusion spo2" in out


def test_eligibility_json_and_glucocorticoid_window_uses_the_date(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    path = write(tmp_path, "s.json", screening(last_systemic_glucocorticoid="2026-01-01"))
    code, out, _ = run(capsys, "protocol", "eligibility", path, "--date", "2026-01-05", "--json")
    data = json.loads(out)
    assert code == 1
    assert data["eligible"] is False and data["failed_criteria"] == ["systemic_glucocorticoid"]
    assert "failed" not in data  # one name for the failed criteria: as in a screening's outcome
    code, out, _ = run(capsys, "protocol", "eligibility", path, "--date", "2026-01-09", "--json")
    assert code == 0 and json.loads(out)["eligible"] is True


@pytest.mark.parametrize("as_json", [False, True], ids=["text", "json"])
def test_eligibility_exit_status_does_not_depend_on_json(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, as_json: bool
) -> None:
    flag = ["--json"] if as_json else []
    good = write(tmp_path, "s.json", screening())
    bad = write(tmp_path, "b.json", screening(kps=80))
    broken = write(tmp_path, "x.json", screening(kps="ninety"))
    codes = [
        run(capsys, "protocol", "eligibility", path, "--date", "2026-01-05", *flag)[0]
        for path in (good, bad, broken)
    ]
    assert codes == [0, 1, 2]


def test_eligibility_json_error_is_the_rejection_body_on_stdout(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    path = write(tmp_path, "s.json", screening(kps="ninety"))
    code, out, err = run(capsys, "protocol", "eligibility", path, "--json")
    assert code == 2
    body = json.loads(out)
    assert body["error"] == "invalid_command" and body["field"] == "kps"
    assert err.startswith("error: kps: ") and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--date", "05/01/2026"], "error: --date: '05/01/2026' is not a date; use YYYY-MM-DD"),
        ([], "error: kps: expected a whole number"),
    ],
)
def test_eligibility_bad_input_names_the_field(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, argv: list[str], message: str
) -> None:
    path = write(tmp_path, "s.json", screening(kps="ninety"))
    code, out, err = run(capsys, "protocol", "eligibility", path, *argv)
    assert code == 2 and out == ""
    assert err.startswith(message)
    assert len(err.strip().splitlines()) == 1


def test_input_that_is_not_json_or_missing_is_one_line(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    broken = tmp_path / "x.json"
    broken.write_text("{not json", encoding="utf-8")
    code, _, err = run(capsys, "protocol", "crs", str(broken))
    assert code == 2 and err.startswith("error: INPUT: not valid JSON (line 1, column 2)")
    code, _, err = run(capsys, "protocol", "icans", str(tmp_path / "nope.json"))
    assert code == 2 and err.startswith("error: INPUT: cannot read")
    code, _, err = run(capsys, "protocol", "response", write(tmp_path, "l.json", [1]))
    assert (
        code == 2 and err.strip() == "error: INPUT: must be a JSON object (a response assessment)"
    )


def test_crs_grades_observations_and_full_reports(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    obs = write(tmp_path, "o.json", crs(3)["observations"])
    code, out, _ = run(capsys, "protocol", "crs", obs)
    assert code == 0
    assert out.splitlines()[0] == "CRS grade 3 (ASTCT 2019)"
    assert "severe (grade >= 3): yes; holds the remaining fractions: yes" in out
    full = write(tmp_path, "r.json", crs(1))
    _, out, _ = run(capsys, "protocol", "crs", full, "--json")
    data = json.loads(out)
    assert (data["grade"], data["severe"], data["opens_hold"]) == (1, False, True)


def test_crs_regraded_under_ctcae(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    obs = {
        "temperature": {"value": 38.6, "unit": "C"},
        "hypotension": True,
        "vasopressors": 0,
        "oxygen": {"device": "none"},
    }
    path = write(tmp_path, "o.json", obs)
    _, astct, _ = run(capsys, "protocol", "crs", path, "--json")
    _, ctcae, _ = run(capsys, "protocol", "crs", path, "--scale", "CTCAE", "--json")
    assert json.loads(astct)["scale"] == "ASTCT"
    assert json.loads(ctcae)["scale"] == "CTCAE"
    assert json.loads(ctcae)["scale_version"] == "5.0"
    assert json.loads(astct)["grade"] == json.loads(ctcae)["grade"] == 2


def test_crs_refuses_an_icans_report(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    code, _, err = run(capsys, "protocol", "crs", write(tmp_path, "i.json", icans(2)))
    assert code == 2
    assert (
        err.strip()
        == "error: kind: is 'ICANS'; this command grades CRS (use protocol icans for the other)"
    )


def test_icans_grade(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    code, out, _ = run(
        capsys, "protocol", "icans", write(tmp_path, "i.json", icans(3)["observations"])
    )
    assert code == 0 and out.splitlines()[0] == "ICANS grade 3 (ASTCT 2019)"
    code, _, err = run(
        capsys,
        "protocol",
        "icans",
        write(tmp_path, "b.json", {**icans(1)["observations"], "ice_score": 11}),
    )
    assert code == 2 and err.startswith("error: observations.ice_score")


def test_response_classification_and_clinician_check(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    path = write(tmp_path, "a.json", {"assessment": assessment("PR")})
    code, out, _ = run(capsys, "protocol", "response", path)
    assert code == 0 and out.startswith("PR (MRD positive; progression: no;")
    code, out, err = run(capsys, "protocol", "response", path, "--clinician", "CR")
    assert code == 2
    assert "clinician response CR differs from the computed PR" in err
    code, out, _ = run(
        capsys,
        "protocol",
        "response",
        path,
        "--clinician",
        "CR",
        "--reason",
        "biopsy shows CR",
        "--json",
    )
    data = json.loads(out)
    assert code == 0 and data["category"] == "PR" and data["clinician_problems"] == []


def test_response_without_a_baseline(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    """A CR does not need the baseline (its progression flag is not evaluable); a PR-or-NR
    decision does: not evaluable, named, unless the clinician's response is given with a reason."""
    cr = {k: v for k, v in assessment("CR").items() if k != "baseline_marrow_blasts_pct"}
    code, out, _ = run(capsys, "protocol", "response", write(tmp_path, "cr.json", cr))
    assert code == 0 and out.startswith("CR (MRD ")
    assert "progression: not evaluable;" in out.splitlines()[0]
    pr = {k: v for k, v in assessment("PR").items() if k != "baseline_marrow_blasts_pct"}
    path = write(tmp_path, "pr.json", pr)
    code, _, err = run(capsys, "protocol", "response", path)
    assert code == 2 and err.startswith("error: baseline_marrow_blasts_pct: cannot classify")
    code, out, _ = run(
        capsys, "protocol", "response", path, "--clinician", "PR", "--reason", "outside marrow"
    )
    assert code == 0 and out.startswith("not evaluable (MRD ")


def test_stdin_input_through_the_installed_entry_point() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "cart_course", "protocol", "crs", "-", "--json"],
        input=json.dumps(crs(2)["observations"]),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["grade"] == 2
    proc = subprocess.run(
        [sys.executable, "-m", "cart_course", "protocol", "response", "-"],
        input='{"marrow_blasts_pct": 300}',
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 2
    assert proc.stderr.startswith("error: marrow_blasts_pct")
    assert "Traceback" not in proc.stderr


def test_protocol_commands_lists_every_command_from_the_registry(
    capsys: pytest.CaptureFixture[str],
) -> None:
    code, out, _ = run(capsys, "protocol", "commands")
    assert code == 0
    for definition in REGISTRY:
        assert f"{definition.name}: {definition.summary}" in out
    assert "    screen: candidate -> screen_failed unless eligible" in out
    assert "cancel_remaining_fractions: The course's remaining fractions" in out
    code, out, _ = run(capsys, "protocol", "commands", "--json")
    document = json.loads(out)
    assert code == 0 and document == json.loads(json.dumps(commands_document()))
    by_name = {c["name"]: c for c in document["commands"]}
    assert list(by_name) == list(REGISTRY.names)
    infusion = by_name["give_infusion"]
    assert infusion["reason"] == "never" and infusion["event"] == "InfusionGiven"
    assert [m["trigger"] for m in infusion["moves"]] == ["infuse_d1", "infuse_d2", "infuse_d3"]
    assert {k: infusion["moves"][0]["rules"][0][k] for k in ("rule", "holds")} == {
        "rule": "no_open_hold",
        "holds": True,
    }
    # cells, or the bag whose labelled count is the default (issue 15)
    assert infusion["payload_schema"]["required"] == ["day"]
    assert infusion["payload_schema"]["anyOf"] == [
        {"required": ["cells"]},
        {"required": ["bag_id"]},
    ]
    assert "day" not in infusion["correctable"] and "occurred_at" in infusion["correctable"]
    assert by_name["withdraw"]["reason"] == "always"
    assert "screening" in document["$defs"]
    code, out, _ = run(capsys, "protocol", "commands", "--markdown")
    assert code == 0 and out == catalog.commands_markdown()


def test_protocol_commands_write_regenerates_the_docs_tables(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    page = tmp_path / "commands.md"
    page.write_text(f"# Commands\n\n{catalog.BEGIN}\nstale\n{catalog.END}\n\nmore\n")
    code, out, _ = run(capsys, "protocol", "commands", "--write", str(page))
    assert code == 0 and out == f"wrote {page}\n"
    text = page.read_text()
    assert "stale" not in text and text.endswith(f"{catalog.END}\n\nmore\n")
    assert catalog.commands_markdown() in text
    page.write_text("no markers")
    code, out, err = run(capsys, "protocol", "commands", "--write", str(page), "--json")
    assert code == 2 and json.loads(out)["field"] == "--write"
    assert err.startswith("error: --write: the page has no generated command tables")


def test_record_help_shows_an_example_envelope_and_every_command(
    capsys: pytest.CaptureFixture[str],
) -> None:
    code, out, _ = run(capsys, "record", "--help")
    assert code == 0
    assert '"command": "record_apheresis"' in out and '"idempotency_key": "P-101-apheresis"' in out
    for definition in REGISTRY:
        assert f"  {definition.name} " in out
    assert "withdraw" in out and "[reason required]" in out
