"""Findings of the review of issue 17 on the auditors' side, through the service on every store:
each test is one finding an auditor would meet in an export."""

from __future__ import annotations

import re
from collections.abc import Iterator

import pytest
from integration_helpers import Course, screening

from cart_course.bootstrap import Settings, build_service
from cart_course.exports import source
from cart_course.exports.odm import odm_text
from cart_course.service import CourseService

SIGNER = {"id": "dr.sato", "role": "clinician", "name": "Dr. H. Sato"}


@pytest.fixture
def trial(store_url: str) -> Iterator[CourseService]:
    svc = build_service(Settings.for_store(store_url))
    sites = svc.sites.store()
    sites.add("S01", "Paris", "Europe/Paris", created_by="admin")
    sites.add("S03", "Tokyo", "Asia/Tokyo", created_by="admin")
    try:
        yield svc
    finally:
        svc.close()


def test_an_odm_signature_names_the_site_where_the_patient_was_signed_for(
    trial: CourseService,
) -> None:
    """ODM's Signature of every patient pointed to "LOC.SITE01" ("Site 01"), a location that
    is none of the trial's sites, while the AuditRecords of the same patient point to its site:
    a Tokyo patient's infusion looked signed at a site 01. It now names the patient's site when
    it was signed (LOC.S03), as the AuditRecords do, and no location of no site is listed."""
    c = Course(trial, "P-T1")
    c.do("screen", {"screening": screening(), "site": "S03"})
    c.apheresis()
    infused = c.infuse(1, days=14)
    c.do(
        "sign",
        {
            "milestone": "infusion",
            "signs_version": infused.version,
            "meaning": "approval",
            "printed_name": SIGNER["name"],
        },
        actor=SIGNER,
    )
    odm = odm_text(source.read(trial.log))
    (signature,) = re.findall(r"<Signature ID=\"SIG\.P_T1\.\d+\">.*?</Signature>", odm)
    assert '<LocationRef LocationOID="LOC.S03"/>' in signature, signature
    assert "LOC.SITE01" not in odm
    assert '<Location OID="LOC.S03"' in odm
