"""The commands as data and as Markdown, derived from a command registry (default: the real one).

``describe_commands`` is what ``cart-course protocol commands --json`` prints (with each payload's
JSON Schema, added by the CLI from ``schemas.py``); ``commands_markdown`` renders the command
tables of ``docs/commands.md``, between the markers :data:`BEGIN` and :data:`END`
(``update_commands_doc`` rewrites them; a test fails when the page is stale).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from .machine import RULES
from .registry import REGISTRY, CommandDef, Registry

#: How to regenerate the tables of ``docs/commands.md``.
REGENERATE = "cart-course protocol commands --write docs/commands.md"
BEGIN = (
    "<!-- BEGIN GENERATED: command tables, from cart_course/protocol/registry.py; do not edit. "
    f"Regenerate with: {REGENERATE} -->"
)
END = "<!-- END GENERATED: command tables -->"

_REASON_WORDS = {
    "always": "required",
    "never": "optional",
    "when the rules say so": "when the rules say so",
}


def _names(value: Any) -> list[str]:
    return [str(v) for v in value] if isinstance(value, list | tuple) else [str(value)]


def _move_rows(registry: Registry, trigger: str) -> list[dict[str, Any]]:
    rows = []
    for t in registry.transitions_of(trigger):
        dest = str(t["dest"])
        rules = [
            {"rule": name, "holds": True, "requires": _requires(name)}
            for name in t.get("conditions", ())
        ] + [
            {"rule": name, "holds": False, "requires": _requires(name)}
            for name in t.get("unless", ())
        ]
        rows.append(
            {
                "trigger": trigger,
                "source": _names(t["source"]),
                "dest": "(unchanged)" if dest == "=" else dest,
                "rules": rules,
            }
        )
    return rows


def _requires(rule: str) -> str:
    found = RULES.get(rule)
    return found.requires if found is not None else ""


def describe_command(definition: CommandDef, registry: Registry = REGISTRY) -> dict[str, Any]:
    """One command as data: what it records, its payload keys, reason policy, event, moves (each
    transition with the rules it checks) and what may be corrected."""
    d = definition
    return {
        "name": d.name,
        "summary": d.summary,
        "kind": d.kind,
        "roles": list(d.roles),
        "payload": {"required": list(d.required), "optional": list(d.optional)},
        "reason": d.reason,
        "event": d.event,
        "moves": [row for trigger in d.triggers for row in _move_rows(registry, trigger)],
        "correctable": [*d.correctable, "occurred_at"] if d.correctable else [],
        "clinical_time": "may precede the last move" if d.episode else "after the last move",
        "examples": [dict(e) for e in d.examples],
    }


def describe_commands(registry: Registry = REGISTRY) -> list[dict[str, Any]]:
    """Every command of ``registry`` as data, in the contract's order."""
    return [describe_command(d, registry) for d in registry]


def _code(names: list[str] | tuple[str, ...]) -> str:
    return ", ".join(f"`{n}`" for n in names) or "-"


def _payload_cell(d: Mapping[str, Any]) -> str:
    required, optional = d["payload"]["required"], d["payload"]["optional"]
    if not required and not optional:
        return "none"
    parts = []
    if required:
        parts.append(_code(required))
    if optional:
        parts.append("optional " + _code(optional))
    return "; ".join(parts)


def commands_markdown(registry: Registry = REGISTRY) -> str:
    """The command tables of ``docs/commands.md`` (without the markers)."""
    described = describe_commands(registry)
    lines = [
        "| command | what it records | payload | reason | event | correctable |",
        "|---|---|---|---|---|---|",
    ]
    for d in described:
        lines.append(
            f"| `{d['name']}` | {d['summary']} | {_payload_cell(d)} | "
            f"{_REASON_WORDS[d['reason']]} | `{d['event']}` | {_code(d['correctable'])} |"
        )
    lines += [
        "",
        "The moves each command makes (the rules of [state-machine.md](state-machine.md); "
        "`!rule`: taken when the rule does not hold):",
        "",
        "| command | move | from | to | rules |",
        "|---|---|---|---|---|",
    ]
    for d in described:
        for m in d["moves"]:
            rules = [("" if r["holds"] else "!") + r["rule"] for r in m["rules"]]
            lines.append(
                f"| `{d['name']}` | `{m['trigger']}` | {_code(m['source'])} | "
                f"{m['dest'] if m['dest'] == '(unchanged)' else '`' + m['dest'] + '`'} | "
                f"{_code(rules)} |"
            )
    return "\n".join(lines) + "\n"


def update_commands_doc(text: str, registry: Registry = REGISTRY) -> str:
    """``text`` (``docs/commands.md``) with the tables between :data:`BEGIN` and :data:`END`
    generated again (raises ValueError when the markers are missing)."""
    start = text.find(BEGIN)
    end = text.find(END)
    if start < 0 or end < start:
        raise ValueError(f"the page has no generated command tables ({BEGIN!r} ... {END!r})")
    return text[: start + len(BEGIN)] + "\n\n" + commands_markdown(registry) + "\n" + text[end:]
