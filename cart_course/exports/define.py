"""define.xml 2.1 (and a define.html rendered from the same metadata) for the SDTM datasets.

Written with the standard library's ElementTree from :data:`~.sdtm.DOMAINS` and the pinned
controlled terminology (:mod:`.ct`); validated against the Define-XML 2.1 XSD that ``odmlib``
ships (:func:`~.checks.validate_xml`).
"""

from __future__ import annotations

import html
import xml.etree.ElementTree as ET
from typing import TYPE_CHECKING

from .ct import CODELISTS, CT_VERSION
from .sdtm import Domain, domain_of, number_text
from .source import STUDY_ID, STUDY_NAME

if TYPE_CHECKING:
    from .sdtm import Datasets

ODM_NS = "http://www.cdisc.org/ns/odm/v1.3"
DEF_NS = "http://www.cdisc.org/ns/def/v2.1"
XLINK_NS = "http://www.w3.org/1999/xlink"
ET.register_namespace("", ODM_NS)
ET.register_namespace("def", DEF_NS)
ET.register_namespace("xlink", XLINK_NS)

GRADING_COMMENT = (
    "AETOXGR: CRS and ICANS graded by the ASTCT 2019 consensus grading (Lee et al., Biol "
    "Blood Marrow Transplant 2019); the scale and version of each record are in "
    "SUPPAE.AEGRSCL."
)


def _o(tag: str) -> str:
    return f"{{{ODM_NS}}}{tag}"


def _d(tag: str) -> str:
    return f"{{{DEF_NS}}}{tag}"


def _text(parent: ET.Element, tag: str, text: str) -> ET.Element:
    el = ET.SubElement(parent, tag)
    tt = ET.SubElement(
        el, _o("TranslatedText"), {"{http://www.w3.org/XML/1998/namespace}lang": "en"}
    )
    tt.text = text
    return el


def _item_oid(dataset: str, var: str) -> str:
    return f"IT.{dataset}.{var}"


def define_xml(data: Datasets, leaf: dict[str, str], mdv_oid: str) -> bytes:
    root = ET.Element(
        _o("ODM"),
        {
            "FileType": "Snapshot",
            "FileOID": f"{STUDY_ID}.DEFINE",
            "CreationDateTime": data.cutoff[:19],
            "ODMVersion": "1.3.2",
            "Originator": "cart-course",
            "SourceSystem": "cart-course",
            _d("Context"): "Submission",
        },
    )
    study = ET.SubElement(root, _o("Study"), {"OID": STUDY_ID})
    gv = ET.SubElement(study, _o("GlobalVariables"))
    ET.SubElement(gv, _o("StudyName")).text = STUDY_ID
    ET.SubElement(gv, _o("StudyDescription")).text = STUDY_NAME
    ET.SubElement(gv, _o("ProtocolName")).text = STUDY_ID
    mdv = ET.SubElement(
        study,
        _o("MetaDataVersion"),
        {"OID": mdv_oid, "Name": "SDTMIG 3.4 tabulation", _d("DefineVersion"): "2.1.0"},
    )
    standards = ET.SubElement(mdv, _d("Standards"))
    ET.SubElement(
        standards,
        _d("Standard"),
        {"OID": "STD.SDTMIG", "Name": "SDTMIG", "Type": "IG", "Version": "3.4", "Status": "Final"},
    )
    ET.SubElement(
        standards,
        _d("Standard"),
        {
            "OID": "STD.CT",
            "Name": "CDISC/NCI",
            "PublishingSet": "SDTM",
            "Type": "CT",
            "Version": CT_VERSION.rpartition(" ")[2],
            "Status": "Final",
        },
    )
    domains = [domain_of(name) for name in data.rows]
    used_codelists: set[str] = set()
    comments: dict[str, str] = {}
    for domain in domains:
        group = ET.SubElement(
            mdv,
            _o("ItemGroupDef"),
            {
                "OID": f"IG.{domain.name}",
                "Name": domain.name,
                "Repeating": "No" if domain.name == "DM" else "Yes",
                "IsReferenceData": "No",
                "SASDatasetName": domain.name,
                "Domain": domain.name,
                "Purpose": "Tabulation",
                _d("Structure"): domain.structure,
                _d("StandardOID"): "STD.SDTMIG",
                _d("ArchiveLocationID"): f"LF.{domain.name}",
            },
        )
        _text(group, _o("Description"), domain.label)
        for order, v in enumerate(domain.variables, start=1):
            attrs_ = {
                "ItemOID": _item_oid(domain.name, v.name),
                "Mandatory": "Yes" if v.core == "Req" else "No",
                "OrderNumber": str(order),
            }
            if v.name in domain.keys:
                attrs_["KeySequence"] = str(domain.keys.index(v.name) + 1)
            ET.SubElement(group, _o("ItemRef"), attrs_)
        ET.SubElement(group, _d("Class"), {"Name": domain.cls})
        lf = ET.SubElement(
            group, _d("leaf"), {"ID": f"LF.{domain.name}", f"{{{XLINK_NS}}}href": leaf[domain.name]}
        )
        ET.SubElement(lf, _d("title")).text = leaf[domain.name]
    for domain in domains:
        rows = data.rows[domain.name]
        for v in domain.variables:
            item_attrs = {
                "OID": _item_oid(domain.name, v.name),
                "Name": v.name,
                "DataType": v.data_type,
                "SASFieldName": v.name,
            }
            if v.data_type in ("text", "integer", "float"):
                longest = max([len(_shown(r.get(v.name))) for r in rows] or [1])
                item_attrs["Length"] = str(max(longest, 1))
            if v.data_type == "float":
                item_attrs["SignificantDigits"] = "3"
            if v.comment:
                oid = f"COM.{domain.name}.{v.name}"
                comments[oid] = GRADING_COMMENT if v.name == "AETOXGR" else v.comment
                item_attrs[_d("CommentOID")] = oid
            item = ET.SubElement(mdv, _o("ItemDef"), item_attrs)
            _text(item, _o("Description"), v.label)
            if v.codelist:
                used_codelists.add(v.codelist)
                ET.SubElement(item, _o("CodeListRef"), {"CodeListOID": CODELISTS[v.codelist].oid})
            ET.SubElement(item, _d("Origin"), {"Type": v.origin})
    for name in sorted(used_codelists):
        cl = CODELISTS[name]
        cl_el = ET.SubElement(
            mdv,
            _o("CodeList"),
            {"OID": cl.oid, "Name": cl.name, "DataType": "text", _d("StandardOID"): "STD.CT"}
            if cl.c_code
            else {"OID": cl.oid, "Name": cl.name, "DataType": "text"},
        )
        decoded = any(t.decode for t in cl.terms)
        for order, term in enumerate(cl.terms, start=1):
            term_attrs = {"CodedValue": term.value, "OrderNumber": str(order)}
            if term.c_code is None and cl.c_code is not None:
                term_attrs[_d("ExtendedValue")] = "Yes"
            if decoded:
                el = ET.SubElement(cl_el, _o("CodeListItem"), term_attrs)
                _text(el, _o("Decode"), term.decode or term.value)
            else:
                el = ET.SubElement(cl_el, _o("EnumeratedItem"), term_attrs)
            if term.c_code:
                ET.SubElement(el, _o("Alias"), {"Context": "nci:ExtCodeID", "Name": term.c_code})
        if cl.c_code:
            ET.SubElement(cl_el, _o("Alias"), {"Context": "nci:ExtCodeID", "Name": cl.c_code})
    for oid, text in sorted(comments.items()):
        _text(ET.SubElement(mdv, _d("CommentDef"), {"OID": oid}), _o("Description"), text)
    ET.indent(root)
    document: bytes = ET.tostring(root, encoding="UTF-8", xml_declaration=True)
    return document


