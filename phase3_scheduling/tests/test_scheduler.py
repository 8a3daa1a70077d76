"""The scheduler alone, with a real KV manager and no model: budgets, mixing, preemption."""

from dataclasses import dataclass

from phase2_attention import KVCacheManager
from phase3_scheduling import SamplingParams
from phase3_scheduling.config import SchedulerConfig
from phase3_scheduling.core_messages import EngineCoreRequest
from phase3_scheduling.protocol import ModelRunnerOutput, SchedulerOutput
from phase3_scheduling.request import Request, RequestStatus
from phase3_scheduling.scheduler import Scheduler


@dataclass
class Scheduled:
    request_id: str
    num_tokens: int
    start_position: int
    sample: bool


def make(num_blocks=64, block=4, budget=32, seqs=8, chunked=True, max_len=256):
    kv = KVCacheManager(num_blocks, block)
    return Scheduler(SchedulerConfig(seqs, budget, max_len, chunked), kv)


def req(rid, n, max_tokens=3):
    base = 1000 * (sum(map(ord, rid)) % 50)  # distinct prompts: no accidental prefix hits
    core = EngineCoreRequest.build(rid, list(range(base, base + n)),
                                   SamplingParams(max_tokens=max_tokens), [], 0.0)
    return Request(core, 256)


def scheduled(s, out) -> list[Scheduled]:
    """Each request's share of a step, from the wire message (decodes first)."""
    starts = {r.req_id: r.num_computed_tokens for r in out.new_requests + out.cached_requests}
    return [Scheduled(rid, n, starts[rid], starts[rid] + n == s.requests[rid].num_tokens)
            for rid, n in zip(out.req_ids, out.num_scheduled_tokens)]


@dataclass
class Step:
    out: SchedulerOutput
    scheduled: list[Scheduled]

    def __getattr__(self, name):
        return getattr(self.out, name)


def run_step(s, token=7):
    out = s.schedule()
    step = Step(out, scheduled(s, out))
    sampled = [x.request_id for x in step.scheduled if x.sample]
    s.update_from_output(out, ModelRunnerOutput(sampled, [token] * len(sampled)))
    return step


def test_prefill_and_decode_mix_in_one_step_within_the_budget():
    s = make(budget=20)
    s.add_request(req("a", 10))
    run_step(s)  # a prefilled (10 tokens), sampled one
    s.add_request(req("b", 30))
    out = run_step(s)
    assert [(x.request_id, x.num_tokens) for x in out.scheduled] == [("a", 1), ("b", 19)]
    assert out.scheduled[0].sample and not out.scheduled[1].sample
    out = run_step(s)
    assert [(x.request_id, x.num_tokens) for x in out.scheduled] == [("a", 1), ("b", 11)]
    assert out.scheduled[1].sample and out.scheduled[1].start_position == 19


def test_without_chunking_a_prompt_waits_for_a_whole_step():
    s = make(budget=16, chunked=False, max_len=16)
    s.add_request(req("a", 12))
    s.add_request(req("b", 8))
    out = run_step(s)
    assert [x.request_id for x in out.scheduled] == ["a"]  # FCFS: b does not jump ahead
    out = run_step(s)
    assert [(x.request_id, x.num_tokens) for x in out.scheduled] == [("a", 1), ("b", 8)]


def test_max_num_seqs_caps_the_batch():
    s = make(seqs=2)
    for i in range(4):
        s.add_request(req(str(i), 3))
    assert len(run_step(s).scheduled) == 2 and len(s.waiting) == 2


