"""``schedule_lead_ms``: with async scheduling the engine process schedules the next step only
shortly before the step in flight is expected to end, so that a request arriving meanwhile joins
that step instead of the one after it. A simulated device stands in for a GPU (each step takes
``STEP_S`` of wall time, one after the other, and its output is read later): on the CPU a step
runs inside its launch, so there the lead has nothing to overlap. The engine process's loop runs
for real, in a thread, over zmq sockets on loopback."""

from __future__ import annotations

import dataclasses
import os
import threading
import time

import msgspec
import pytest
import zmq

from phase3_scheduling import LLM, SamplingParams
from phase3_scheduling.core_messages import EngineCoreOutputs, EngineCoreRequest
from phase3_scheduling.engine_config import resolve_engine_config
from phase3_scheduling.engine_core import EngineCore
from phase3_scheduling.engine_core_proc import ADD, OUTPUTS, SHUTDOWN, EngineCoreProc
from phase3_scheduling.executor import DeferredStep, UniProcExecutor

from test_step_failure import tiny_engine_args

STEP_S = 0.08
LEAD_MS = 20.0
PROMPT = [11, 12, 13, 14, 15]


class SimulatedDevice(UniProcExecutor):
    """Runs each step on the CPU at once, then lets its output be read only when a device that
    takes STEP_S a step, one step at a time, would have finished it."""

    def __init__(self, config):
        super().__init__(config)
        self._free_at = 0.0

    def submit_step(self, step):
        output = self.execute_model(step)
        end = self._free_at = max(time.perf_counter(), self._free_at) + STEP_S

        def wait():
            time.sleep(max(0.0, end - time.perf_counter()))
            return output

        return DeferredStep(wait)


def make_core(lead_ms: float) -> EngineCore:
    args = dataclasses.replace(tiny_engine_args(), async_scheduling=True, schedule_lead_ms=lead_ms)
    return EngineCore(resolve_engine_config(args), SimulatedDevice)


def request(rid: str, max_tokens: int) -> EngineCoreRequest:
    params = SamplingParams(temperature=0, max_tokens=max_tokens, ignore_eos=True)
    return EngineCoreRequest.build(rid, PROMPT, params, [], time.time())


def test_the_lead_needs_async_scheduling():
    from phase3_scheduling import EngineArgs

    with pytest.raises(ValueError, match="needs async scheduling"):
        EngineArgs(schedule_lead_ms=2).scheduler_config(4096, "cpu")  # async is off on the CPU
    with pytest.raises(ValueError, match="schedule_lead_ms must be >= 0"):
        EngineArgs(schedule_lead_ms=-1, async_scheduling=True).scheduler_config(4096, "cpu")
    assert EngineArgs(schedule_lead_ms=2).scheduler_config(4096, "cuda").schedule_lead_ms == 2


def test_the_delay_is_the_running_steps_expected_rest_less_the_lead():
    for lead_ms in (0.0, LEAD_MS):
        core = make_core(lead_ms)
        core.add_request(request("a", 30))
        assert core.schedule_delay() == 0.0  # nothing measured yet
        for _ in range(6):  # a prefill, then decode steps: the typical one is known
            core.step()
        assert core.step_clock.typical_decode_s == pytest.approx(STEP_S, rel=0.25)
        delay = core.schedule_delay()
        if lead_ms == 0:
            assert delay == 0.0
        else:
            # one step in flight since the last collection, expected to end STEP_S after it
            assert STEP_S - 2 * LEAD_MS / 1e3 < delay <= STEP_S - LEAD_MS / 1e3 + 0.01
            core.add_request(request("b", 2))  # a waiting request is scheduled at once
            assert core.schedule_delay() == 0.0
        core.shutdown()


def ttft_of_a_late_request(lead_ms: float) -> tuple[float, list[int], list[int]]:
    """Request a decodes; 10 ms after one of its step outputs, request b arrives. Returns b's
    time to first token and both requests' tokens."""
    core = make_core(lead_ms)
    ctx = zmq.Context()
    inbox, outbox = ctx.socket(zmq.PULL), ctx.socket(zmq.PUSH)
    port_in = inbox.bind_to_random_port("tcp://127.0.0.1")
    port_out = outbox.bind_to_random_port("tcp://127.0.0.1")
    send, receive = ctx.socket(zmq.PUSH), ctx.socket(zmq.PULL)
    send.connect(f"tcp://127.0.0.1:{port_in}")
    receive.connect(f"tcp://127.0.0.1:{port_out}")
    proc = EngineCoreProc(core, inbox, outbox, os.getppid())
    loop = threading.Thread(target=proc.run_busy_loop, daemon=True)
    loop.start()
    encode, decode = msgspec.msgpack.Encoder(), msgspec.msgpack.Decoder(EngineCoreOutputs)
    tokens: dict[str, list[int]] = {"a": [], "b": []}
    try:
        send.send_multipart([ADD, encode.encode(request("a", 24))])
        sent_b = first_b = None
        while first_b is None:
            assert receive.poll(10_000), "no output from the engine loop"
            kind, payload = receive.recv_multipart()
            assert kind == OUTPUTS
            for out in decode.decode(payload).outputs:
                tokens[out.request_id] += out.new_token_ids
                if out.request_id == "b" and out.new_token_ids:
                    first_b = time.perf_counter()
            if sent_b is None and len(tokens["a"]) >= 6:  # a's steps run back to back
                time.sleep(0.01)
                sent_b = time.perf_counter()
                send.send_multipart([ADD, encode.encode(request("b", 2))])
        while len(tokens["a"]) < 24 or len(tokens["b"]) < 2:
            assert receive.poll(10_000), "the requests did not finish"
            for out in decode.decode(receive.recv_multipart()[1]).outputs:
                tokens[out.request_id] += out.new_token_ids
        assert sent_b is not None
        return first_b - sent_b, tokens["a"], tokens["b"]
    finally:
        send.send_multipart([SHUTDOWN, b""])
        loop.join(timeout=10)
        core.shutdown()
        ctx.destroy(linger=0)


def test_a_request_arriving_mid_step_joins_the_next_step():
    ttft_at_once, a0, b0 = ttft_of_a_late_request(0.0)
    ttft_lead, a1, b1 = ttft_of_a_late_request(LEAD_MS)
    # when a step is scheduled changes no token: both give the synchronous engine's
    sync = LLM.from_engine_args(tiny_engine_args())
    greedy = [SamplingParams(temperature=0, max_tokens=n, ignore_eos=True) for n in (24, 2)]
    expected = [o.outputs[0].token_ids for o in sync.generate([PROMPT, PROMPT], greedy,
                                                                 use_tqdm=False)]
    assert [a0, b0] == [a1, b1] == expected
    # at once: the next step was scheduled before b came, so b waits for the one after it
    # (~3 steps to its first token); with the lead b joins the next step (~2 steps)
    assert ttft_at_once > 2.5 * STEP_S - 0.02
    assert ttft_lead < ttft_at_once - STEP_S / 2
