"""The server's engine core runs in its own process: a distinct PID does the model work, greedy
text equals the in-process engine's, and killing that process turns /health unhealthy and gives
every open and new request an OpenAI-format 5xx error within seconds — never a hang."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time

import httpx
import psutil
import pytest

from phase3_scheduling import LLM, SamplingParams
from phase5_server.api_server import ServerConfig
from phase5_server.testing import run_streams, serve_in_thread, tiny_engine_args

PROMPT = "The quick brown fox"


def _complete(url: str, **extra) -> httpx.Response:
    body = {"model": "tiny", "prompt": PROMPT, "max_tokens": 8, "temperature": 0, **extra}
    return httpx.post(url + "/v1/completions", json=body, timeout=60, trust_env=False)


@pytest.mark.parametrize("async_scheduling", [False, True], ids=["sync", "async"])
def test_engine_process_is_separate_and_matches_the_in_process_engine(async_scheduling):
    offline = LLM.from_engine_args(tiny_engine_args())
    expected = offline.generate([PROMPT], SamplingParams(temperature=0, max_tokens=8),
                                use_tqdm=False)[0].outputs[0].text
    seeded = offline.generate([PROMPT], SamplingParams(temperature=0.8, seed=7, max_tokens=8),
                              use_tqdm=False)[0].outputs[0].text
    offline.engine.shutdown()
    served = tiny_engine_args()
    served.async_scheduling = async_scheduling  # the GPU default: steps overlap in the core
    with serve_in_thread(ServerConfig(served, served_model_name="tiny")) as server:
        pid = server.engine.engine_pid
        assert pid != os.getpid() and psutil.pid_exists(pid)
        assert psutil.Process(pid).ppid() == os.getpid()
        before = psutil.Process(pid).cpu_times().user
        reply = _complete(server.url)
        assert reply.status_code == 200 and reply.json()["choices"][0]["text"] == expected
        again = _complete(server.url, temperature=0.8, seed=7)
        assert again.json()["choices"][0]["text"] == seeded
        assert psutil.Process(pid).cpu_times().user > before  # the model work happened there


async def _open_stream(url: str, events: list) -> None:
    body = {"model": "tiny", "prompt": PROMPT, "max_tokens": 2000, "ignore_eos": True,
            "stream": True}
    async with httpx.AsyncClient(timeout=30, trust_env=False) as client:
        async with client.stream("POST", url + "/v1/completions", json=body) as response:
            events.append(("status", response.status_code))
            async for line in response.aiter_lines():
                if line.startswith("data:") and line[5:].strip() != "[DONE]":
                    events.append(("data", json.loads(line[5:])))


def test_killing_the_engine_process_gives_5xx_json_and_unhealthy_within_seconds():
    args = tiny_engine_args(max_model_len=2048)
    with serve_in_thread(ServerConfig(args, served_model_name="tiny")) as server:
        events: list = []

        async def scenario() -> float:
            stream = asyncio.create_task(_open_stream(server.url, events))
            deadline = time.monotonic() + 60
            while sum(1 for kind, _ in events if kind == "data") < 3:
                assert time.monotonic() < deadline and not stream.done(), events
                await asyncio.sleep(0.02)
            os.kill(server.engine.engine_pid, signal.SIGKILL)
            killed = time.monotonic()
            await asyncio.wait_for(stream, timeout=10)  # the open stream ends, with an error
            return killed

        killed = asyncio.run(scenario())
        errors = [p["error"] for kind, p in events if kind == "data" and "error" in p]
        assert errors and errors[-1]["type"] == "service_unavailable", events[-3:]
        health = httpx.get(server.url + "/health", trust_env=False, timeout=5)
        assert health.status_code == 503 and "error" in health.json()
        assert time.monotonic() - killed < 10
        new = _complete(server.url)
        assert new.status_code == 503 and new.json()["error"]["type"]


@pytest.mark.parametrize("n", [64])
def test_concurrent_streams_then_a_disconnect_storm_free_everything(n):
    with serve_in_thread(ServerConfig(tiny_engine_args(), served_model_name="tiny")) as server:
        results = asyncio.run(run_streams(server.url, n, 20, drop_every=2))
        assert sum(1 for r in results if r.get("dropped")) == n // 2
        server.wait_idle(timeout=30)
        stats = server.engine.stats()
        assert stats.num_running == 0 and stats.num_waiting == 0
        free, total = server.free_blocks()
        assert free == total


def test_the_api_process_freezes_its_heap_once_the_engine_is_ready():
    import gc

    gc.unfreeze()
    try:
        config = ServerConfig(tiny_engine_args(), served_model_name="tiny", gc_freeze=True)
        with serve_in_thread(config) as server:
            assert gc.get_freeze_count() > 0  # the start-up heap is out of the collector's way
            assert _complete(server.url).status_code == 200
    finally:
        gc.unfreeze()  # the test process's heap goes back to the collector
