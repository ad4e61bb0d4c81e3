"""``serve --demo``: fresh random demo tokens per run (printed), never the well-known ones, and no
demo tokens at all on a store that holds data and tokens no demo run issued (issue 14 item 8)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from server_support import printed_tokens

from cart_course.cli import cli
from cart_course.tokens import ROLES, WELL_KNOWN_DEMO_TOKENS


@pytest.fixture(autouse=True)
def no_server(monkeypatch: pytest.MonkeyPatch) -> None:
    import uvicorn

    monkeypatch.setattr(uvicorn, "run", lambda *a, **k: None)


def serve(db: Path, *args: str) -> str:
    r = CliRunner().invoke(cli, ["serve", *args], env={"CART_COURSE_DB": str(db)})
    assert r.exit_code == 0, r.output
    return r.output


def tokens_of(db: Path) -> Any:
    from cart_course.bootstrap import Settings, build_tokens

    return build_tokens(Settings.for_store(str(db)))


def test_each_demo_run_prints_fresh_random_tokens_and_revokes_the_last_ones(tmp_path: Path) -> None:
    db = tmp_path / "demo.sqlite"
    first = printed_tokens(serve(db, "--demo"))
    assert set(first) == {"admin", "clinician", "monitor", "auditor", "service", "data_manager"}
    assert not set(first.values()) & set(WELL_KNOWN_DEMO_TOKENS)
    second = printed_tokens(serve(db, "--demo"))
    assert set(second) == set(first) and not set(second.values()) & set(first.values())
    store = tokens_of(db)
    assert all(store.authenticate(t) is None for t in first.values())
    assert all(store.authenticate(t) is not None for t in second.values())


def test_the_well_known_tokens_of_earlier_releases_are_revoked_at_serve(tmp_path: Path) -> None:
    db = tmp_path / "old.sqlite"
    serve(db, "--demo")
    store = tokens_of(db)
    store.add(
        "demo.admin", "admin", name="demo admin", created_by="make run", token="demo-admin-token"
    )
    assert store.authenticate("demo-admin-token") is not None
    out = serve(db)
    assert "revoked the well-known demo token" in out
    assert tokens_of(db).authenticate("demo-admin-token") is None


def test_no_demo_tokens_on_a_store_with_real_data(tmp_path: Path) -> None:
    db = tmp_path / "real.sqlite"
    serve(db, "--demo")
    tokens_of(db).add("dr.lee", "clinician", name="Dr. Lee", created_by="admin")
    out = serve(db, "--demo")
    assert printed_tokens(out) == {}
    assert "no demo tokens issued" in out
    demo = [i for i in tokens_of(db).list() if i.created_by == "serve --demo"]
    assert len(demo) == len(ROLES)  # the first run's only: none issued since
