"""Run a real uvicorn server on a free localhost port in a background thread (tests, notebooks).

``serve_in_thread`` yields a handle with the URL, the server state (engine, metrics) and helpers
to check the KV block pool; on exit it stops uvicorn and, if it loaded the engine, shuts it down.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import threading
import time
from dataclasses import dataclass
from typing import Iterator

import httpx

from phase3_scheduling import AsyncLLMEngine, EngineArgs
from phase3_scheduling.core_client import AsyncMPClient

from .api_server import ServerConfig, make_server
from .serving_engine import ServerState


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# a 2-layer Llama with SmolLM2's vocabulary: random weights, steps of a few milliseconds on a CPU
TINY_LLAMA = dict(vocab_size=49152, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, head_dim=16,
                  max_position_embeddings=2048, rms_norm_eps=1e-5, rope_theta=10000.0,
                  tie_word_embeddings=True, bos_token_id=1, eos_token_id=2)


def tiny_engine_args(max_model_len: int = 128, **kwargs) -> EngineArgs:
    """A 2-layer random-weight Llama with SmolLM2's tokenizer: fast enough for fuzzing on a CPU."""
    from shared.model_registry import resolve_model

    return EngineArgs(load_format="dummy", hf_config=dict(TINY_LLAMA), tokenizer=str(resolve_model()),
                      dtype="float32", device="cpu", max_model_len=max_model_len,
                      kv_cache_gib=0.05, **kwargs)


@dataclass
class ServerHandle:
    url: str
    state: ServerState
    server: object
    thread: threading.Thread

    @property
    def engine(self) -> AsyncLLMEngine | AsyncMPClient:
        return self.state.loaded_engine

    def free_blocks(self) -> tuple[int, int]:
        """(free KV blocks, all allocatable blocks) of the engine's pool."""
        return self.engine.free_kv_blocks()

    def wait_idle(self, timeout: float = 60.0) -> None:
        """Until the engine holds no request (aborts travel through its command queue)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.engine.is_idle() and not self.state.active:
                return
            time.sleep(0.05)
        raise TimeoutError(f"engine not idle after {timeout} s: free blocks {self.free_blocks()}")


@contextlib.contextmanager
def serve_in_thread(config: ServerConfig | None = None, engine: AsyncLLMEngine | None = None,
                    wait_ready: bool = True, timeout: float = 300.0) -> Iterator[ServerHandle]:
    config = config or ServerConfig(EngineArgs())
    config.port = config.port if config.port not in (0, 8000) else free_port()
    server = make_server(config, engine)
    thread = threading.Thread(target=server.run, name="uvicorn", daemon=True)
    thread.start()
    handle = ServerHandle(f"http://127.0.0.1:{config.port}", server.lightvllm_state, server, thread)
    try:
        deadline = time.monotonic() + timeout
        while not server.started:
            if not thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("uvicorn did not start")
            time.sleep(0.02)
        while wait_ready:
            if handle.state.load_error is not None:
                raise RuntimeError(f"the model failed to load: {handle.state.load_error}")
            if httpx.get(handle.url + "/health", trust_env=False).status_code == 200:
                break
            if time.monotonic() > deadline:
                raise TimeoutError("the server did not become healthy")
            time.sleep(0.1)
        yield handle
    finally:
        server.should_exit = True
        thread.join(timeout=30)


async def _stream(client: httpx.AsyncClient, url: str, i: int, max_tokens: int, drop_after: int | None):
    body = {"model": None, "prompt": f"Request number {i}: tell me a fact about the number {i}.",
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


async def run_streams(url: str, n: int, max_tokens: int, drop_every: int | None = None) -> list[dict]:
    """``n`` concurrent streaming completions; every ``drop_every``-th client leaves after its
    first chunk (not after a later one: a lagging consumer gets its tokens merged into fewer
    chunks, so a stream may end in one or two)."""
    limits = httpx.Limits(max_connections=None, max_keepalive_connections=None)
    async with httpx.AsyncClient(timeout=httpx.Timeout(300), limits=limits, trust_env=False) as client:
        return await asyncio.gather(*[
            _stream(client, url, i, max_tokens, 1 if drop_every and i % drop_every == 0 else None)
            for i in range(n)])
