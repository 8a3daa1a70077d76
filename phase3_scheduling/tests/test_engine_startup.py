"""The start-up timeline: every phase is timed, and the engine process's phases reach the API
process in its READY message (a real engine-core process with a tiny random-weight model)."""

from __future__ import annotations

import time

import msgspec

from phase3_scheduling import EngineArgs, LLMEngine
from phase3_scheduling.core_client import AsyncMPClient
from phase3_scheduling.engine_core_proc import ReadyInfo
from phase3_scheduling.startup_timeline import StartupTimeline, format_phases, process_age

TINY = dict(vocab_size=512, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
            num_attention_heads=4, num_key_value_heads=2, head_dim=16,
            max_position_embeddings=2048, rms_norm_eps=1e-5, rope_theta=10000.0,
            tie_word_embeddings=True, bos_token_id=1, eos_token_id=2)
EXECUTOR_PHASES = ("executor_init", "load_model", "memory_profile", "kv_cache_alloc",
                   "compile_ahead", "warm_up", "gemm_tuning", "graph_capture")
ENGINE_PROCESS_PHASES = ("core_imports", "config_wait", "prefetch_wait",
                         "prefetch_kernels_overlapped", *EXECUTOR_PHASES, "core_init", "gc_freeze")
API_PHASES = ("api_spawn", "api_config", "api_tokenizer", "api_send_config", "api_wait_ready")


def tiny_args() -> EngineArgs:
    return EngineArgs(load_format="dummy", hf_config=dict(TINY), dtype="float32", device="cpu",
                      max_model_len=128, kv_cache_gib=0.05)


def test_timeline_adds_phases_in_order_and_formats_one_line():
    timeline = StartupTimeline()
    timeline.add("b", 1.0)
    outer = time.perf_counter()
    with timeline.phase("a"):
        time.sleep(0.05)  # the phase must measure this, against the clock around it
    outer = time.perf_counter() - outer
    timeline.add("b", 0.5)
    timeline.add("c", -1.0)  # a clock that stepped back never subtracts
    assert list(timeline.phases) == ["b", "a", "c"] and timeline.phases["b"] == 1.5
    assert 0.05 <= timeline.phases["a"] <= outer and timeline.phases["c"] == 0.0
    assert timeline.total() == 1.5 + timeline.phases["a"]
    assert format_phases({"x": 1.234, "y": 0.0}) == "x 1.23 s, y 0.00 s"


def test_process_age_is_this_process_s_lifetime():
    age = process_age()
    assert age is None or age > 0.0


def test_ready_info_round_trips_its_phases_as_plain_msgpack():
    ready = ReadyInfo(1, 10, [1, 2], 3.0, {"load_model": 1.5, "warm_up": 0.25})
    decoded = msgspec.msgpack.decode(msgspec.msgpack.encode(ready), type=ReadyInfo)
    assert decoded.phases == {"load_model": 1.5, "warm_up": 0.25}
    assert list(msgspec.msgpack.decode(msgspec.msgpack.encode(ready))[-1]) == ["load_model",
                                                                                "warm_up"]


def test_in_process_executor_times_every_start_up_phase():
    engine = LLMEngine(tiny_args())
    try:
        phases = engine.executor.startup_phases
        assert tuple(phases) == EXECUTOR_PHASES
        assert all(seconds >= 0.0 for seconds in phases.values())
        assert sum(phases.values()) <= engine.core.startup_seconds + 1e-6
    finally:
        engine.shutdown()


def test_ready_message_carries_the_engine_process_timeline():
    client = AsyncMPClient(tiny_args())
    try:
        phases = client.startup_phases
        names = list(phases)
        if process_age() is not None:
            assert names.pop(0) == "api_before_engine"
        assert tuple(names[:len(ENGINE_PROCESS_PHASES)]) == ENGINE_PROCESS_PHASES
        assert set(names[len(ENGINE_PROCESS_PHASES):]) == {*API_PHASES, "total"}
        assert all(isinstance(s, float) and s >= 0.0 for s in phases.values())
        assert phases["core_imports"] > 0.0  # a fresh interpreter imports torch
        assert phases["load_model"] > 0.0
        # the engine process's phases ran while the API process resolved the config, loaded
        # the tokenizer and waited, so they fit in that time (plus the 10 ms ticks of /proc)
        engine_seconds = sum(phases[name] for name in ENGINE_PROCESS_PHASES
                             if name != "prefetch_kernels_overlapped")  # ran in config_wait
        api_seconds = sum(phases[name] for name in API_PHASES if name != "api_spawn")
        assert engine_seconds <= api_seconds + phases["api_spawn"] + 0.1
        assert phases["total"] >= api_seconds
    finally:
        client.shutdown()
