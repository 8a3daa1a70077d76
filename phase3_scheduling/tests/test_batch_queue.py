"""Micro-batches in flight (what pipeline parallelism needs from the engine core): with an
executor that accepts two steps before returning the first output, the core keeps two steps
outstanding, never puts a request into two of them, and produces exactly the tokens of the
one-step-at-a-time engine."""

from __future__ import annotations

from phase3_scheduling import LLMEngine, SamplingParams
from phase3_scheduling.executor import UniProcExecutor
from phase3_scheduling.llm import LLM

from test_step_failure import tiny_engine_args

GREEDY = SamplingParams(temperature=0, max_tokens=7, ignore_eos=True)
SEEDED = SamplingParams(temperature=0.9, top_p=0.9, seed=3, max_tokens=5, ignore_eos=True)
PROMPTS = [[5, 6, 7], [8, 9], [10, 11, 12, 13], [14], [15, 16], [17, 18, 19]]


class DeferredStep:
    def __init__(self, executor: "TwoInFlightExecutor", step):
        self.executor, self.step = executor, step

    def result(self):
        self.executor.outstanding.remove(self)
        return self.executor.execute_model(self.step)


class TwoInFlightExecutor(UniProcExecutor):
    """Runs a step only when its output is asked for, and records what was outstanding."""

    def __init__(self, config):
        super().__init__(config)
        self.outstanding: list[DeferredStep] = []
        self.max_outstanding = 0

    @property
    def max_concurrent_batches(self) -> int:
        return 2

    def submit_step(self, step):
        in_flight = {rid for pending in self.outstanding for rid in pending.step.req_ids}
        assert not in_flight & set(step.req_ids), "a request was scheduled twice while in flight"
        pending = DeferredStep(self, step)
        self.outstanding.append(pending)
        self.max_outstanding = max(self.max_outstanding, len(self.outstanding))
        return pending


def generate(engine: LLMEngine, params: SamplingParams) -> list[list[int]]:
    return [o.outputs[0].token_ids
            for o in LLM.from_engine(engine).generate(PROMPTS, params, use_tqdm=False)]


def test_two_steps_in_flight_give_the_tokens_of_one_at_a_time():
    args = tiny_engine_args()
    serial = LLMEngine(args)
    piped = LLMEngine(args, TwoInFlightExecutor)
    for params in (GREEDY, SEEDED):
        assert generate(piped, params) == generate(serial, params)
    executor = piped.executor
    assert executor.max_outstanding == 2 and not executor.outstanding
    assert piped.kv_manager.all_blocks_free and not piped.has_unfinished_requests()
    assert not piped.core.scheduler.in_flight


def test_an_abort_while_in_flight_frees_everything():
    engine = LLMEngine(tiny_engine_args(), TwoInFlightExecutor)
    for i, prompt in enumerate(PROMPTS):
        engine.add_request(str(i), prompt, GREEDY)
    engine.step()  # submits the first micro-batch: nothing is back yet
    assert engine.core.batch_queue
    engine.abort_request([str(i) for i in range(len(PROMPTS))])
    while engine.has_unfinished_requests():
        assert engine.step() == []  # the outputs of aborted requests are dropped
    assert engine.kv_manager.all_blocks_free and not engine.core.scheduler.in_flight
