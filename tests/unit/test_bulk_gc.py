"""The ingest's garbage-collection policy: off while recording, young cycles freed per batch,
everything handed back afterwards."""

from __future__ import annotations

import gc
import weakref

import pytest

from cart_course.bulk import bulk_gc


class Node:
    def __init__(self) -> None:
        self.other: Node | None = None


def _cycle() -> weakref.ref[Node]:
    a, b = Node(), Node()
    a.other, b.other = b, a
    return weakref.ref(a)


def test_collector_off_inside_and_restored_after() -> None:
    assert gc.isenabled()
    with bulk_gc():
        assert not gc.isenabled()
    assert gc.isenabled()
    assert gc.get_freeze_count() == 0


def test_a_disabled_collector_stays_disabled() -> None:
    gc.disable()
    try:
        with bulk_gc():
            pass
        assert not gc.isenabled()
    finally:
        gc.enable()


def test_settle_frees_the_batch_cycles_and_freezes_the_survivors() -> None:
    with bulk_gc() as settle:
        dead = _cycle()
        assert dead() is not None  # the collector is off: the cycle is still there
        settle()
        assert dead() is None
        assert gc.get_freeze_count() > 0
    assert gc.get_freeze_count() == 0


def test_frozen_cycles_are_collected_after_the_ingest() -> None:
    with bulk_gc() as settle:
        survivor = _cycle()
        holder = [survivor()]  # alive at settle: frozen
        settle()
        holder.clear()  # garbage now, but frozen: not collected during the ingest
        assert survivor() is not None
    gc.collect()
    assert survivor() is None


def test_restored_after_an_error() -> None:
    with pytest.raises(RuntimeError), bulk_gc():
        raise RuntimeError("boom")
    assert gc.isenabled()
    assert gc.get_freeze_count() == 0
