"""The engine's decode/mixed step counters: the clock's arithmetic, and a real engine's counts."""

from __future__ import annotations

import pytest

from phase3_scheduling.protocol import SchedulerOutput
from phase3_scheduling.step_timeline import StepClock, StepCounters, summarize_window


def _step(*tokens: int) -> SchedulerOutput:
    return SchedulerOutput(req_ids=[f"r{i}" for i in range(len(tokens))],
                           num_scheduled_tokens=list(tokens))


def test_pipelined_steps_count_from_the_previous_result_and_idle_time_is_not_a_step():
    clock = StepClock()
    clock.record(_step(40, 1), submitted_at=10.0, done_at=10.5)   # mixed, alone: 0.5 s
    clock.record(_step(1, 1), submitted_at=10.2, done_at=10.6)    # in flight behind it: 0.1 s
    clock.record(_step(1, 1), submitted_at=12.0, done_at=12.05)   # after 1.4 s idle: 0.05 s
    c = clock.counters
    assert c.steps == [2, 1]
    assert c.seconds == pytest.approx([0.15, 0.5])
    assert c.rows == [4, 2] and c.prompt_tokens == [0, 40]


def test_a_window_is_the_difference_of_two_readings():
    before = StepCounters([10, 2], [0.05, 0.03], [30, 4], [0, 1000])
    after = StepCounters([14, 3], [0.07, 0.04], [42, 7], [0, 1512])
    w = summarize_window(before, after)
    assert (w["decode_steps"], w["mixed_steps"]) == (4, 1)
    assert w["decode_step_ms"] == pytest.approx(5.0) and w["mixed_step_ms"] == pytest.approx(10.0)
    assert w["decode_rows_per_step"] == pytest.approx(3.0)
    assert w["mixed_prompt_tokens_per_step"] == pytest.approx(512)
    assert w["mixed_time_share"] == pytest.approx(1 / 3)
    assert w["busy_ms_per_step"] == pytest.approx(6.0)  # 30 ms over 5 steps


@pytest.mark.parametrize("pipelined", [False, True], ids=["one-step", "two-in-flight"])
def test_a_real_engine_counts_one_mixed_step_per_prompt_batch_then_decodes(pipelined):
    """Three prompts added together fit one step (mixed), then max_tokens - 1 decode steps of
    three rows; with two steps in flight the core splits the requests into two micro-batches
    (test_batch_queue.py), so each kind has twice the steps and the same rows and tokens."""
    from phase3_scheduling import LLMEngine, SamplingParams

    from test_batch_queue import TwoInFlightExecutor
    from test_step_failure import tiny_engine_args

    engine = LLMEngine(tiny_engine_args(), TwoInFlightExecutor if pipelined else None)
    try:
        before = engine.get_stats().steps
        assert before is not None and before.steps == [0, 0]
        params = SamplingParams(max_tokens=5, temperature=0.0, ignore_eos=True)
        for i, prompt in enumerate(([1, 2, 3, 4, 5, 6, 7, 8], [9, 10, 11], [12, 13, 14, 15])):
            engine.add_request(f"timeline-{i}", prompt, params)
        while engine.has_unfinished_requests():
            engine.step()
        w = summarize_window(before, engine.get_stats().steps)
    finally:
        engine.shutdown()
    batches = 2 if pipelined else 1
    assert (w["mixed_steps"], w["decode_steps"]) == (batches, 4 * batches)
    assert w["mixed_prompt_tokens_per_step"] * w["mixed_steps"] == 15  # every prompt token once
    assert w["decode_rows_per_step"] * w["decode_steps"] == 3 * 4  # the 2nd..5th token of each
    assert w["decode_step_ms"] > 0 and w["mixed_step_ms"] > 0
