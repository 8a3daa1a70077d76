"""The bytes the executors send: every step a real scheduler produced, and every output the
worker answered (logprobs included), decode to objects equal to the originals; so does the
engine config the workers are started with."""

import msgspec
import pytest

from phase3_scheduling import LLM
from phase3_scheduling import protocol
from phase3_scheduling.engine_config import decode_config, encode_config

from phase4_distributed.executor_testing import PROMPTS, SEEDED


@pytest.fixture(scope="module")
def recorded(tiny_llama_dir):
    """Run prompts through the in-process engine, recording each (step, output) it executed;
    a tiny cache forces preemptions, a tiny token budget chunked prompts."""
    llm = LLM(str(tiny_llama_dir), distributed_executor_backend="uni", num_gpu_blocks_override=14,
              block_size=4, max_num_batched_tokens=8, max_num_seqs=4)
    executor = llm.engine.executor
    run = executor.execute_model
    pairs = []

    def recording(step):
        output = run(step)
        pairs.append((step, output))
        return output

    executor.execute_model = recording
    llm.generate(PROMPTS, SEEDED, use_tqdm=False)
    llm.generate(PROMPTS, SEEDED, use_tqdm=False)  # the first batch's ids are finished here
    yield llm, pairs
    llm.engine.shutdown()


def test_recorded_steps_cover_every_kind_of_delta(recorded):
    _, pairs = recorded
    steps = [step for step, _ in pairs]
    assert any(s.new_requests for s in steps)
    assert any(s.cached_requests and any(c.new_block_ids for c in s.cached_requests) for s in steps)
    assert any(s.finished_req_ids for s in steps)
    assert any(s.preempted_req_ids for s in steps)
    assert any(n.output_token_ids for s in steps for n in s.new_requests)  # resumed after preemption
    assert any(any(n > 1 for n in s.num_scheduled_tokens) and 1 in s.num_scheduled_tokens
               for s in steps)  # chunks and decodes in one step


def test_steps_and_outputs_round_trip_through_msgpack(recorded):
    _, pairs = recorded
    for step, output in pairs:
        data = protocol.encode(step)
        assert isinstance(data, bytes)
        assert protocol.decode_step(data) == step
        assert protocol.decode_output(protocol.encode(output)) == output
    with_logprobs = [out for _, out in pairs if out.logprobs is not None]
    assert with_logprobs and all(len(o.logprobs.top_ids[0]) == 2 for o in with_logprobs)


def test_decoding_rejects_a_message_of_the_wrong_type(recorded):
    _, pairs = recorded
    with pytest.raises(msgspec.ValidationError):
        protocol.decode_step(protocol.encode(pairs[0][1]))


def test_engine_config_round_trips(recorded):
    llm, _ = recorded
    config = llm.engine.config
    assert decode_config(encode_config(config)) == config
