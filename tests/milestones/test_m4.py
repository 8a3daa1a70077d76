"""Milestone 4 of the roadmap (다중 요청 처리), item by item."""

import asyncio
from dataclasses import dataclass

import pytest

from phase3_scheduling import (LLM, AsyncLLMEngine, EngineArgs, LLMEngine, SamplingParams,
                               UniProcExecutor)

GREEDY = SamplingParams(temperature=0, max_tokens=6, ignore_eos=True)
PROMPTS = [[3, 1, 4, 1, 5, 9, 2, 6, 5, 3, 5, 8, 9, 7, 9, 3, 2, 3] * 2, [5, 11, 7], [2, 7, 1, 8, 2, 8] * 3,
           [9, 9, 8], [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13]]


@dataclass
class Share:
    """One request's part of a step, read off the wire message."""

    request_id: str
    num_tokens: int
    start_position: int


@dataclass
class StepRecord:
    scheduled: list[Share]  # decodes first
    preempted_ids: list[str]

    @property
    def num_tokens(self) -> int:
        return sum(s.num_tokens for s in self.scheduled)


def record(step) -> StepRecord:
    starts = {r.req_id: r.num_computed_tokens for r in step.new_requests + step.cached_requests}
    shares = [Share(rid, n, starts[rid]) for rid, n in zip(step.req_ids, step.num_scheduled_tokens)]
    return StepRecord(shares, list(step.preempted_req_ids))


class RecordingExecutor(UniProcExecutor):
    """The in-process executor, keeping what every step scheduled for inspection."""

    def __init__(self, config):
        super().__init__(config)
        self.steps: list[StepRecord] = []

    def execute_model(self, scheduler_output):
        self.steps.append(record(scheduler_output))
        return super().execute_model(scheduler_output)


def engine(model_dir, **kwargs) -> LLMEngine:
    kwargs.setdefault("kv_cache_gib", 0.01)
    return LLMEngine(EngineArgs(model=str(model_dir), **kwargs), executor_class=RecordingExecutor)


def run(eng: LLMEngine, prompts, params=GREEDY) -> list[list[int]]:
    ids = [eng.add_request(None, p, params) for p in prompts]
    done = {}
    while eng.has_unfinished_requests():
        for out in eng.step():
            if out.finished:
                done[out.request_id] = out.outputs[0].token_ids
    return [done[i] for i in ids]


def pool_full(eng: LLMEngine) -> bool:
    kv = eng.kv_manager
    return kv.num_free_blocks == kv.pool.num_blocks - 1 and not eng.has_unfinished_requests()


@pytest.fixture(scope="module")
def reference(tiny_llama_dir):
    """Each prompt alone, one request at a time (no batching at all)."""
    eng = engine(tiny_llama_dir, max_num_seqs=1)
    return [run(eng, [p])[0] for p in PROMPTS]


def test_continuous_batching(tiny_llama_dir, reference):
    """[ ] Continuous Batching 구현 — a request that arrives while others are decoding joins the very
    next step, which then mixes its prefill with their decodes; nobody's tokens change."""
    eng = engine(tiny_llama_dir)
    params = SamplingParams(temperature=0, max_tokens=12, ignore_eos=True)
    first = [eng.add_request(f"early{i}", PROMPTS[i], params) for i in (0, 1)]
    outputs = {}
    for _ in range(3):  # prefill, then decodes
        outputs.update({o.request_id: o for o in eng.step()})
    last = eng.executor.steps[-1]
    assert all(s.num_tokens == 1 for s in last.scheduled) and len(last.scheduled) == 2
    eng.add_request("late", PROMPTS[2], GREEDY)
    eng.step()
    mixed = eng.executor.steps[-1]
    kinds = {s.request_id: s.num_tokens for s in mixed.scheduled}
    assert kinds == {"early0": 1, "early1": 1, "late": len(PROMPTS[2])}
    assert [s.request_id for s in mixed.scheduled][-1] == "late"  # decodes first, then prefill
    while eng.has_unfinished_requests():
        outputs.update({o.request_id: o for o in eng.step()})
    assert outputs["late"].outputs[0].token_ids == reference[2]
    for rid, i in zip(first, (0, 1)):
        assert outputs[rid].outputs[0].token_ids[:6] == reference[i]
    assert pool_full(eng)


def test_scheduler(tiny_llama_dir, reference):
    """[ ] Scheduler 구현 — every step stays within the token budget and max_num_seqs (chunking long
    prompts to fit), and a cache too small for the batch forces preemption by recompute without
    changing any output."""
    eng = engine(tiny_llama_dir, max_num_batched_tokens=8, max_num_seqs=3)
    assert run(eng, PROMPTS) == reference
    steps = eng.executor.steps
    assert all(0 < s.num_tokens <= 8 and len(s.scheduled) <= 3 for s in steps)
    assert any(x.num_tokens > 1 and x.start_position > 0 for s in steps for x in s.scheduled)  # chunks
    assert any(len({x.num_tokens == 1 for x in s.scheduled}) == 2 for s in steps)  # mixed steps
    assert pool_full(eng)

    tiny = engine(tiny_llama_dir, block_size=16, num_gpu_blocks_override=5)  # 4 blocks = 64 slots
    assert run(tiny, PROMPTS) == reference
    assert tiny.scheduler.num_preemptions > 0
    assert any(s.preempted_ids for s in tiny.executor.steps)
    assert pool_full(tiny)


@pytest.fixture(scope="module")
def smol(smollm2_dir):
    return LLM(str(smollm2_dir), kv_cache_gib=0.05)


def test_engine_class_complete(smol):
    """[ ] Engine 클래스 완성 — LLM.generate / LLM.chat, LLMEngine.add_request / step /
    abort_request / has_unfinished_requests and AsyncLLMEngine streaming all work, and every KV
    block is back in the pool afterwards."""
    params = SamplingParams(temperature=0, max_tokens=8)
    out = smol.generate(["The capital of France is", "1, 2, 3,"], params, use_tqdm=False)
    assert "Paris" in out[0].outputs[0].text
    assert out[1].outputs[0].text.strip().startswith("4")
    chat = smol.chat([{"role": "user", "content": "What is the capital of France?"}],
                     SamplingParams(temperature=0, max_tokens=24), use_tqdm=False)
    assert "Paris" in chat[0].outputs[0].text

    eng = smol.engine
    keep = eng.add_request("keep", "Once upon a time", SamplingParams(temperature=0, max_tokens=4))
    drop = eng.add_request("drop", "Tell me a long story about dragons",
                           SamplingParams(temperature=0, max_tokens=200))
    assert eng.has_unfinished_requests() and eng.get_num_unfinished_requests() == 2
    eng.step()
    eng.abort_request(drop)
    finished = []
    while eng.has_unfinished_requests():
        finished += [o for o in eng.step() if o.finished]
    assert [o.request_id for o in finished] == [keep]
    assert len(finished[0].outputs[0].token_ids) == 4
    assert pool_full(eng)

    async def stream():
        async_engine = AsyncLLMEngine(eng)
        try:
            pieces = []
            async for output in async_engine.generate("The capital of France is",
                                                      SamplingParams(temperature=0, max_tokens=8), "s1"):
                pieces.append(output)
            return pieces
        finally:
            async_engine.shutdown()

    pieces = asyncio.run(stream())
    assert len(pieces) > 1 and pieces[-1].finished and not pieces[0].finished
    assert [len(p.outputs[0].token_ids) for p in pieces] == sorted(len(p.outputs[0].token_ids) for p in pieces)
    assert pieces[-1].outputs[0].token_ids == out[0].outputs[0].token_ids
    assert pool_full(eng)
