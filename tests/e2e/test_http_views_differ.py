"""Once a check found view rows that differ from the log, the board never serves them silently:
503 naming the patients until ``views rebuild`` (issue 14 item 6)."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

from http_support import stack
from litestar.testing import TestClient

from cart_course.ledger.views import compare_views
from cart_course.storage import parse_store_url
from cart_course.views.runner import Views


def test_the_board_refuses_rows_a_check_found_edited_until_rebuilt(tmp_path: Path) -> None:
    db = str(tmp_path / "views.sqlite")
    with stack(db, demo=6) as s, TestClient(s.app) as client:
        board = client.get("/v1/board", headers=s.auth("monitor"))
        assert board.status_code == 200
        conn = sqlite3.connect(db)
        with conn:
            pid = conn.execute("SELECT MIN(patient_id) FROM view_board").fetchone()[0]
            conn.execute("UPDATE view_board SET state = 'screened' WHERE patient_id = ?", (pid,))
        conn.close()
        # Unchecked, an edit is not known to the server (this is what the check is for).
        assert client.get("/v1/board", headers=s.auth("monitor")).status_code == 200
        _, problems = compare_views(s.service.log, parse_store_url(db))
        assert [p.patient_id for p in problems] == [pid]
        for path in ("/v1/board", "/v1/counts", "/v1/watchlist"):
            refused: Any = client.get(path, headers=s.auth("monitor"))
            assert refused.status_code == 503, (path, refused.text)
            problem = refused.json()
            assert problem["error"] == "views_differ" and pid in problem["detail"], problem
            assert "views rebuild" in problem["detail"]
        metrics = client.get("/metrics", headers=s.auth("monitor")).text
        assert "cart_course_views_differing 1" in metrics
        views = Views(s.service.log, parse_store_url(db))
        try:
            views.rebuild()
        finally:
            views.close()
        assert client.get("/v1/board", headers=s.auth("monitor")).status_code == 200
        assert compare_views(s.service.log, parse_store_url(db))[1] == []
