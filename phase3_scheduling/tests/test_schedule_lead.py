"""``schedule_lead_ms``: with async scheduling the engine process schedules the next step only
shortly before the step in flight is expected to end, so that a request arriving meanwhile joins
that step instead of the one after it. A simulated device stands in for a GPU (each step takes
``STEP_S`` of wall time, one after the other, and its output is read later): on the CPU a step
runs inside its launch, so there the lead has nothing to overlap. The engine process's loop runs
for real, in a thread, over zmq sockets on loopback."""

from __future__ import annotations

import dataclasses
import os
from collections import defaultdict
import threading
import time

import msgspec
import pytest
import zmq

from phase3_scheduling import LLM, SamplingParams
from phase3_scheduling.config import DEFAULT_SCHEDULE_LEAD_MS
from phase3_scheduling.core_messages import EngineCoreOutputs, EngineCoreRequest
from phase3_scheduling.engine_config import resolve_engine_config
from phase3_scheduling.engine_core import EngineCore
from phase3_scheduling.engine_core_proc import ABORT, ADD, OUTPUTS, SHUTDOWN, EngineCoreProc
from phase3_scheduling.executor import DeferredStep, UniProcExecutor
from phase3_scheduling.schedule_lead import LeadTimer

from test_step_failure import tiny_engine_args

STEP_S = 0.08
LEAD_MS = 20.0
PROMPT = [11, 12, 13, 14, 15]


class SimulatedDevice(UniProcExecutor):
    """Runs each step on the CPU at once, then lets its output be read only when a device that
    takes STEP_S a step, one step at a time, would have finished it. ``host_s``: more host time
    per launch, spent before the device gets the step (a slow scheduler or input preparation)."""

    host_s = 0.0

    def __init__(self, config):
        super().__init__(config)
        self._free_at = 0.0

    def submit_step(self, step):
        time.sleep(self.host_s)
        output = self.execute_model(step)
        end = self._free_at = max(time.perf_counter(), self._free_at) + STEP_S

        def wait():
            time.sleep(max(0.0, end - time.perf_counter()))
            return output

        return DeferredStep(wait)


class SlowHostDevice(SimulatedDevice):
    host_s = 0.04  # twice the lead


def make_core(lead_ms: float, device: type[SimulatedDevice] = SimulatedDevice) -> EngineCore:
    args = dataclasses.replace(tiny_engine_args(), async_scheduling=True, schedule_lead_ms=lead_ms)
    return EngineCore(resolve_engine_config(args), device)


def request(rid: str, max_tokens: int) -> EngineCoreRequest:
    params = SamplingParams(temperature=0, max_tokens=max_tokens, ignore_eos=True)
    return EngineCoreRequest.build(rid, PROMPT, params, [], time.time())


def test_the_lead_needs_async_scheduling():
    from phase3_scheduling import EngineArgs

    with pytest.raises(ValueError, match="needs async scheduling"):
        EngineArgs(schedule_lead_ms=2).scheduler_config(4096, "cpu")  # async is off on the CPU
    with pytest.raises(ValueError, match="schedule_lead_ms must be >= 0"):
        EngineArgs(schedule_lead_ms=-1, async_scheduling=True).scheduler_config(4096, "cpu")
    assert EngineArgs(schedule_lead_ms=3).scheduler_config(4096, "cuda").schedule_lead_ms == 3
    # by default on wherever async scheduling is, off elsewhere
    assert EngineArgs().scheduler_config(4096, "cuda").schedule_lead_ms == DEFAULT_SCHEDULE_LEAD_MS
    assert EngineArgs().scheduler_config(4096, "cpu").schedule_lead_ms == 0
    assert EngineArgs(async_scheduling=False).scheduler_config(4096, "cuda").schedule_lead_ms == 0
    assert EngineArgs(schedule_lead_ms=0).scheduler_config(4096, "cuda").schedule_lead_ms == 0


def test_the_delay_is_the_running_steps_expected_rest_less_the_lead():
    for lead_ms in (0.0, LEAD_MS):
        core = make_core(lead_ms)
        core.add_request(request("a", 30))
        assert core.schedule_delay() == 0.0  # nothing measured yet
        for _ in range(6):  # a prefill, then decode steps: the typical one is known
            core.step()
        timer = core.lead_timer
        delay = core.schedule_delay()
        if lead_ms == 0:
            assert delay == 0.0 and timer.decode_s is None  # off: the engine does not feed it
        else:
            assert timer.decode_s == pytest.approx(STEP_S, rel=0.1)  # each collection blocked
            assert 0 < timer.host_s < STEP_S / 2  # the tiny model's CPU forward, in the launch
            # one step in flight since the last collection, expected to end STEP_S after it; the
            # next must be queued LEAD_MS before that, and queueing takes the host host_s
            latest = STEP_S - LEAD_MS / 1e3 - timer.host_s
            assert latest - LEAD_MS / 1e3 < delay <= latest + 0.005
            core.add_request(request("b", 2))  # a waiting request is scheduled at once
            assert core.schedule_delay() == 0.0
        core.shutdown()


