"""CDISC exports over HTTP, for auditors: the SDTM datasets as a zip, the ODM file (issue 19).

``GET /v1/exports/sdtm.zip?format=xpt|dataset-json&as_of=...`` and
``GET /v1/exports/odm.xml?as_of=...``; both are audit reads (the access log records them) and
the auditor role's only. A cut-off before the first event or in the future is a 422 problem.
"""

from __future__ import annotations

import io
import tempfile
import zipfile
from pathlib import Path
from typing import Annotated, Any

from litestar import Response, get
from litestar.di import NamedDependency
from litestar.params import QueryParameter

from ..contract import parse_time
from ..exports import source
from ..exports.odm import write_odm
from ..exports.sdtm import build
from ..exports.write import FORMATS, write_datasets
from ..service import CourseService
from .auth import AUDITORS
from .params import time_query
from .problems import problem_responses

Svc = NamedDependency[CourseService]
AUDIT = {"roles": AUDITORS, "audit": True}
AsOf = Annotated[
    str | None,
    time_query(
        "Data cut-off (RFC 3339): not before the first event was recorded, not in the future "
        "(default: now)"
    ),
]


def _cut(service: CourseService, as_of: str | None) -> source.Cut:
    when = parse_time(as_of, "query.as_of") if as_of is not None else None
    return source.read(service.log, when, field="query.as_of")


def _name(cut: source.Cut) -> str:
    return cut.cutoff[:19].replace(":", "").replace("-", "")


@get(
    "/v1/exports/sdtm.zip",
    opt=AUDIT,
    sync_to_thread=True,
    responses=problem_responses(),
    media_type="application/zip",
    summary="SDTM datasets with define.xml at a data cut-off (a zip)",
    tags=["exports"],
)
def export_sdtm_zip(
    service: Svc,
    as_of: AsOf = None,
    format: Annotated[str, QueryParameter(pattern="^(xpt|dataset-json)$")] = "xpt",
) -> Response[bytes]:
    """SDTMIG 3.4 datasets (SAS XPORT v5 or Dataset-JSON v1.1), define.xml 2.1, define.html
    and the export's findings, zipped; the same cut-off gives the same datasets."""
    assert format in FORMATS
    cut = _cut(service, as_of)
    data = build(cut)
    buffer = io.BytesIO()
    with tempfile.TemporaryDirectory() as tmp:
        files = write_datasets(data, Path(tmp), format)
        with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
            for path in files:
                archive.write(path, path.name)
    headers: dict[str, Any] = {
        "Content-Disposition": f'attachment; filename="sdtm-{_name(cut)}.zip"',
        "X-Data-Cutoff": cut.cutoff,
    }
    return Response(buffer.getvalue(), media_type="application/zip", headers=headers)


@get(
    "/v1/exports/odm.xml",
    opt=AUDIT,
    sync_to_thread=True,
    responses=problem_responses(),
    media_type="application/xml",
    summary="CDISC ODM 1.3.2 with the audit trail and signatures at a data cut-off",
    tags=["exports"],
)
def export_odm(service: Svc, as_of: AsOf = None) -> Response[bytes]:
    cut = _cut(service, as_of)
    with tempfile.TemporaryFile("w+", encoding="utf-8") as fh:
        write_odm(cut, fh)
        fh.seek(0)
        body = fh.read().encode("utf-8")
    headers = {
        "Content-Disposition": f'attachment; filename="odm-{_name(cut)}.xml"',
        "X-Data-Cutoff": cut.cutoff,
    }
    return Response(body, media_type="application/xml", headers=headers)


ROUTES = [export_sdtm_zip, export_odm]
