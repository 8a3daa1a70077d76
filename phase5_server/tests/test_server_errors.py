"""Error paths: OpenAI-shaped JSON with the right status, and the server stays up after each."""

from __future__ import annotations

import threading

import httpx
import pytest

from phase3_scheduling import AsyncLLMEngine
from phase5_server.api_server import ServerConfig
from phase5_server.testing import serve_in_thread, tiny_engine_args

OK_COMPLETION = {"model": "tiny", "prompt": "hello", "max_tokens": 2}
OK_CHAT = {"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}


def _post(url: str, path: str, **kwargs) -> httpx.Response:
    return httpx.post(url + path, trust_env=False, timeout=60, **kwargs)


def _assert_error(response: httpx.Response, status: int, param: str | None = None) -> dict:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["message"]
    if param is not None:
        assert error["param"] == param
    return error


@pytest.mark.parametrize("change, param", [
    ({"max_tokens": -1}, "max_tokens"), ({"max_tokens": 0}, "max_tokens"),
    ({"temperature": -0.5}, "temperature"), ({"top_p": 0}, "top_p"), ({"top_p": 1.5}, "top_p"),
    ({"top_k": -2}, "top_k"), ({"min_p": 2}, "min_p"), ({"presence_penalty": 3}, "presence_penalty"),
    ({"frequency_penalty": -3}, "frequency_penalty"), ({"repetition_penalty": 0}, "repetition_penalty"),
    ({"n": 0}, "n"), ({"logprobs": 21}, "logprobs"), ({"model": "gpt-4"}, "model"),
    ({"prompt": "word " * 300}, "prompt"), ({"prompt": [10**9]}, "prompt"), ({"prompt": []}, "prompt"),
    ({"max_tokens": 100_000}, "max_tokens"), ({"stop": [""]}, "stop"), ({"seed": 2**70}, "seed"),
    ({"prompt": None}, "prompt"), ({"stream_options": {"include_usage": "maybe"}}, None),
])
def test_invalid_completion_fields_are_400(tiny_server, change, param):
    _assert_error(_post(tiny_server.url, "/v1/completions", json={**OK_COMPLETION, **change}), 400, param)


@pytest.mark.parametrize("change", [
    {"messages": [{"role": "wizard", "content": "hi"}]}, {"messages": []},
    {"messages": [{"content": "no role"}]}, {"max_completion_tokens": -5}, {"top_logprobs": 3},
    {"logprobs": True, "top_logprobs": 30}, {"temperature": -1}, {"model": "nope"},
])
def test_invalid_chat_fields_are_400(tiny_server, change):
    _assert_error(_post(tiny_server.url, "/v1/chat/completions", json={**OK_CHAT, **change}), 400)


def test_malformed_json_unknown_route_method_and_body_limit(tiny_server):
    url = tiny_server.url
    bad = _post(url, "/v1/completions", content=b'{"prompt": "x",', headers={"content-type": "application/json"})
    assert _assert_error(bad, 400)["code"] == "invalid_json"
    _assert_error(_post(url, "/v1/completions", content=b"[1, 2]", headers={"content-type": "application/json"}), 400)
    _assert_error(httpx.get(url + "/v1/nothing", trust_env=False), 404)
    _assert_error(httpx.get(url + "/v1/completions", trust_env=False), 405)
    big = {"model": "tiny", "prompt": "x" * 100_000}
    _assert_error(_post(url, "/v1/completions", json=big), 413)
    # chunked upload without a content-length is counted too
    chunks = (b"x" * 1024 for _ in range(100))
    _assert_error(_post(url, "/v1/completions", content=chunks, headers={"content-type": "application/json"}), 413)
    ok = _post(url, "/v1/completions", json=OK_COMPLETION)
    assert ok.status_code == 200 and ok.json()["choices"][0]["finish_reason"] == "length"
    assert httpx.get(url + "/health", trust_env=False).status_code == 200


def test_api_key_required_when_set(tiny_server, monkeypatch):
    # its own engine: an engine-process client serves the one event loop that first used it
    config = ServerConfig(tiny_engine_args(), served_model_name="tiny", api_key="s3cret",
                          engine_process=False)
    with serve_in_thread(config) as keyed:
        _assert_error(_post(keyed.url, "/v1/completions", json=OK_COMPLETION), 401)
        wrong = _post(keyed.url, "/v1/completions", json=OK_COMPLETION, headers={"Authorization": "Bearer nope"})
        assert _assert_error(wrong, 401)["code"] == "invalid_api_key"
        good = _post(keyed.url, "/v1/completions", json=OK_COMPLETION, headers={"Authorization": "Bearer s3cret"})
        assert good.status_code == 200
        assert httpx.get(keyed.url + "/health", trust_env=False).status_code == 200  # health stays open


def test_503_while_starting_then_ready(monkeypatch):
    release = threading.Event()
    real = AsyncLLMEngine.from_engine_args

    def slow_load(args):
        release.wait(60)
        return real(args)

    monkeypatch.setattr(AsyncLLMEngine, "from_engine_args", staticmethod(slow_load))
    config = ServerConfig(tiny_engine_args(), served_model_name="tiny", engine_process=False)
    with serve_in_thread(config, wait_ready=False) as h:
        _assert_error(httpx.get(h.url + "/health", trust_env=False), 503)
        _assert_error(_post(h.url, "/v1/completions", json=OK_COMPLETION), 503)
        assert httpx.get(h.url + "/version", trust_env=False).status_code == 200
        release.set()
        for _ in range(600):
            if httpx.get(h.url + "/health", trust_env=False).status_code == 200:
                break
            threading.Event().wait(0.05)
        assert _post(h.url, "/v1/completions", json=OK_COMPLETION).status_code == 200


def test_shutdown_ends_open_streams_with_an_error_event():
    config = ServerConfig(tiny_engine_args(max_model_len=2048), served_model_name="tiny")
    with serve_in_thread(config) as h:
        body = {**OK_COMPLETION, "max_tokens": 2000, "ignore_eos": True, "stream": True}
        events = []
        with httpx.stream("POST", h.url + "/v1/completions", json=body, trust_env=False, timeout=60) as r:
            for line in r.iter_lines():
                if line.startswith("data:"):
                    events.append(line[5:].strip())
                    if len(events) == 3:
                        h.server.handle_exit(2, None)  # what Ctrl-C does
        assert '"error"' in events[-2] and events[-1] == "[DONE]"
        assert '"server is shutting down"' in events[-2] or "shutting down" in events[-2]
        h.wait_idle()