def _shown(value: object) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return number_text(value)
    return str(value)


def define_html(data: Datasets, leaf: dict[str, str]) -> str:
    """define.xml as a readable page: one table per dataset (variables, core, codelist)."""
    out = [
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>",
        f"<title>define.xml {html.escape(STUDY_ID)}</title>",
        "<style>body{font-family:sans-serif}table{border-collapse:collapse;margin-bottom:2em}"
        "td,th{border:1px solid #999;padding:2px 6px;text-align:left}</style></head><body>",
        f"<h1>{html.escape(STUDY_NAME)} ({html.escape(STUDY_ID)})</h1>",
        f"<p>SDTMIG 3.4, {html.escape(CT_VERSION)}; data cut-off {html.escape(data.cutoff)}.</p>",
        "<h2>Datasets</h2><table><tr><th>Dataset</th><th>Label</th><th>Class</th>"
        "<th>Structure</th><th>Keys</th><th>Records</th><th>Location</th></tr>",
    ]
    domains: list[Domain] = [domain_of(name) for name in data.rows]
    for d in domains:
        out.append(
            f"<tr><td><a href='#{d.name}'>{d.name}</a></td><td>{html.escape(d.label)}</td>"
            f"<td>{d.cls}</td><td>{html.escape(d.structure)}</td><td>{', '.join(d.keys)}</td>"
            f"<td>{len(data.rows[d.name])}</td>"
            f"<td><a href='{leaf[d.name]}'>{leaf[d.name]}</a></td></tr>"
        )
    out.append("</table>")
    for d in domains:
        out.append(
            f"<h2 id='{d.name}'>{d.name}: {html.escape(d.label)}</h2><table><tr>"
            "<th>Variable</th><th>Label</th><th>Type</th><th>Core</th><th>Codelist</th>"
            "<th>Origin</th><th>Comment</th></tr>"
        )
        for v in d.variables:
            comment = GRADING_COMMENT if v.name == "AETOXGR" else (v.comment or "")
            out.append(
                f"<tr><td>{v.name}</td><td>{html.escape(v.label)}</td><td>{v.type}</td>"
                f"<td>{v.core}</td><td>{v.codelist or ''}</td><td>{v.origin}</td>"
                f"<td>{html.escape(comment)}</td></tr>"
            )
        out.append("</table>")
    out.append(
        "<h2>Controlled terminology</h2><table><tr><th>Codelist</th><th>C-code</th>"
        "<th>Term</th><th>C-code</th></tr>"
    )
    for cl in CODELISTS.values():
        for t in cl.terms:
            out.append(
                f"<tr><td>{cl.name}</td><td>{cl.c_code or 'sponsor'}</td>"
                f"<td>{html.escape(t.value)}</td><td>{t.c_code or 'sponsor-defined'}</td></tr>"
            )
    out.append("</table></body></html>\n")
    return "\n".join(out)
