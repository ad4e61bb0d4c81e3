"""The pinned subset of CDISC Controlled Terminology the SDTM export uses, with NCI C-codes.

Source: CDISC SDTM Controlled Terminology as published by NCI Enterprise Vocabulary Services
(https://evs.nci.nih.gov/ftp1/CDISC/SDTM/). NCI EVS publishes CDISC CT in the public domain
("NCI Thesaurus ... is in the public domain"; CDISC asks that its CT be used unchanged). Only the
terms this export writes are copied; ``CT_VERSION`` names the package they were transcribed from.
A value that is not a CDISC term is a **sponsor-defined** value of an extensible codelist
(``c_code`` None, marked ``def:ExtendedValue="Yes"`` in define.xml); a codelist of our own
(``c_code`` None on the codelist) is sponsor-defined as a whole.
"""

from __future__ import annotations

from typing import Final

import attrs

CT_VERSION: Final = "SDTM CT 2024-03-29"


@attrs.frozen
class Term:
    value: str
    c_code: str | None = None
    #: The term's decoded meaning (only where it adds something to the value).
    decode: str | None = None


@attrs.frozen
class Codelist:
    name: str
    c_code: str | None
    extensible: bool
    terms: tuple[Term, ...]

    @property
    def oid(self) -> str:
        return f"CL.{self.name}"

    def values(self) -> frozenset[str]:
        return frozenset(t.value for t in self.terms)

    def is_cdisc(self, value: str) -> bool:
        return any(t.value == value and t.c_code for t in self.terms)


def _cl(name: str, c_code: str | None, extensible: bool, *terms: Term) -> Codelist:
    return Codelist(name=name, c_code=c_code, extensible=extensible, terms=terms)


CODELISTS: Final[dict[str, Codelist]] = {
    cl.name: cl
    for cl in (
        _cl(
            "SEX",
            "C66731",
            False,
            Term("F", "C16576", "Female"),
            Term("M", "C20197", "Male"),
            Term("U", "C17998", "Unknown"),
            Term("UNDIFFERENTIATED", "C45908"),
        ),
        _cl(
            "NY",
            "C66742",
            False,
            Term("N", "C49487", "No"),
            Term("Y", "C49488", "Yes"),
            Term("U", "C17998", "Unknown"),
            Term("NA", "C48660", "Not Applicable"),
        ),
        _cl("ROUTE", "C66729", True, Term("INTRAVENOUS", "C38276")),
        _cl(
            "OUT",
            "C66768",
            False,
            Term("FATAL", "C48275"),
            Term("NOT RECOVERED/NOT RESOLVED", "C49494"),
            Term("RECOVERED/RESOLVED", "C49498"),
            Term("RECOVERED/RESOLVED WITH SEQUELAE", "C49495"),
            Term("RECOVERING/RESOLVING", "C49496"),
            Term("UNKNOWN", "C17998"),
        ),
        _cl(
            "NCOMPLT",
            "C66727",
            True,
            Term("ADVERSE EVENT", "C41331"),
            Term("COMPLETED", "C25250"),
            Term("DEATH", "C28554"),
            Term("PHYSICIAN DECISION", "C48250"),
            Term("SCREEN FAILURE", "C49628"),
            Term("WITHDRAWAL BY SUBJECT", "C49634"),
        ),
        _cl(
            "DSCAT",
            "C74558",
            True,
            Term("DISPOSITION EVENT", "C74590"),
            Term("PROTOCOL MILESTONE", "C74588"),
        ),
        _cl(
            "IECAT",
            "C66797",
            False,
            Term("EXCLUSION", "C25370"),
            Term("INCLUSION", "C25532"),
        ),
        _cl(
            "UNIT",
            "C71620",
            True,
            Term("C", "C42559", "Degree Celsius"),
            Term("kg", "C28252", "Kilogram"),
            Term("cells", None, "CAR-positive viable T cells (sponsor-defined)"),
            Term("L/min", None, "Liters per minute (sponsor-defined)"),
            Term("%", "C25613", "Percentage"),
        ),
        # Sponsor-defined codelists (no CDISC codelist fits exactly).
        _cl(
            "RSRESP",
            None,
            True,
            Term("CR", "C4870", "Complete Remission"),
            Term("CRi", None, "Complete remission with incomplete count recovery"),
            Term("PR", "C18213", "Partial Remission"),
            Term("NR", None, "No response"),
            Term("PD", None, "Progressive disease"),
        ),
        _cl(
            "TOXGR",
            None,
            True,
            *(Term(str(g)) for g in range(1, 6)),
        ),
        _cl(
            "ARMNRS",
            "C142179",
            True,
            Term("SCREEN FAILURE", "C49628"),
            Term("ASSIGNED, NOT TREATED"),
        ),
    )
}