def test_preemption_frees_the_newest_and_recomputes_it_later():
    s = make(num_blocks=9, block=4, budget=64)  # 8 usable blocks = 32 slots; each needs 28
    s.add_request(req("old", 8, max_tokens=20))
    s.add_request(req("new", 8, max_tokens=20))
    run_step(s)
    for _ in range(30):
        out = run_step(s)
        if out.preempted_req_ids:
            break
    assert out.preempted_req_ids == ["new"]
    new = s.requests["new"]
    assert new.status is RequestStatus.PREEMPTED and new.num_computed_tokens == 0
    assert s.waiting[0] is new and len(new.output_token_ids) > 0
    while s.requests.get("old") is not None:
        run_step(s)
    out = run_step(s)
    resumed = out.scheduled[0]
    assert resumed.request_id == "new" and resumed.start_position % 4 == 0
    # recomputed from scratch, except what its freed blocks still hold in the prefix cache
    assert resumed.sample and resumed.start_position + resumed.num_tokens + 1 == new.num_tokens
    while s.num_unfinished:
        run_step(s)
    assert s.kv.num_free_blocks == 8


def test_a_request_is_sent_once_then_only_deltas():
    s = make(budget=20, block=4)
    s.add_request(req("a", 10))
    first = run_step(s)
    assert [r.req_id for r in first.new_requests] == ["a"] and not first.cached_requests
    new = first.new_requests[0]
    assert len(new.prompt_token_ids) == 10 and len(new.block_ids) == 3  # 10 tokens, blocks of 4
    second = run_step(s)  # decode of token 11: the sampled token and no new block
    assert not second.new_requests
    delta = second.cached_requests[0]
    assert (delta.req_id, delta.new_token_ids, delta.new_block_ids) == ("a", [7], [])
    assert delta.num_computed_tokens == 10
    third = run_step(s)  # token 12 still fits block 3; nothing but the sampled token
    assert third.cached_requests[0].new_token_ids == [7] and third.cached_requests[0].new_block_ids == []


def test_a_preempted_request_comes_back_as_new_with_its_outputs():
    s = make(num_blocks=9, block=4, budget=64)
    s.add_request(req("old", 8, max_tokens=20))
    s.add_request(req("new", 8, max_tokens=20))
    run_step(s)
    out = run_step(s)
    while not out.preempted_req_ids:
        out = run_step(s)
    generated = len(s.requests["new"].output_token_ids)
    while s.requests.get("old") is not None:
        run_step(s)
    out = run_step(s)
    resumed = [r for r in out.new_requests if r.req_id == "new"][0]
    assert len(resumed.output_token_ids) == generated and resumed.output_token_ids == [7] * generated


def make_capped(cap: int, budget: int = 64) -> Scheduler:
    kv = KVCacheManager(64, 4)
    return Scheduler(SchedulerConfig(8, budget, 256, True, max_prefill_tokens_while_decoding=cap),
                     kv)


def test_prompt_chunks_are_capped_while_requests_decode():
    s = make_capped(cap=8)
    s.add_request(req("a", 30, max_tokens=10))
    out = run_step(s)  # nothing decodes yet: the whole prompt in one step
    assert [(x.request_id, x.num_tokens) for x in out.scheduled] == [("a", 30)]
    s.add_request(req("b", 20, max_tokens=10))
    chunks = []
    while "b" not in {x.request_id for x in out.scheduled if x.sample}:
        out = run_step(s)
        assert ("a", 1) in [(x.request_id, x.num_tokens) for x in out.scheduled]
        chunks += [x.num_tokens for x in out.scheduled if x.request_id == "b"]
    assert chunks == [8, 8, 4]  # a decoded at every step while b's prompt went in 8 at a time


def test_the_prefill_cap_is_lifted_when_requests_queue_up():
    from phase3_scheduling.scheduler import BACKLOG

    s = make_capped(cap=8, budget=128)
    s.add_request(req("a", 10, max_tokens=10))
    run_step(s)
    for i in range(BACKLOG + 1):
        s.add_request(req(f"w{i}", 12, max_tokens=2))
    out = run_step(s)  # a backlog: prompts fill the budget (throughput first)
    assert sum(x.num_tokens for x in out.scheduled if x.request_id != "a") == 12 * (BACKLOG + 1)
