"""gc.freeze after start-up (engine-core and API processes), the spaced-out full collections,
and the switches of the measured baselines."""

from __future__ import annotations

import gc

import pytest

from phase3_scheduling.gc_heap import ENV, ENV_GEN2, GEN2_EVERY, freeze_heap


@pytest.fixture
def fresh_gc():
    threshold = gc.get_threshold()
    gc.unfreeze()
    yield
    gc.unfreeze()  # the test process's heap goes back to the collector
    gc.set_threshold(*threshold)


def test_freeze_heap_moves_the_live_heap_out_of_collections(fresh_gc, monkeypatch):
    monkeypatch.delenv(ENV, raising=False)
    monkeypatch.delenv(ENV_GEN2, raising=False)
    survivor = [object() for _ in range(1000)]
    assert gc.get_freeze_count() == 0
    assert freeze_heap() is True
    assert gc.get_freeze_count() >= len(survivor)
    gc.collect()
    assert gc.get_freeze_count() >= len(survivor)  # collections leave the frozen heap alone
    assert gc.get_threshold()[2] == GEN2_EVERY


def test_full_collections_stay_rare_after_the_freeze(fresh_gc, monkeypatch):
    """With CPython's own threshold a frozen heap makes full collections frequent (the quarter
    rule compares with the small unfrozen heap); with GEN2_EVERY none runs for the same churn."""
    def full_collections_during_churn() -> int:
        counts = []
        gc.callbacks.append(lambda phase, info: counts.append(info["generation"])
                            if phase == "stop" else None)
        try:
            keep = []
            for i in range(300_000):  # cyclic garbage and a growing set of survivors
                a: list = []
                a.append(a)
                if i % 10 == 0:
                    keep.append([i])
        finally:
            gc.callbacks.pop()
        return counts.count(2)

    monkeypatch.setenv(ENV_GEN2, "10")
    freeze_heap()
    gc.collect()  # the first full collection after the freeze sizes the quarter rule's baseline
    with_cpython_threshold = full_collections_during_churn()
    gc.unfreeze()
    monkeypatch.delenv(ENV_GEN2)
    freeze_heap()
    gc.collect()
    with_ours = full_collections_during_churn()
    assert with_cpython_threshold >= 1 and with_ours == 0, (with_cpython_threshold, with_ours)


def test_the_switch_leaves_the_heap_alone(fresh_gc, monkeypatch):
    monkeypatch.setenv(ENV, "0")
    threshold = gc.get_threshold()
    assert freeze_heap() is False
    assert gc.get_freeze_count() == 0 and gc.get_threshold() == threshold


def test_a_gpu_engine_in_the_callers_process_freezes_until_shutdown(fresh_gc, monkeypatch):
    """The offline path freezes the heap on a GPU only; ``unfreeze_heap`` (its shutdown) gives
    the frozen objects back and restores the thresholds, since the caller's process goes on."""
    from phase3_scheduling import LLMEngine
    from phase3_scheduling.gc_heap import freeze_heap_for_engine, unfreeze_heap
    from test_step_failure import tiny_engine_args

    monkeypatch.delenv(ENV, raising=False)
    threshold = gc.get_threshold()
    engine = LLMEngine(tiny_engine_args())  # a CPU engine: the model's compute hides any pause
    assert gc.get_freeze_count() == 0
    engine.shutdown()
    assert freeze_heap_for_engine("cpu") is None and gc.get_freeze_count() == 0
    assert freeze_heap_for_engine("cuda") == threshold
    assert gc.get_freeze_count() > 1000 and gc.get_threshold()[2] == GEN2_EVERY
    unfreeze_heap(threshold)
    assert gc.get_freeze_count() == 0 and gc.get_threshold() == threshold
    monkeypatch.setenv(ENV, "0")  # the measured baseline: nothing frozen, nothing to restore
    assert freeze_heap_for_engine("cuda") is None and gc.get_freeze_count() == 0
