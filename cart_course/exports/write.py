"""Writing the SDTM datasets: SAS XPORT v5 (``pyreadstat``) or Dataset-JSON v1.1, with
define.xml 2.1, define.html and the export's own findings (``export-findings.json``).

Every file is written from the cut-off alone (Dataset-JSON's creation date-time and define.xml's
are the cut-off), so the same cut-off writes the same files; XPT headers carry the time the file
was written (the format has no other field for it), their data does not.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from .define import define_html, define_xml
from .sdtm import Datasets, domain_of
from .source import STUDY_ID, ExportInputError

FORMATS = ("xpt", "dataset-json")
FINDINGS_FILE = "export-findings.json"
MDV_OID = "MDV.CART_COURSE.SDTMIG.3.4"

_JSON_TYPES = {"text": "string", "datetime": "datetime", "integer": "integer", "float": "double"}


def prepare_dir(out: Path, force: bool, field: str = "--out") -> None:
    """``out`` ready for writing: created, or refused when it exists and is not empty (unless
    ``force``: then the files of a previous export are replaced, nothing else is removed)."""
    if out.exists() and not out.is_dir():
        raise ExportInputError(field, f"{out} exists and is not a directory")
    if out.is_dir() and any(out.iterdir()) and not force:
        raise ExportInputError(
            field, f"{out} exists and is not empty: give --force to write into it"
        )
    out.mkdir(parents=True, exist_ok=True)


def write_datasets(data: Datasets, out: Path, fmt: str = "xpt") -> list[Path]:
    """Write every dataset (one file each), define.xml, define.html and the findings."""
    if fmt not in FORMATS:
        raise ExportInputError("--format", f"{fmt!r} is not one of {', '.join(FORMATS)}")
    written: list[Path] = []
    for name, rows in data.rows.items():
        if fmt == "xpt":
            path = out / f"{name.lower()}.xpt"
            write_xpt(name, rows, path)
        else:
            path = out / f"{name.lower()}.json"
            path.write_text(
                json.dumps(dataset_json(name, rows, data.cutoff), indent=1, ensure_ascii=True)
                + "\n",
                encoding="ascii",
            )
        written.append(path)
    leaf = {name: f"{name.lower()}.{'xpt' if fmt == 'xpt' else 'json'}" for name in data.rows}
    (out / "define.xml").write_bytes(define_xml(data, leaf, MDV_OID))
    (out / "define.html").write_text(define_html(data, leaf), encoding="utf-8")
    (out / FINDINGS_FILE).write_text(
        json.dumps([f.to_json() for f in data.findings], indent=1) + "\n", encoding="utf-8"
    )
    written += [out / "define.xml", out / "define.html", out / FINDINGS_FILE]
    return written


def write_xpt(name: str, rows: list[dict[str, Any]], path: Path) -> None:
    import pandas as pd
    import pyreadstat

    domain = domain_of(name)
    columns: dict[str, list[Any]] = {v.name: [] for v in domain.variables}
    for row in rows:
        for v in domain.variables:
            columns[v.name].append(row.get(v.name))
    frame: dict[str, Any] = {}
    for v in domain.variables:
        values = columns[v.name]
        if v.type == "Num":
            frame[v.name] = pd.Series(
                [float(x) if x is not None else None for x in values], dtype="float64"
            )
        else:
            frame[v.name] = pd.Series(["" if x is None else str(x) for x in values], dtype=object)
    df = pd.DataFrame(frame)
    pyreadstat.write_xport(
        df,
        str(path),
        file_label=domain.label[:40],
        column_labels=[v.label for v in domain.variables],
        table_name=name,
        file_format_version=5,
    )


def dataset_json(name: str, rows: list[dict[str, Any]], cutoff: str) -> dict[str, Any]:
    """A Dataset-JSON v1.1 document of one dataset."""
    domain = domain_of(name)
    columns = []
    for v in domain.variables:
        column: dict[str, Any] = {
            "itemOID": f"IT.{name}.{v.name}",
            "name": v.name,
            "label": v.label,
            "dataType": _JSON_TYPES[v.data_type],
        }
        if v.data_type == "text":
            column["length"] = max([len(str(r[v.name])) for r in rows if r.get(v.name)] or [1])
        if v.name in domain.keys:
            column["keySequence"] = domain.keys.index(v.name) + 1
        columns.append(column)
    return {
        "datasetJSONCreationDateTime": _local(cutoff),
        "datasetJSONVersion": "1.1.0",
        "fileOID": f"{STUDY_ID}.{name}",
        "dbLastModifiedDateTime": _local(cutoff),
        "originator": "cart-course",
        "sourceSystem": {"name": "cart-course", "version": "1"},
        "studyOID": STUDY_ID,
        "metaDataVersionOID": MDV_OID,
        "metaDataRef": "define.xml",
        "itemGroupOID": f"IG.{name}",
        "records": len(rows),
        "name": name,
        "label": domain.label,
        "columns": columns,
        "rows": [[row.get(v.name) for v in domain.variables] for row in rows],
    }


def _local(cutoff: str) -> str:
    """Dataset-JSON's date-times: ISO 8601 without an offset (the cut-off is UTC)."""
    return cutoff[:19]
