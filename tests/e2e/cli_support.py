"""The CLI in real processes, and the stores of the previous release (checked-in fixtures)
copied for a test."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

CLI = [sys.executable, "-m", "cart_course"]
FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
#: The stores the previous release wrote: kind -> (store file, its cipher key's file or None).
PREVIOUS_STORES: dict[str, tuple[str, str | None]] = {
    "plain": ("store-2026-11-25.sqlite", None),
    "encrypted": ("store-2026-11-25-encrypted.sqlite", "store-2026-11-25-encrypted.key"),
}
#: A new patient's screening recorded into a previous release's store (recorded or refused).
NEW_SCREENING: dict[str, Any] = {
    "command": "screen",
    "patient_id": "P-NEW-1",
    "occurred_at": "2026-11-20T09:30:00+01:00",
    "actor": {"id": "dr.lee", "role": "clinician"},
    "idempotency_key": "screen-P-NEW-1",
    "payload": {"screening": {"kps": 70}},
}


def run(
    db: Path, *args: str, stdin: str | None = None, **env: str
) -> subprocess.CompletedProcess[str]:
    """``cart-course --db DB ARGS`` in its own process; its environment holds no
    ``CART_COURSE_`` variable but those of ``env``."""
    environ = {k: v for k, v in os.environ.items() if not k.startswith("CART_COURSE_")}
    environ.update(env)
    return subprocess.run(
        [*CLI, "--db", str(db), *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=300,
        env=environ,
    )


def previous_store(tmp_path: Path, kind: str) -> tuple[Path, str | None]:
    """A copy of the previous release's store of ``kind`` in ``tmp_path``, and its cipher key."""
    name, key_file = PREVIOUS_STORES[kind]
    db = tmp_path / name
    shutil.copy(FIXTURES / name, db)
    return db, (FIXTURES / key_file).read_text().strip() if key_file else None