def test_a_lead_timer_that_finds_a_step_done_lowers_its_estimate_to_what_it_saw():
    timer = LeadTimer(0.002)
    timer.collected(0.0, 0.001, 0.0070, is_decode=False)  # a prompt's step: not a decode step
    assert timer.decode_s is None and timer.delay(0.0, 0.0, True) == 0.0
    timer.collected(0.0, 0.001, 0.0070, is_decode=True)  # blocked 6 ms: it ended at 7 ms
    assert timer.decode_s == pytest.approx(0.007)
    timer.queued(0.001)
    assert timer.delay(0.0, 0.0, True) == pytest.approx(0.007 - 0.002 - timer.host_s)
    assert timer.delay(0.0, 0.0, False) == 0.0  # a prompt in flight: schedule at once
    timer.collected(0.0, 0.0065, 0.0065, is_decode=True)  # done before 6.5 ms: at most that
    assert timer.decode_s == pytest.approx(0.0065)
    timer.collected(0.0, 0.0090, 0.0090, is_decode=True)  # a late look bounds nothing lower
    assert timer.decode_s == pytest.approx(0.0065)


Message = tuple[bytes, bytes, str]  # (kind, payload, request id)


def add(request: EngineCoreRequest) -> Message:
    return ADD, msgspec.msgpack.encode(request), request.request_id


def abort(rid: str) -> Message:
    return ABORT, msgspec.msgpack.encode([rid]), rid


def run_loop(core: EngineCore, messages: list[tuple[Message, int]], until: dict[str, int],
             ) -> tuple[dict[str, list[tuple[float, int]]], dict[str, float]]:
    """The engine process's loop in a thread over loopback zmq. Each ``(message, after)`` is
    sent once request a has ``after`` tokens (10 ms after that output, mid-step, if after > 0).
    Returns per request its outputs' (arrival time, token) until each request in ``until`` has
    that many tokens, and when each message was sent. The loop is stopped; the core is not."""
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
    decode = msgspec.msgpack.Decoder(EngineCoreOutputs)
    seen: dict[str, list[tuple[float, int]]] = defaultdict(list)
    sent: dict[str, float] = {}
    pending = list(messages)
    try:
        while any(len(seen[rid]) < n for rid, n in until.items()):
            while pending and len(seen["a"]) >= pending[0][1]:
                (kind, payload, rid), after = pending.pop(0)
                if after > 0:
                    time.sleep(0.01)  # mid-step
                sent[rid] = time.perf_counter()
                send.send_multipart([kind, payload])
            assert receive.poll(10_000), "no output from the engine loop"
            kind, payload = receive.recv_multipart()
            assert kind == OUTPUTS
            now = time.perf_counter()
            for out in decode.decode(payload).outputs:
                seen[out.request_id] += [(now, t) for t in out.new_token_ids]
        return seen, sent
    finally:
        send.send_multipart([SHUTDOWN, b""])
        loop.join(timeout=10)
        ctx.destroy(linger=0)


def test_a_slow_host_does_not_stretch_the_steps():
    """The host needs twice the lead to queue a step: the lead timer must wake it that much
    earlier. (Timing a step from one collection to the next counts the engine's own wait: the
    estimate fed on itself and every step grew by host time less lead, without end.)"""
    core = make_core(LEAD_MS, SlowHostDevice)
    seen, _ = run_loop(core, [(add(request("a", 40)), 0)], {"a": 40})
    core.shutdown()
    times = [t for t, _ in seen["a"]]
    gaps = sorted(b - a for a, b in zip(times[20:], times[21:]))  # after the estimates settled
    assert gaps[len(gaps) // 2] < STEP_S * 1.1, gaps  # back to back on the simulated device


def ttft_of_a_late_request(lead_ms: float) -> tuple[float, list[int], list[int]]:
    """Request a decodes; 10 ms after one of its step outputs, request b arrives. Returns b's
    time to first token and both requests' tokens."""
    core = make_core(lead_ms)
    seen, sent = run_loop(core, [(add(request("a", 24)), 0), (add(request("b", 2)), 6)],
                          {"a": 24, "b": 2})
    core.shutdown()
    return (seen["b"][0][0] - sent["b"], [t for _, t in seen["a"]], [t for _, t in seen["b"]])


def test_an_abort_during_the_wait_frees_its_blocks_and_the_rest_goes_on():
    """Request a is aborted 10 ms into a decode step, while the engine waits to schedule the
    next: a stops, b still gets the synchronous engine's tokens, and no KV block stays taken."""
    core = make_core(LEAD_MS)
    seen, _ = run_loop(core, [(add(request("a", 40)), 0), (add(request("b", 20)), 0),
                              (abort("a"), 6)], {"b": 20})
    assert core.lead_timer.decode_s is not None  # the lead was waiting when the abort came
    assert len(seen["a"]) < 10  # a token or two in flight at most after the abort
    sync = LLM.from_engine_args(tiny_engine_args())
    greedy = SamplingParams(temperature=0, max_tokens=20, ignore_eos=True)
    expected = sync.generate([PROMPT], greedy, use_tqdm=False)[0].outputs[0].token_ids
    assert [t for _, t in seen["b"]] == expected
    for _ in range(3):  # collect what is still in flight
        if core.has_unfinished_requests():
            core.step()
    assert not core.has_unfinished_requests()
    assert core.kv_manager.num_free_blocks == core.kv_manager.pool.num_blocks - 1
    core.shutdown()


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
