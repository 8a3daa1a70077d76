"""A step that raises fails only the requests it ran; the engine keeps serving and frees their
KV blocks (a dead worker or a device error is fatal instead: the core process exits, see
phase5_server/tests/test_engine_process.py for what the server then does)."""

from __future__ import annotations

import pytest

from phase3_scheduling import LLM, EngineArgs, SamplingParams
from phase3_scheduling.executor import WorkerDiedError
from shared.fixtures import TINY_LLAMA

GREEDY = SamplingParams(temperature=0, max_tokens=6, ignore_eos=True)


def tiny_engine_args() -> EngineArgs:
    """Random weights of the fixture's tiny shape, no files: token-id prompts only."""
    config = {**TINY_LLAMA, "rope_theta": 10000.0, "eos_token_id": 2}
    return EngineArgs(load_format="dummy", hf_config=config, dtype="float32", device="cpu",
                      max_model_len=128, kv_cache_gib=0.01)


def test_a_failing_step_fails_its_requests_and_the_engine_goes_on():
    llm = LLM.from_engine_args(tiny_engine_args())
    expected = llm.generate([[11, 12, 13]], GREEDY, use_tqdm=False)[0].outputs[0].token_ids
    executor = llm.engine.executor
    real = executor.execute_model
    calls = {"n": 0}

    def broken_once(step):
        calls["n"] += 1
        if calls["n"] == 1:
            raise ValueError("injected failure")
        return real(step)

    executor.execute_model = broken_once
    outs = llm.generate([[5, 6, 7], [8, 9]], GREEDY, use_tqdm=False)
    assert all(o.error and "injected failure" in o.error for o in outs)
    assert all(o.outputs[0].finish_reason == "error" for o in outs)
    assert llm.engine.kv_manager.all_blocks_free and not llm.engine.has_unfinished_requests()
    again = llm.generate([[11, 12, 13]], GREEDY, use_tqdm=False)[0].outputs[0].token_ids
    assert again == expected  # the worker dropped the failed requests' state cleanly


def test_a_dead_worker_is_fatal():
    llm = LLM.from_engine_args(tiny_engine_args())

    def dead(step):
        raise WorkerDiedError("worker rank 0 is gone")

    llm.engine.executor.execute_model = dead
    with pytest.raises(WorkerDiedError):
        llm.generate([[5, 6, 7]], GREEDY, use_tqdm=False)
