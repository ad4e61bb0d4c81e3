"""Our own conformance checks of an SDTM export directory (``cart-course export check DIR``).

CDISC's open rules engine (CORE) needs Python 3.12 and a rules cache downloaded with a CDISC
Library key, so it cannot gate CI here; these checks cover what a reviewer looks at first:

==========  ==================================================================================
rule        what it checks
==========  ==================================================================================
REQ         every Required variable is present and never null; every Expected one is present
CT          coded values belong to their codelist (:mod:`.ct`): an error for a non-extensible
            one, a warning for a value of an extensible one not in the pinned subset
NAME        variable and dataset names <= 8 characters (A-Z, 0-9, starting with a letter)
LABEL       variable and dataset labels <= 40 characters
VALUE       character values <= 200 bytes, ASCII only
SEQ         --SEQ unique per subject in each dataset
DTC         --DTC variables are ISO 8601 date-times (YYYY[-MM[-DD[Thh:mm[:ss]]]])
DY          --DY equals the study day of its --DTC from DM.RFSTDTC (day 1, no day 0)
DM          every USUBJID of every dataset is in DM; DM has one record per subject
XSD         define.xml validates against the Define-XML 2.1 schema (``odmlib``'s copy)
DSJ         every Dataset-JSON file matches the Dataset-JSON v1.1 structure (:data:`DATASET_JSON_SCHEMA`)
==========  ==================================================================================

The export's own notes (``export-findings.json``: transliterated text, split long values) are
reported with them.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Final

import fastjsonschema

from .ct import CODELISTS
from .sdtm import Domain, Finding, domain_of, study_day

_NAME = re.compile(r"[A-Z][A-Z0-9]{0,7}")
_DTC = re.compile(
    r"\d{4}(-(0[1-9]|1[0-2])(-(0[1-9]|[12]\d|3[01])(T([01]\d|2[0-3]):[0-5]\d(:[0-5]\d(\.\d+)?)?)?)?)?"
)

#: The structure of a Dataset-JSON v1.1 file, transcribed from the CDISC Dataset-JSON v1.1
#: specification (its required top-level attributes, the column attributes and data types).
DATASET_JSON_SCHEMA: Final[dict[str, Any]] = {
    "type": "object",
    "required": [
        "datasetJSONCreationDateTime",
        "datasetJSONVersion",
        "records",
        "name",
        "label",
        "columns",
        "rows",
        "itemGroupOID",
    ],
    "properties": {
        "datasetJSONCreationDateTime": {
            "type": "string",
            "pattern": r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?$",
        },
        "datasetJSONVersion": {"type": "string", "pattern": r"^1\.1(\.\d+)?$"},
        "fileOID": {"type": "string"},
        "dbLastModifiedDateTime": {"type": "string"},
        "originator": {"type": "string"},
        "sourceSystem": {
            "type": "object",
            "required": ["name", "version"],
            "properties": {"name": {"type": "string"}, "version": {"type": "string"}},
        },
        "studyOID": {"type": "string"},
        "metaDataVersionOID": {"type": "string"},
        "metaDataRef": {"type": "string"},
        "itemGroupOID": {"type": "string"},
        "records": {"type": "integer", "minimum": 0},
        "name": {"type": "string"},
        "label": {"type": "string"},
        "columns": {
            "type": "array",
            "minItems": 1,
            "items": {
                "type": "object",
                "required": ["itemOID", "name", "label", "dataType"],
                "properties": {
                    "itemOID": {"type": "string"},
                    "name": {"type": "string"},
                    "label": {"type": "string"},
                    "dataType": {
                        "enum": [
                            "string",
                            "integer",
                            "decimal",
                            "float",
                            "double",
                            "boolean",
                            "datetime",
                            "date",
                            "time",
                            "URI",
                        ]
                    },
                    "targetDataType": {"enum": ["integer", "decimal"]},
                    "length": {"type": "integer", "minimum": 1},
                    "displayFormat": {"type": "string"},
                    "keySequence": {"type": "integer", "minimum": 1},
                },
                "additionalProperties": False,
            },
        },
        "rows": {"type": "array", "items": {"type": "array"}},
    },
}
_validate_dsj = fastjsonschema.compile(DATASET_JSON_SCHEMA)


def xsd_path(kind: str) -> Path:
    """The XSD ``odmlib`` ships: ``odm`` (ODM 1.3.2) or ``define`` (Define-XML 2.1)."""
    import odmlib

    base = Path(odmlib.__file__).parent / "schemas"
    if kind == "odm":
        return base / "odm" / "1.3.2" / "ODM1-3-2.xsd"
    return base / "define" / "2.1" / "define2-1-0.xsd"


def validate_xml(path: Path, kind: str, limit: int = 20) -> list[str]:
    """XSD errors of an ODM or define.xml file (empty: valid)."""
    import xmlschema

    schema = xmlschema.XMLSchema(str(xsd_path(kind)))
    errors = []
    for error in schema.iter_errors(str(path)):
        errors.append(f"{error.path}: {error.reason}")
        if len(errors) >= limit:
            break
    return errors


def read_dir(directory: Path) -> dict[str, list[dict[str, Any]]]:
    """The datasets of an export directory (``*.xpt`` or ``*.json``) as rows, by name."""
    datasets: dict[str, list[dict[str, Any]]] = {}
    for path in sorted(directory.glob("*.xpt")):
        import pyreadstat

        df, meta = pyreadstat.read_xport(str(path))
        rows = []
        for record in df.to_dict(orient="records"):
            rows.append({k: _clean(v) for k, v in record.items()})
        datasets[(meta.table_name or path.stem).upper()] = rows
    for path in sorted(directory.glob("*.json")):
        if path.name.startswith("export-"):
            continue
        doc = json.loads(path.read_text(encoding="utf-8"))
        names = [c["name"] for c in doc.get("columns", [])]
        datasets[str(doc.get("name", path.stem)).upper()] = [
            dict(zip(names, row, strict=False)) for row in doc.get("rows", [])
        ]
    return datasets


def _clean(value: Any) -> Any:
    if isinstance(value, float) and value != value:  # NaN: a missing numeric value
        return None
    if value == "":
        return None
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


def check_dir(directory: Path) -> list[Finding]:
    findings: list[Finding] = []
    datasets = read_dir(directory)
    if not datasets:
        return [Finding("error", "FILES", "", f"no *.xpt or *.json datasets in {directory}")]
    for path in sorted(directory.glob("*.json")):
        if path.name.startswith("export-"):
            continue
        try:
            _validate_dsj(json.loads(path.read_text(encoding="utf-8")))
        except fastjsonschema.JsonSchemaException as exc:
            findings.append(Finding("error", "DSJ", path.stem.upper(), str(exc)))
    define = directory / "define.xml"
    if define.exists():
        findings += [
            Finding("error", "XSD", "define.xml", e) for e in validate_xml(define, "define")
        ]
    else:
        findings.append(Finding("warning", "XSD", "define.xml", "no define.xml in the directory"))
    findings += check_datasets(datasets)
    notes = directory / "export-findings.json"
    if notes.exists():
        for item in json.loads(notes.read_text(encoding="utf-8")):
            findings.append(Finding(**item))
    return findings


def check_datasets(datasets: dict[str, list[dict[str, Any]]]) -> list[Finding]:
    findings: list[Finding] = []
    dm = datasets.get("DM", [])
    subjects: dict[str, dict[str, Any]] = {}
    for row in dm:
        uid = row.get("USUBJID")
        if uid in subjects:
            findings.append(Finding("error", "DM", "DM", "more than one DM record", uid))
        subjects[str(uid)] = row
    if "DM" not in datasets:
        findings.append(Finding("error", "DM", "DM", "no DM dataset"))
    for name, rows in datasets.items():
        try:
            domain = domain_of(name)
        except KeyError:
            findings.append(Finding("warning", "NAME", name, "not a dataset this export defines"))
            continue
        findings += list(_check(domain, rows, subjects))
    return findings


def _check(
    domain: Domain, rows: list[dict[str, Any]], subjects: dict[str, dict[str, Any]]
) -> Iterable[Finding]:
    name = domain.name
    if not _NAME.fullmatch(name):
        yield Finding("error", "NAME", name, "dataset name is not 1-8 characters A-Z 0-9")
    if len(domain.label) > 40:
        yield Finding("error", "LABEL", name, f"dataset label over 40 characters: {domain.label}")
    present = set(rows[0]) if rows else {v.name for v in domain.variables}
    for v in domain.variables:
        if not _NAME.fullmatch(v.name):
            yield Finding(
                "error", "NAME", name, "variable name is not 1-8 characters", None, v.name
            )
        if len(v.label) > 40:
            yield Finding(
                "error", "LABEL", name, f"label over 40 characters: {v.label}", None, v.name
            )
        if v.core in ("Req", "Exp") and v.name not in present:
            yield Finding("error", "REQ", name, f"{v.core} variable missing", None, v.name)
    seqs: set[tuple[str, Any]] = set()
    seq = f"{name}SEQ"
    for row in rows:
        uid = row.get("USUBJID")
        if uid is not None and name != "DM" and str(uid) not in subjects:
            yield Finding("error", "DM", name, "USUBJID not in DM", str(uid))
        if seq in row:
            key = (str(uid), row[seq])
            if key in seqs:
                yield Finding("error", "SEQ", name, f"{seq} {row[seq]} repeated", str(uid), seq)
            seqs.add(key)
        for v in domain.variables:
            value = row.get(v.name)
            if value is None:
                if v.core == "Req":
                    yield Finding(
                        "error", "REQ", name, "Required variable is null", str(uid), v.name
                    )
                continue
            if isinstance(value, str):
                if not value.isascii():
                    yield Finding(
                        "error", "VALUE", name, f"non-ASCII value {value!r}", str(uid), v.name
                    )
                if len(value.encode()) > 200:
                    yield Finding("error", "VALUE", name, "value over 200 bytes", str(uid), v.name)
                if v.name.endswith("DTC") and not _DTC.fullmatch(value):
                    yield Finding(
                        "error", "DTC", name, f"not ISO 8601: {value!r}", str(uid), v.name
                    )
            if v.codelist:
                cl = CODELISTS[v.codelist]
                if str(value) not in cl.values():
                    level = "warning" if cl.extensible else "error"
                    yield Finding(
                        level,
                        "CT",
                        name,
                        f"{value!r} is not in codelist {cl.name}",
                        str(uid),
                        v.name,
                    )
        reference = subjects.get(str(uid), {}).get("RFSTDTC")
        for dy, source in (("DY", "DTC"), ("STDY", "STDTC"), ("ENDY", "ENDTC")):
            var = f"{name}{dy}"
            when = row.get(f"{name}{source}")
            if var in row and (when is None or _DTC.fullmatch(str(when))):
                expected = study_day(when, reference)
                if _clean(row[var]) != expected:
                    yield Finding(
                        "error",
                        "DY",
                        name,
                        f"{row[var]} but the study day is {expected}",
                        str(uid),
                        var,
                    )
