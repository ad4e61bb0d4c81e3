"""The cohort's figures: a swimmer plot, responses by course, maximum CRS/ICANS grades,
vein-to-vein time, and a patient's toxicity timeline (see docs/figures.md).

``model`` turns patients' records into figure data (pure, tested on its own), ``render`` draws
it as self-contained SVG (matplotlib), ``report`` makes the printable cohort report, ``read``
rebuilds the records from the event log."""

from __future__ import annotations

#: The cohort figures served at ``/v1/cohort/figures/{name}.svg``.
COHORT_FIGURES = ("swimmer", "best-response", "max-grade", "vein-to-vein")
