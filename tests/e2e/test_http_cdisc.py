"""CDISC exports over HTTP (issue 19): the SDTM zip and the ODM file, for auditors only."""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

from http_support import stack
from litestar.testing import TestClient

from cart_course.exports.checks import check_dir, validate_xml


def test_auditors_get_the_sdtm_zip_and_the_odm_file_others_are_refused(tmp_path: Path) -> None:
    with stack(demo=6) as s, TestClient(s.app) as client:
        got = client.get("/v1/exports/sdtm.zip?format=dataset-json", headers=s.auth("auditor"))
        assert got.status_code == 200, got.text
        assert got.headers["content-type"].startswith("application/zip")
        with zipfile.ZipFile(io.BytesIO(got.content)) as archive:
            names = set(archive.namelist())
            archive.extractall(tmp_path)
        assert {"dm.json", "ex.json", "define.xml", "define.html"} <= names
        assert [f.line() for f in check_dir(tmp_path)] == []
        odm = client.get("/v1/exports/odm.xml", headers=s.auth("auditor"))
        assert odm.status_code == 200
        (tmp_path / "odm.xml").write_bytes(odm.content)
        assert validate_xml(tmp_path / "odm.xml", "odm") == []
        assert odm.headers["x-data-cutoff"] == got.headers["x-data-cutoff"]
        for role in ("clinician", "monitor"):
            refused = client.get("/v1/exports/sdtm.zip", headers=s.auth(role))
            assert refused.status_code == 403, role
        early = client.get(
            "/v1/exports/odm.xml?as_of=2001-01-01T00:00:00Z", headers=s.auth("auditor")
        )
        assert early.status_code == 422
        assert "before the first event" in early.text
        bad = client.get("/v1/exports/sdtm.zip?format=sas", headers=s.auth("auditor"))
        assert bad.status_code == 422  # a bad query parameter, as on every route
