"""Prometheus text exposition of the views (served at ``/metrics`` by the HTTP API)."""

from __future__ import annotations

from ..protocol.states import State
from . import queries
from .runner import Views


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def metrics_text(views: Views, now: queries.Moment = None) -> str:
    """The metrics as Prometheus text format 0.0.4 (does not catch up: it reports the lag).

    ``now`` judges "overdue" only; the lag is always measured on the real clock."""
    db = views.db
    cohort = queries.cohort(db)
    lag = views.lag()
    skipped = queries.skipped_summary(db)
    lines = [
        "# HELP cart_course_patients Patients by current course state (board view).",
        "# TYPE cart_course_patients gauge",
    ]
    by_state = cohort.get("state", {})
    for state in State:
        lines.append(
            f'cart_course_patients{{state="{state.value}"}} {by_state.get(state.value, 0)}'
        )
    per_site = queries.site_counts(db, now)
    lines += [
        "# HELP cart_course_site_patients Patients per site (issue 17; one series per site that "
        "has patients: bounded by the trial's sites).",
        "# TYPE cart_course_site_patients gauge",
        *(
            f'cart_course_site_patients{{site="{_escape(s)}"}} {c["patients"]}'
            for s, c in per_site.items()
        ),
        "# HELP cart_course_site_overdue_actions Patients per site whose next protocol action is "
        "past its due date.",
        "# TYPE cart_course_site_overdue_actions gauge",
        *(
            f'cart_course_site_overdue_actions{{site="{_escape(s)}"}} {c["overdue_actions"]}'
            for s, c in per_site.items()
        ),
        "# HELP cart_course_site_open_queries Data queries not closed (open, answered, "
        "reopened) per site.",
        "# TYPE cart_course_site_open_queries gauge",
        *(
            f'cart_course_site_open_queries{{site="{_escape(s)}"}} {c["open_queries"]}'
            for s, c in per_site.items()
        ),
        "# HELP cart_course_site_median_query_age_days Median age in days of the data queries "
        "not closed, per site (NaN: none).",
        "# TYPE cart_course_site_median_query_age_days gauge",
        *(
            f'cart_course_site_median_query_age_days{{site="{_escape(s)}"}} '
            + (
                "NaN"
                if c["median_query_age_days"] is None
                else str(float(c["median_query_age_days"]))
            )
            for s, c in per_site.items()
        ),
    ]
    lines += [
        "# HELP cart_course_overdue_actions Patients whose next protocol action is past its due date.",
        "# TYPE cart_course_overdue_actions gauge",
        f"cart_course_overdue_actions {queries.overdue_count(db, now)}",
        "# HELP cart_course_overdue_follow_up_visits Patients whose next follow-up visit is past its window.",
        "# TYPE cart_course_overdue_follow_up_visits gauge",
        "cart_course_overdue_follow_up_visits "
        f"{queries.count(db, overdue=True, now=now, action='record_follow_up')}",
        "# HELP cart_course_overdue_sae_reports Patients whose next SAE report is past its clock.",
        "# TYPE cart_course_overdue_sae_reports gauge",
        "cart_course_overdue_sae_reports "
        f"{queries.count(db, overdue=True, now=now, action='record_sae_report')}",
        "# HELP cart_course_open_severe_toxicities Open toxicities of grade >= the protocol's severe grade.",
        "# TYPE cart_course_open_severe_toxicities gauge",
    ]
    severe = queries.severe_open(db)
    for kind in sorted({"CRS", "ICANS", *severe}):
        lines.append(
            f'cart_course_open_severe_toxicities{{kind="{_escape(kind)}"}} {severe.get(kind, 0)}'
        )
    lines += [
        "# HELP cart_course_patients_on_hold Patients whose remaining fractions are held by an open toxicity.",
        "# TYPE cart_course_patients_on_hold gauge",
        f"cart_course_patients_on_hold {queries.count_hold(db)}",
        "# HELP cart_course_data_queries Data queries by status (issue 17; unresolved: open, "
        "answered, reopened).",
        "# TYPE cart_course_data_queries gauge",
        *(
            f'cart_course_data_queries{{status="{status}"}} {n}'
            for status, n in queries.query_counts(db).items()
        ),
        "# HELP cart_course_view_position Last notification id processed by the views.",
        "# TYPE cart_course_view_position gauge",
        f"cart_course_view_position {lag['position']}",
        "# HELP cart_course_log_position Last notification id in the event log.",
        "# TYPE cart_course_log_position gauge",
        f"cart_course_log_position {lag['log_position']}",
        "# HELP cart_course_view_lag_events Events recorded but not yet in the views.",
        "# TYPE cart_course_view_lag_events gauge",
        f"cart_course_view_lag_events {lag['lag_events']}",
        "# HELP cart_course_view_lag_seconds Age of the oldest event not yet in the views (0 when up to date).",
        "# TYPE cart_course_view_lag_seconds gauge",
        "cart_course_view_lag_seconds "
        + ("NaN" if lag["lag_seconds"] is None else str(lag["lag_seconds"])),
        "# HELP cart_course_view_skipped_events Stored events the views cannot read or apply "
        "and skipped (see `cart-course views skipped`); 0 when none.",
        "# TYPE cart_course_view_skipped_events gauge",
        f"cart_course_view_skipped_events {skipped['events']}",
        "# HELP cart_course_views_differing Patients whose view rows a check found to differ "
        "from the log (the board refuses to serve until 'views rebuild'); 0 when none.",
        "# TYPE cart_course_views_differing gauge",
        f"cart_course_views_differing {len(views.db.differing())}",
        "# HELP cart_course_view_skipped_stream Events skipped per patient stream, from the "
        "first one skipped on (the patient's row stops before it).",
        "# TYPE cart_course_view_skipped_stream gauge",
    ]
    for stream in skipped["streams"]:
        labels = ",".join(
            f'{key}="{_escape(str(value))}"'
            for key, value in (
                ("stream_id", stream["stream_id"]),
                ("patient_id", stream["patient_id"] or ""),
                ("first_version", stream["first_version"]),
            )
        )
        lines.append(f"cart_course_view_skipped_stream{{{labels}}} {stream['events']}")
    return "\n".join(lines) + "\n"
