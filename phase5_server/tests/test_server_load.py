"""Load: 128 concurrent streaming requests all complete exactly once; a disconnect storm (half the
clients drop mid-stream) leaves the server healthy and every KV block free again."""

from __future__ import annotations

import asyncio
import json

import httpx


async def _stream(client: httpx.AsyncClient, url: str, i: int, max_tokens: int, drop_after: int | None):
    body = {"model": "smollm2", "prompt": f"Request number {i}: tell me a fact about the number {i}.",
            "max_tokens": max_tokens, "temperature": 0, "ignore_eos": True, "stream": True,
            "stream_options": {"include_usage": True}}
    chunks, done, usage, ids = 0, 0, None, set()
    async with client.stream("POST", url + "/v1/completions", json=body) as response:
        assert response.status_code == 200
        async for line in response.aiter_lines():
            if not line.startswith("data:"):
                continue
            data = line[5:].strip()
            if data == "[DONE]":
                done += 1
                continue
            payload = json.loads(data)
            assert "error" not in payload, payload
            ids.add(payload["id"])
            if payload["choices"]:
                chunks += 1
            if payload.get("usage"):
                usage = payload["usage"]
            if drop_after is not None and chunks >= drop_after:
                return {"i": i, "dropped": True}
    return {"i": i, "chunks": chunks, "done": done, "usage": usage, "ids": ids}


async def _run(url: str, n: int, max_tokens: int, drop_every: int | None = None):
    limits = httpx.Limits(max_connections=None, max_keepalive_connections=None)
    async with httpx.AsyncClient(timeout=httpx.Timeout(300), limits=limits, trust_env=False) as client:
        return await asyncio.gather(*[
            _stream(client, url, i, max_tokens, 2 if drop_every and i % drop_every == 0 else None)
            for i in range(n)])


def test_128_concurrent_streams_complete_once_and_free_every_block(smol_server):
    smol_server.wait_idle()
    results = asyncio.run(_run(smol_server.url, 128, 6))
    assert sorted(r["i"] for r in results) == list(range(128))
    assert all(r["done"] == 1 for r in results)  # one [DONE] each: none lost, none duplicated
    assert all(r["chunks"] == 6 and r["usage"]["completion_tokens"] == 6 for r in results)
    all_ids = [next(iter(r["ids"])) for r in results]
    assert all(len(r["ids"]) == 1 for r in results) and len(set(all_ids)) == 128
    smol_server.wait_idle()
    free, total = smol_server.free_blocks()
    assert free == total


def test_disconnect_storm_leaves_no_leaked_blocks(smol_server):
    smol_server.wait_idle()
    results = asyncio.run(_run(smol_server.url, 64, 40, drop_every=2))
    dropped = [r for r in results if r.get("dropped")]
    finished = [r for r in results if not r.get("dropped")]
    assert len(dropped) == 32 and len(finished) == 32
    assert all(r["done"] == 1 and r["usage"]["completion_tokens"] == 40 for r in finished)
    smol_server.wait_idle()  # aborted requests freed their blocks
    free, total = smol_server.free_blocks()
    assert free == total
    assert httpx.get(smol_server.url + "/health", trust_env=False).status_code == 200
    after = httpx.post(smol_server.url + "/v1/completions", trust_env=False, timeout=60,
                       json={"model": "smollm2", "prompt": "Hello", "max_tokens": 3})
    assert after.status_code == 200
    metrics = httpx.get(smol_server.url + "/metrics", trust_env=False).text
    assert 'finished_reason="abort"' in metrics
