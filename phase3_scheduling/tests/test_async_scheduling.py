"""Async scheduling (step N+1 scheduled and launched before step N's tokens are read) gives the
one-step-at-a-time engine's outputs: greedy, seeded sampling, logprobs, stop strings and EOS
that land while the next step is already out, min_tokens and penalties (those requests wait for
their token), aborts in flight, and a step that raises. The sync engine is the reference (it is
itself checked against HF generate in test_engine_correctness.py)."""

from __future__ import annotations

import pytest

from phase3_scheduling import LLM, LLMEngine, SamplingParams

from test_engine_correctness import PROMPTS as HF_CHECKED_PROMPTS
from test_step_failure import tiny_engine_args

PROMPTS = HF_CHECKED_PROMPTS + ["Explain gravity to a child."]
PARAMS = [
    SamplingParams(temperature=0, max_tokens=20, ignore_eos=True, logprobs=2),
    SamplingParams(temperature=0.8, top_p=0.9, seed=7, max_tokens=18),
    SamplingParams(temperature=0, max_tokens=30, stop=["."]),  # stops while a step is out
    SamplingParams(temperature=0, max_tokens=25, repetition_penalty=1.3, min_tokens=5),
    SamplingParams(temperature=0.7, top_k=20, seed=11, max_tokens=9, frequency_penalty=0.5),
    SamplingParams(temperature=0, max_tokens=64),  # ends with EOS (<|im_end|>) or length
]


def run(llm: LLM) -> list[tuple]:
    outs = llm.generate(PROMPTS, PARAMS, use_tqdm=False)
    return [(c.token_ids, c.text, c.finish_reason, c.stop_reason,
             None if c.logprobs is None else [{t: round(lp.logprob, 3) for t, lp in e.items()}
                                              for e in c.logprobs])
            for o in outs for c in o.outputs]


@pytest.fixture(scope="module")
def sync_outputs(smollm2_dir):
    return run(LLM(str(smollm2_dir), kv_cache_gib=0.25, async_scheduling=False))


@pytest.mark.parametrize("settings", [dict(), dict(max_num_batched_tokens=9)],
                         ids=["default-budget", "chunked-prompts"])
def test_async_gives_the_sync_outputs(smollm2_dir, sync_outputs, settings):
    llm = LLM(str(smollm2_dir), kv_cache_gib=0.25, async_scheduling=True, **settings)
    assert run(llm) == sync_outputs
    engine = llm.engine
    assert engine.scheduler.num_scheduled_ahead > 0 and engine.core.peak_in_flight == 2
    assert engine.kv_manager.all_blocks_free and not engine.has_unfinished_requests()
    assert not engine.scheduler.in_flight


def test_async_is_the_gpu_default_and_off_on_cpu():
    from phase3_scheduling import EngineArgs

    gpu, cpu = EngineArgs().scheduler_config(4096, "cuda"), EngineArgs().scheduler_config(4096)
    assert gpu.async_scheduling and not cpu.async_scheduling
    assert not EngineArgs(tensor_parallel_size=2).scheduler_config(4096, "cuda").async_scheduling
    with pytest.raises(ValueError, match="async_scheduling needs the in-process executor"):
        EngineArgs(async_scheduling=True, distributed_executor_backend="mp").scheduler_config(
            4096, "cuda")


def tiny_async_engine() -> LLMEngine:
    args = tiny_engine_args()
    args.async_scheduling = True
    return LLMEngine(args)


GREEDY = SamplingParams(temperature=0, max_tokens=8, ignore_eos=True)


def test_abort_while_two_steps_are_out_frees_everything():
    engine = tiny_async_engine()
    reference = LLM.from_engine(LLMEngine(tiny_engine_args())).generate(
        [[5, 6, 7]], GREEDY, use_tqdm=False)[0].outputs[0].token_ids
    for i, prompt in enumerate([[5, 6, 7], [8, 9], [10, 11, 12]]):
        engine.add_request(str(i), prompt, GREEDY)
    engine.step()  # the prefill step is out
    engine.step()  # the first decode step is out too; the prefill's tokens came back
    assert engine.core.batch_queue and engine.scheduler.in_flight
    engine.abort_request(["1", "2"])
    finished = {}
    while engine.has_unfinished_requests():
        for out in engine.step():
            assert out.request_id == "0", "an aborted request produced output"
            if out.finished:
                finished[out.request_id] = out.outputs[0].token_ids
    assert finished == {"0": reference}
    assert engine.kv_manager.all_blocks_free and not engine.scheduler.in_flight


def test_a_failing_step_under_async_fails_its_requests_and_the_engine_goes_on():
    engine = tiny_async_engine()
    llm = LLM.from_engine(engine)
    expected = llm.generate([[11, 12, 13]], GREEDY, use_tqdm=False)[0].outputs[0].token_ids
    worker = engine.executor.worker
    real, calls = worker.submit_step, {"n": 0}

    def broken_second_step(step):
        calls["n"] += 1
        if calls["n"] == 2:  # the first step (prefill) is out when this one breaks
            raise ValueError("injected failure")
        return real(step)

    worker.submit_step = broken_second_step
    outs = llm.generate([[5, 6, 7], [8, 9]], GREEDY, use_tqdm=False)
    assert all(o.error and "injected failure" in o.error for o in outs)
    assert engine.kv_manager.all_blocks_free and not engine.has_unfinished_requests()
    worker.submit_step = real
    assert llm.generate([[11, 12, 13]], GREEDY, use_tqdm=False)[0].outputs[0].token_ids == expected
