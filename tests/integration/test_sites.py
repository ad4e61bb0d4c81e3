"""Sites (issue 17) through the service, the views and the exports, on every store: a site is
required once the trial has sites, unknown and inactive sites are refused naming the active
ones, a transfer is a reasoned event in the timeline and the exports, a site-limited caller
sees another site's patient as not on record, the board filters by site on an index."""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Iterator
from typing import Any

import pytest
from integration_helpers import T0, Course, screening

from cart_course.access import ScopedService
from cart_course.audit import streams
from cart_course.audit.exports import csv_timeline
from cart_course.audit.fhir import SITE_HISTORY_URL, SITE_URL, bundle
from cart_course.bootstrap import Settings, build_service
from cart_course.errors import ForbiddenError, InvalidCommandError, PatientNotFoundError
from cart_course.exports import sdtm, source
from cart_course.exports.odm import odm_text
from cart_course.service import CourseService, PatientIdTakenError
from cart_course.views import Views, queries
from cart_course.views.metrics import metrics_text


@pytest.fixture
def trial(store_url: str) -> Iterator[CourseService]:
    """A service over a store whose trial defines S01 (Paris) and S02 (New York)."""
    svc = build_service(Settings.for_store(store_url))
    sites = svc.sites.store()
    sites.add("S01", "Paris", "Europe/Paris", created_by="admin")
    sites.add("S02", "New York", "America/New_York", created_by="admin")
    try:
        yield svc
    finally:
        svc.close()


def at_site(service: CourseService, pid: str, site: str) -> Course:
    c = Course(service, pid)
    c.do("screen", {"screening": screening(), "site": site})
    return c


def test_a_site_is_required_known_and_active(trial: CourseService) -> None:
    c = Course(trial, "P-1")
    with pytest.raises(InvalidCommandError) as missing:
        c.screen()
    assert missing.value.field == "payload.site"
    assert "S01 (Paris, Europe/Paris), S02 (New York, America/New_York)" in str(missing.value)
    with pytest.raises(InvalidCommandError, match="'S09' is not a site of this trial"):
        c.do("screen", {"screening": screening(), "site": "S09"})
    with pytest.raises(InvalidCommandError, match="is not a site id"):
        c.do("screen", {"screening": screening(), "site": "paris"})
    trial.sites.store().deactivate("S02", by="admin", reason="closed")
    with pytest.raises(InvalidCommandError, match=r"S02' was deactivated on .* active sites: S01"):
        c.do("screen", {"screening": screening(), "site": "S02"})
    with pytest.raises(PatientNotFoundError):
        trial.record("P-1")  # nothing recorded
    assert at_site(trial, "P-1", "S01").pid == "P-1"
    assert trial.site_of("P-1") == "S01"
    changes = trial.sites.store().changes("S02")
    assert [(c["change"], c["actor"]) for c in changes] == [
        ("added", "admin"),
        ("deactivated", "admin"),
    ]


def test_a_transfer_is_a_reasoned_event_in_the_timeline_and_the_exports(
    trial: CourseService,
) -> None:
    c = at_site(trial, "P-2", "S01")
    c.apheresis()
    with pytest.raises(Exception, match="transfer_site requires a reason"):
        c.do("transfer_site", {"site": "S02"})
    with pytest.raises(Exception, match="already at site 'S01'"):
        c.do("transfer_site", {"site": "S01"}, reason="no move")
    moved = c.do("transfer_site", {"site": "S02"}, reason="the family moved to New York")
    assert moved.outcome == {"from_site": "S01", "to_site": "S02"}
    assert moved.to_state == moved.from_state == "apheresed"
    summary = trial.summary("P-2")
    assert summary["site"] == "S02"
    assert summary["site_transfers"] == [
        {
            "version": moved.version,
            "from_site": "S01",
            "to_site": "S02",
            "occurred_at": summary["site_transfers"][0]["occurred_at"],
            "reason": "the family moved to New York",
        }
    ]
    c.infuse(1, days=10)  # the course goes on at the new site
    # timeline: the site after each event, the transfer noted
    text = "".join(csv_timeline(trial.log, "P-2"))
    header, *lines = text.splitlines()
    assert header.split(",")[-1] == "site"
    assert [line.rsplit(",", 1)[1] for line in lines] == ["S01", "S01", "S01", "S02", "S02"]
    assert "transferred from site S01 to site S02" in text
    # SDTM DM.SITEID: the site at the cut; ODM SiteRef and LocationRef; FHIR Locations
    cut = source.read(trial.log)
    (dm,) = [r for r in sdtm.build(cut).rows["DM"] if r["SUBJID"] == "P-2"]
    assert dm["SITEID"] == "S02"
    odm = odm_text(cut)
    assert re.search(
        r'SubjectKey="P-2" TransactionType="Insert">.*?<SiteRef LocationOID="LOC.S01"/>', odm
    )
    assert re.search(
        r'SubjectKey="P-2" TransactionType="Update"><AuditRecord>.*?'
        r"<ReasonForChange>the family moved to New York</ReasonForChange>.*?"
        r'<SiteRef LocationOID="LOC.S02"/>',
        odm,
    )
    assert '<Location OID="LOC.S01"' in odm and '<Location OID="LOC.S02"' in odm
    events = dict(streams(trial.log))["P-2"]
    fhir = bundle("P-2", events)
    kinds = [e["resource"]["resourceType"] for e in fhir["entry"]]
    assert kinds.count("Location") == 2
    subject = next(
        e["resource"] for e in fhir["entry"] if e["resource"]["resourceType"] == "ResearchSubject"
    )
    history = [x for x in subject["extension"] if x["url"] == SITE_HISTORY_URL]
    assert len(history) == 2
    assert {"url": "reason", "valueString": "the family moved to New York"} in history[1][
        "extension"
    ]
    assert sum(x["url"] == SITE_URL for x in subject["extension"]) == 1


