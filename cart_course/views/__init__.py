"""Read models for the trial's monitors: the board, the toxicity watchlist, cohort counts and
protocol deviations, fed from the event store's notification log (see docs/monitoring.md)."""

from __future__ import annotations

from .runner import Views, ViewsTimeoutError
from .store import ViewDB

__all__ = ["ViewDB", "Views", "ViewsTimeoutError"]
