"""Fuzz every operation of the server's OpenAPI schema (schemathesis): no response is a 5xx.

Runs against the tiny random-weight server (real uvicorn, real HTTP) so that thousands of odd but
schema-valid requests cost little; generation lengths are bounded by its max_model_len of 128.
"""

from __future__ import annotations

import json

import httpx
import requests
import schemathesis
from hypothesis import HealthCheck, given, settings


def test_no_server_errors(tiny_server):
    """Every operation, 40 generated cases each (schema-valid and not), none answered with a 5xx."""
    schema = schemathesis.openapi.from_url(tiny_server.url + "/openapi.json")
    session = requests.Session()
    session.trust_env = False
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 8

    for operation in operations:
        @given(case=operation.as_strategy())
        @settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck),
                  database=None, derandomize=True)
        def check(case):
            response = case.call(session=session, timeout=60)
            assert response.status_code < 500, (
                f"{case.method} {case.path} {case.body!r} -> {response.status_code}: "
                f"{response.text[:300]}")
            if response.status_code >= 400:
                assert {"message", "type", "param", "code"} <= set(response.json()["error"])

        check()


def test_server_healthy_after_fuzzing(tiny_server):
    assert httpx.get(tiny_server.url + "/health", trust_env=False).status_code == 200
    tiny_server.wait_idle()


INT_EXTREMES = [0, 1, -1, 2, 20, 21, 127, 128, 49151, 49152, 2**31 - 1, 2**31, 2**32, 2**53 + 1,
                2**63 - 1, 2**63, -(2**63), -(2**63) - 1, 2**64, 10**30, -(10**30)]
ODD_TEXT = ["", "\ud800", "a\udfffb", "\ud83d\ude00", "\x00", "\u202e\u200b", "\ufeff",
            "<|im_start|>system\n", "<|im_end|>", "\U0010ffff", "e\u0301" * 50, "\n" * 200]
INT_FIELDS = ["n", "top_k", "seed", "max_tokens", "min_tokens", "logprobs", "best_of",
              "max_completion_tokens", "top_logprobs"]


def _fuzz_strategies():
    from hypothesis import strategies as st

    ints = st.one_of(st.sampled_from(INT_EXTREMES), st.integers(-(2**70), 2**70))
    floats = st.one_of(st.sampled_from([0.0, -0.0, 1e-300, 1e308, -1e308, 2.0, 100.0, 1e-7]),
                       st.floats(allow_nan=False, allow_infinity=False))
    text = st.one_of(st.sampled_from(ODD_TEXT), st.text(max_size=40),
                     st.lists(st.sampled_from(ODD_TEXT), max_size=4).map("".join))
    token_ids = st.lists(ints, min_size=0, max_size=4)
    fields = {name: ints for name in INT_FIELDS}
    fields.update(temperature=floats, top_p=floats, min_p=floats, presence_penalty=floats,
                  frequency_penalty=floats, repetition_penalty=floats,
                  stop=st.one_of(text, st.lists(text, max_size=3)), stop_token_ids=token_ids,
                  ignore_eos=st.booleans(), stream=st.booleans(), echo=st.booleans(),
                  skip_special_tokens=st.booleans())
    sampling = st.fixed_dictionaries({}, optional=fields)
    completion = st.tuples(st.just("/v1/completions"), sampling, st.fixed_dictionaries(
        {"prompt": st.one_of(text, token_ids, st.lists(text, min_size=1, max_size=3),
                             st.lists(token_ids, min_size=1, max_size=3))}))
    message = st.fixed_dictionaries({"role": st.sampled_from(["user", "system", "assistant"]),
                                     "content": text})
    chat = st.tuples(st.just("/v1/chat/completions"), sampling, st.fixed_dictionaries(
        {"messages": st.lists(message, min_size=1, max_size=3), "logprobs": st.booleans()}))
    tokenize = st.tuples(st.just("/tokenize"), st.just({}), st.one_of(
        st.fixed_dictionaries({"prompt": text}),
        st.fixed_dictionaries({"messages": st.lists(message, min_size=1, max_size=2)})))
    detokenize = st.tuples(st.just("/detokenize"), st.just({}),
                           st.fixed_dictionaries({"tokens": token_ids}))
    return st.one_of(completion, chat, tokenize, detokenize)


def test_integer_extremes_and_unicode_edge_cases_never_5xx(tiny_server):
    """Hand-made strategies (hypothesis): every integer field at and past its int32/int64/vocab
    limits, floats at the extremes, lone surrogates, BOM, bidi marks, special-token text."""
    client = httpx.Client(trust_env=False, timeout=60)
    before = client.post(tiny_server.url + "/v1/completions",
                         json={"prompt": "hello", "max_tokens": 4, "temperature": 0}).json()

    @given(case=_fuzz_strategies())
    @settings(max_examples=250, deadline=None, suppress_health_check=list(HealthCheck),
              database=None, derandomize=True)
    def check(case):
        path, sampling, body = case
        generating = path.startswith("/v1/")
        payload = {"max_tokens": 4, **sampling, **body} if generating else body
        raw = json.dumps(payload).encode()  # lone surrogates travel escaped, as JSON allows
        response = client.post(tiny_server.url + path, content=raw,
                               headers={"content-type": "application/json"})
        assert response.status_code < 500, f"{path} {payload!r} -> {response.text[:300]}"
        if response.status_code >= 400:
            assert {"message", "type", "param", "code"} <= set(response.json()["error"])
        elif payload.get("stream"):
            assert '"error"' not in response.text or "shutting down" in response.text, response.text

    check()
    assert client.get(tiny_server.url + "/health").status_code == 200
    tiny_server.wait_idle()
    after = client.post(tiny_server.url + "/v1/completions",
                        json={"prompt": "hello", "max_tokens": 4, "temperature": 0}).json()
    assert after["choices"][0]["text"] == before["choices"][0]["text"]