def test_a_site_limited_caller_sees_other_sites_patients_as_not_on_record(
    trial: CourseService,
) -> None:
    at_site(trial, "P-3", "S01").apheresis()
    at_site(trial, "P-4", "S02")
    s01 = ScopedService(trial, {"S01"})
    assert s01.summary("P-3")["site"] == "S01"
    for read in (s01.summary, s01.record, s01.events, s01.allowed_moves):
        with pytest.raises(PatientNotFoundError) as other:
            read("P-4")
        with pytest.raises(PatientNotFoundError) as unknown:
            read("P-NONE")
        assert str(other.value).replace("P-4", "X") == str(unknown.value).replace("P-NONE", "X")
    assert [r["patient_id"] for r in s01.patients()] == ["P-3"]
    # a write on the other site's patient: not on record, nothing recorded
    before = trial.record("P-4").version
    other = Course(trial, "P-4").command("withdraw", reason="x", days=1)
    with pytest.raises(PatientNotFoundError):
        s01.execute(other)
    assert trial.record("P-4").version == before
    # screening the other site's id: taken; screening elsewhere than its sites: forbidden
    with pytest.raises(PatientIdTakenError):
        s01.execute(
            Course(trial, "P-4").command("screen", {"screening": screening(), "site": "S01"})
        )
    with pytest.raises(ForbiddenError, match="limited to site"):
        s01.execute(
            Course(trial, "P-5").command("screen", {"screening": screening(), "site": "S02"})
        )
    with pytest.raises(ForbiddenError, match="limited to site"):
        s01.execute(
            Course(trial, "P-3").command("transfer_site", {"site": "S02"}, reason="x", days=4)
        )
    # what the service alone offers a trial-wide caller is refused to a scoped one
    with pytest.raises(ForbiddenError, match="reads the whole trial"):
        _ = s01.log


def _views(service: CourseService, url: str) -> Views:
    views = Views(service.log, Settings.for_store(url).store)
    views.catch_up()
    return views


def test_the_board_counts_and_gauges_by_site(trial: CourseService, store_url: str) -> None:
    for i in range(6):
        patient = at_site(trial, f"P-{i:02d}", ("S01", "S02")[i % 2])
        if i < 2:
            patient.apheresis()
            patient.infuse(1, days=14)  # D2 falls due the next day
    Course(trial, "P-X", T0 - dt.timedelta(days=1))  # not recorded
    views = _views(trial, store_url)
    try:
        db = views.db
        rows = queries.board(db, sites={"S02"})
        assert [r["patient_id"] for r in rows] == ["P-01", "P-03", "P-05"]
        assert {r["site"] for r in rows} == {"S02"}
        assert queries.count(db, sites={"S01"}) == 3
        assert queries.count(db, sites={"S01", "S02"}) == 6
        assert queries.board(db, sites=set()) == []
        later = dt.date(2100, 1, 1)
        counts = queries.site_counts(db, later)
        assert counts == {
            site: {
                "patients": 3,
                "overdue_actions": queries.count(db, overdue=True, now=later, sites={site}),
                "open_queries": 0,  # no data query on record
                "median_query_age_days": None,
            }
            for site in ("S01", "S02")
        }
        overdue = sum(c["overdue_actions"] for c in counts.values())
        assert overdue == queries.overdue_count(db, later) > 0
        cohort = queries.cohort(db, sites={"S01"})
        assert cohort["state"] == {"infused_d1": 1, "screened": 2}
        assert queries.cohort(db, sites={"S01", "S02"})["state"] == queries.cohort(db)["state"]
        text = metrics_text(views)
        assert 'cart_course_site_patients{site="S01"} 3' in text
        assert 'cart_course_site_patients{site="S02"} 3' in text
        if db.kind == "sqlite":  # the site filter is served by the board's site index
            plan: Any = db.fetchall(
                "EXPLAIN QUERY PLAN SELECT patient_id FROM view_board WHERE site = ? "
                "ORDER BY patient_id LIMIT 50",
                ["S01"],
            )
            assert "view_board_site" in " ".join(str(p) for p in plan)
    finally:
        views.close()
