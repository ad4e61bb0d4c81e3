"""The protocol docs stay true: the diagram is current, and every test the docs cite exists."""

from __future__ import annotations

import re
from pathlib import Path

import attrs

from cart_course.protocol.diagram import REGENERATE, markdown
from cart_course.protocol.parameters import ProtocolParameters
from cart_course.protocol.versions import CURRENT

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs"
SEED = ROOT / "docs" / "trial" / "NCT03599375.txt"  # a verbatim copy of the trial text


def defined_tests() -> set[str]:
    names: set[str] = set()
    for path in (ROOT / "tests").rglob("test_*.py"):
        text = path.read_text(encoding="utf-8")
        names.update(re.findall(r"^\s*def (test_\w+)", text, re.M))
        names.update(re.findall(r"^(Test\w+)\s*=", text, re.M))
        names.update(re.findall(r"^class (Test\w+)", text, re.M))
    return names


def test_state_machine_page_is_generated_from_the_current_machine() -> None:
    page = (DOCS / "state-machine.md").read_text(encoding="utf-8")
    assert page == markdown(CURRENT), (
        f"docs/state-machine.md is stale: regenerate it with `{REGENERATE}` "
        "(or python -m cart_course protocol diagram --write docs/state-machine.md)"
    )


def test_state_machine_page_has_a_mermaid_block_with_every_state() -> None:
    page = (DOCS / "state-machine.md").read_text(encoding="utf-8")
    block = page.split("```mermaid\n", 1)[1].split("```", 1)[0]
    assert block.startswith("stateDiagram-v2\n")
    for state in ("screened", "screen_failed", "infused_d3", "continued", "died"):
        assert f" {state} " in block or f"--> {state}\n" in block


def test_every_test_cited_in_protocol_md_exists() -> None:
    text = (DOCS / "protocol.md").read_text(encoding="utf-8")
    cited = set(re.findall(r"`(test_\w+|Test\w+)`", text))
    cited |= set(re.findall(r"\b(test_[a-z0-9_]+)\b", text)) - {
        name for name in re.findall(r"\b(test_[a-z0-9_]+)\.py\b", text)
    }
    assert len(cited) > 50
    missing = sorted(cited - defined_tests())
    assert not missing, f"docs/protocol.md cites tests that do not exist: {missing}"


def test_every_protocol_parameter_is_documented() -> None:
    text = (DOCS / "protocol.md").read_text(encoding="utf-8")
    fields = [f.name for f in attrs.fields(ProtocolParameters)]
    missing = [name for name in fields if f"| `{name}` |" not in text]
    assert not missing, f"docs/protocol.md does not document parameters: {missing}"


def _normalise(text: str) -> str:
    return re.sub(r"\s+", " ", text).strip()


def test_every_sentence_of_the_trial_text_is_mapped() -> None:
    text = (DOCS / "protocol.md").read_text(encoding="utf-8")
    doc = _normalise(text)
    skipped = {
        "Eligibility Criteria",
        "Inclusion Criteria:",
        "Exclusion Criteria:",
        "About this trial",
    }
    missing = []
    for line in SEED.read_text(encoding="utf-8").splitlines():
        line = line.strip().lstrip("-.").strip()
        if not line or line in skipped:
            continue
        for sentence in re.split(r"(?<=[.])(?=[A-Z ])", line):
            words = _normalise(sentence).rstrip(".")
            if words and _normalise(words.replace(", ", ",")) not in doc.replace(", ", ","):
                missing.append(words)
    assert not missing, f"trial sentences not in docs/protocol.md: {missing}"
