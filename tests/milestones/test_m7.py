"""Milestone 7 — production serving: OpenAI 호환 API 서버, 스트리밍 응답 동작, 부하 테스트 통과.

Each test drives a real uvicorn server on localhost with the embedded SmolLM2 through the
official ``openai`` client or raw HTTP, and asserts behaviour, not just status codes.
"""

from __future__ import annotations

import asyncio

import httpx
import openai
import pytest

from phase3_scheduling import EngineArgs, LLM, SamplingParams
from phase5_server.api_server import ServerConfig
from phase5_server.testing import run_streams, serve_in_thread


@pytest.fixture(scope="module")
def server():
    args = EngineArgs(dtype="float32", device="cpu", max_model_len=512)
    with serve_in_thread(ServerConfig(args, served_model_name="smollm2")) as handle:
        yield handle


def test_openai_compatible_api_server(server):
    """OpenAI 호환 API 서버: the official client gets the offline engine's greedy answer."""
    client = openai.OpenAI(base_url=server.url + "/v1", api_key="x", max_retries=0)
    messages = [{"role": "user", "content": "What is the capital of France?"}]
    chat = client.chat.completions.create(model="smollm2", messages=messages, max_tokens=16, temperature=0)
    offline = LLM(None, dtype="float32", device="cpu", max_model_len=512, kv_cache_gib=0.1).chat(
        messages, SamplingParams(temperature=0, max_tokens=16), use_tqdm=False)[0]
    assert chat.choices[0].message.content == offline.outputs[0].text
    assert "Paris" in chat.choices[0].message.content
    assert chat.usage.completion_tokens == len(offline.outputs[0].token_ids)
    bad = httpx.post(server.url + "/v1/completions", json={"prompt": "x", "top_p": 2}, trust_env=False)
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "top_p"


def test_streaming_responses(server):
    """스트리밍 응답 동작: SSE deltas add up to the full answer, usage arrives last."""
    client = openai.OpenAI(base_url=server.url + "/v1", api_key="x", max_retries=0)
    full = client.completions.create(model="smollm2", prompt="The capital of France is", max_tokens=12,
                                     temperature=0)
    chunks = list(client.completions.create(model="smollm2", prompt="The capital of France is",
                                            max_tokens=12, temperature=0, stream=True,
                                            stream_options={"include_usage": True}))
    assert len(chunks) > 3
    assert "".join(c.choices[0].text for c in chunks if c.choices) == full.choices[0].text
    assert chunks[-1].usage.completion_tokens == full.usage.completion_tokens


def test_load_test_passes(server):
    """부하 테스트 통과: 128 concurrent streams finish once each; half dropping frees every block.

    Tokens are counted from each stream's usage chunk, not from its chunks: a consumer that lags
    gets several tokens merged into one chunk, as vLLM's API server does."""
    results = asyncio.run(run_streams(server.url, 128, 5))
    assert sorted(r["i"] for r in results) == list(range(128))
    assert all(r["done"] == 1 and 1 <= r["chunks"] <= 5 for r in results)
    assert all(r["usage"]["completion_tokens"] == 5 for r in results)
    server.wait_idle()
    # 20 tokens: the clients that leave after their first chunk leave while theirs is generating
    results = asyncio.run(run_streams(server.url, 64, 20, drop_every=2))
    finished = [r for r in results if not r.get("dropped")]
    assert sum(bool(r.get("dropped")) for r in results) == 32 and len(finished) == 32
    assert all(r["done"] == 1 and r["usage"]["completion_tokens"] == 20 for r in finished)
    server.wait_idle()
    free, total = server.free_blocks()
    assert free == total
    assert httpx.get(server.url + "/health", trust_env=False).status_code == 200
