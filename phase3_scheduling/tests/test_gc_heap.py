"""gc.freeze after start-up (engine-core and API processes) and its off switch."""

from __future__ import annotations

import gc

import pytest

from phase3_scheduling.gc_heap import ENV, freeze_heap


@pytest.fixture
def unfrozen():
    gc.unfreeze()
    yield
    gc.unfreeze()  # the test process's heap goes back to the collector


def test_freeze_heap_moves_the_live_heap_out_of_collections(unfrozen, monkeypatch):
    monkeypatch.delenv(ENV, raising=False)
    survivor = [object() for _ in range(1000)]
    assert gc.get_freeze_count() == 0
    assert freeze_heap() is True
    assert gc.get_freeze_count() >= len(survivor)
    gc.collect()
    assert gc.get_freeze_count() >= len(survivor)  # collections leave the frozen heap alone


def test_the_switch_leaves_the_heap_alone(unfrozen, monkeypatch):
    monkeypatch.setenv(ENV, "0")
    assert freeze_heap() is False
    assert gc.get_freeze_count() == 0
