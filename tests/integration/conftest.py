"""Fixtures of the integration suite (besides tests/conftest.py's stores and services)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import closing

import pytest

from cart_course.service import CourseService
from cart_course.storage import parse_store_url
from cart_course.views import Views


@pytest.fixture
def views(service: CourseService, store_url: str) -> Iterator[Views]:
    """The read models over ``service``'s store, closed afterwards (a module that needs other
    options or a recorded cohort first defines its own)."""
    with closing(Views(service.log, parse_store_url(store_url))) as v:
        yield v
