"""Free text (a ``reason``, a payload's notes): printable, with line breaks and tabs allowed.

Refused: control characters other than line feed and tab (NUL, carriage return, escape, ...),
the line and paragraph separators U+2028/U+2029, and the bidirectional embeddings, overrides and
isolates (U+202A-U+202E, U+2066-U+2069, U+061C), which make a text display differently from what
was recorded ("Trojan Source"). Identifiers (actor ids, names) are stricter: see
:func:`cart_course.contract.check_printable`.
"""

from __future__ import annotations

import unicodedata

#: Bidirectional formatting characters that reorder what is shown.
BIDI_CONTROLS = frozenset("\u061c\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")
_ALLOWED_CONTROLS = frozenset("\n\t")


def free_text_problem(value: str) -> str | None:
    """Why ``value`` is not acceptable free text (naming the character and its position), or
    None when it is."""
    if value.isprintable():  # fast path: False for every C* and Z* character but " "
        return None
    for i, char in enumerate(value):  # (lone surrogates: refused as "not valid Unicode")
        category = unicodedata.category(char)
        if char in _ALLOWED_CONTROLS:
            continue
        if category in ("Cc", "Zl", "Zp") or char in BIDI_CONTROLS:
            what = {
                "Cc": "control character",
                "Zl": "line separator",
                "Zp": "paragraph separator",
            }.get(category, "bidirectional override")
            name = unicodedata.name(char, "")
            return (
                f"holds the {what} U+{ord(char):04X}{' (' + name + ')' if name else ''} at "
                f"position {i}; free text may hold printable characters, line feeds and tabs"
            )
    return None


#: The characters :func:`free_text_problem` refuses, as a regex character class body of
#: ``\uXXXX`` ranges (read alike by Python, Rust and ECMAScript): control characters but line
#: feed and tab, U+2028/U+2029, the bidirectional controls.
FREE_TEXT_REFUSED = r"\u0000-\u0008\u000B-\u001F\u007F-\u009F\u061C\u2028-\u202E\u2066-\u2069"
#: Free text as a JSON Schema pattern: not blank, nothing :func:`free_text_problem` refuses.
FREE_TEXT_PATTERN = f"^[^{FREE_TEXT_REFUSED}]*[^{FREE_TEXT_REFUSED}\\s][^{FREE_TEXT_REFUSED}]*$"
