"""AsyncLLMEngine: streamed outputs grow token by token and equal the offline result;
cancelling a stream aborts the request and frees its KV blocks; bad requests raise."""

import asyncio

import pytest

from phase3_scheduling import LLM, AsyncLLMEngine, SamplingParams


PARAMS = SamplingParams(temperature=0, max_tokens=12, ignore_eos=True)


@pytest.fixture(scope="module")
def engine(smollm2_dir):
    llm = LLM(str(smollm2_dir), kv_cache_gib=0.1)
    expected = llm.generate("The capital of France is", PARAMS, use_tqdm=False)[0].outputs[0]
    async_engine = AsyncLLMEngine(llm.engine)  # from now on only its thread steps the engine
    yield llm, async_engine, expected
    async_engine.shutdown()


def full_pool(llm):
    kv = llm.engine.kv_manager
    return kv.num_free_blocks == kv.pool.num_blocks - 1


def test_stream_equals_offline_and_cancel_frees_blocks(engine):
    llm, async_engine, expected = engine
    params = PARAMS

    async def run():
        seen = []
        async for out in async_engine.generate("The capital of France is", params, "s1"):
            seen.append(list(out.outputs[0].token_ids))
        long = SamplingParams(temperature=0, max_tokens=500, ignore_eos=True)
        stream = async_engine.generate("Once upon a time", long, "s2")
        async for out in stream:
            if len(out.outputs[0].token_ids) >= 3:
                break
        await stream.aclose()  # the client went away
        for _ in range(100):
            if full_pool(llm) and not llm.engine.has_unfinished_requests():
                break
            await asyncio.sleep(0.05)
        return seen

    seen = asyncio.run(run())
    assert seen[-1] == expected.token_ids
    assert [len(s) for s in seen] == list(range(1, 13))
    assert full_pool(llm) and not llm.engine.has_unfinished_requests()


def test_bad_request_raises_in_the_stream_and_engine_survives(engine):
    llm, async_engine, _ = engine

    async def run():
        with pytest.raises(ValueError, match="max_model_len"):
            async for _ in async_engine.generate([5] * 5000, SamplingParams(), "bad"):
                pass
        outs = [o async for o in async_engine.generate("Hi", SamplingParams(max_tokens=3), "ok")]
        return outs[-1]

    last = asyncio.run(run())
    assert last.finished and len(last.outputs[0].token_ids) <= 3
    assert full_pool(llm)
