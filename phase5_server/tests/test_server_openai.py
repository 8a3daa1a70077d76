"""The server through the official ``openai`` client (sync and async, streaming and not) against
the real SmolLM2: greedy outputs equal the offline ``LLM``, n > 1, stop strings, logprobs, usage."""

from __future__ import annotations

import asyncio

import httpx
import openai
import pytest

from phase3_scheduling import SamplingParams

PROMPTS = ["The capital of France is", "def fibonacci(n):"]
CHAT = [{"role": "system", "content": "You are a helpful assistant."},
        {"role": "user", "content": "What is the capital of France?"}]


@pytest.fixture(scope="module")
def client(smol_server):
    return openai.OpenAI(base_url=smol_server.url + "/v1", api_key="none", max_retries=0)


@pytest.fixture(scope="module")
def aclient_factory(smol_server):
    return lambda: openai.AsyncOpenAI(base_url=smol_server.url + "/v1", api_key="none", max_retries=0)


def test_models_lists_the_served_name(client, smol_server):
    models = client.models.list().data
    assert [m.id for m in models] == ["smollm2"]
    assert httpx.get(smol_server.url + "/version", trust_env=False).json()["version"]


def test_greedy_completions_equal_offline_generate(client, offline_llm):
    offline = offline_llm.generate(PROMPTS, SamplingParams(temperature=0, max_tokens=24), use_tqdm=False)
    result = client.completions.create(model="smollm2", prompt=PROMPTS, max_tokens=24, temperature=0)
    assert [c.index for c in result.choices] == [0, 1]
    assert [c.text for c in result.choices] == [o.outputs[0].text for o in offline]
    expected_prompt = sum(len(o.prompt_token_ids) for o in offline)
    expected_completion = sum(len(o.outputs[0].token_ids) for o in offline)
    assert result.usage.prompt_tokens == expected_prompt
    assert result.usage.completion_tokens == expected_completion
    assert result.usage.total_tokens == expected_prompt + expected_completion
    assert result.id.startswith("cmpl-") and result.object == "text_completion" and result.model == "smollm2"
    # the same prompt as token ids gives the same text
    ids = offline[0].prompt_token_ids
    by_ids = client.completions.create(model="smollm2", prompt=ids, max_tokens=24, temperature=0)
    assert by_ids.choices[0].text == offline[0].outputs[0].text


def test_greedy_chat_equals_offline_chat_streaming_and_not(client, aclient_factory, offline_llm):
    offline = offline_llm.chat(CHAT, SamplingParams(temperature=0, max_tokens=32), use_tqdm=False)[0]
    result = client.chat.completions.create(model="smollm2", messages=CHAT, max_completion_tokens=32,
                                            temperature=0)
    assert result.choices[0].message.role == "assistant"
    assert result.choices[0].message.content == offline.outputs[0].text
    assert result.choices[0].finish_reason in ("stop", "length")
    assert result.usage.prompt_tokens == len(offline.prompt_token_ids)
    assert result.usage.completion_tokens == len(offline.outputs[0].token_ids)

    async def stream():
        async with aclient_factory() as aclient:
            chunks = [c async for c in await aclient.chat.completions.create(
                model="smollm2", messages=CHAT, max_tokens=32, temperature=0, stream=True,
                stream_options={"include_usage": True})]
        return chunks

    chunks = asyncio.run(stream())
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == offline.outputs[0].text
    finals = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finals == [result.choices[0].finish_reason]
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == len(offline.outputs[0].token_ids)


def test_streaming_completions_sync_equal_non_streaming(client):
    full = client.completions.create(model="smollm2", prompt=PROMPTS[0], max_tokens=20, temperature=0)
    chunks = list(client.completions.create(model="smollm2", prompt=PROMPTS[0], max_tokens=20,
                                            temperature=0, stream=True,
                                            stream_options={"include_usage": True}))
    assert "".join(c.choices[0].text for c in chunks if c.choices) == full.choices[0].text
    assert chunks[-1].usage.completion_tokens == full.usage.completion_tokens == 20
    assert chunks[-1].usage.prompt_tokens == full.usage.prompt_tokens
    assert len({c.id for c in chunks}) == 1


def test_n_greater_than_one(client, aclient_factory):
    result = client.completions.create(model="smollm2", prompt=PROMPTS, n=3, max_tokens=8,
                                       temperature=1.0, seed=7)
    assert sorted(c.index for c in result.choices) == list(range(6))
    assert 6 <= result.usage.completion_tokens <= 48
    again = client.completions.create(model="smollm2", prompt=PROMPTS, n=3, max_tokens=8,
                                      temperature=1.0, seed=7)
    assert [c.text for c in again.choices] == [c.text for c in result.choices]  # seeded: reproducible
    assert len({c.text for c in result.choices[:3]}) > 1  # the three samples of one prompt differ

    async def stream():
        async with aclient_factory() as aclient:
            return [c async for c in await aclient.chat.completions.create(
                model="smollm2", messages=CHAT, n=2, max_tokens=6, temperature=0, stream=True)]

    chunks = asyncio.run(stream())
    texts = {0: "", 1: ""}
    for c in chunks:
        for choice in c.choices:
            texts[choice.index] += choice.delta.content or ""
    assert texts[0] == texts[1] and texts[0]  # greedy: both samples equal


def test_stop_strings_and_stop_token_ids(client):
    free = client.completions.create(model="smollm2", prompt=PROMPTS[0], max_tokens=24, temperature=0)
    text = free.choices[0].text
    assert "." in text
    stopped = client.completions.create(model="smollm2", prompt=PROMPTS[0], max_tokens=24,
                                        temperature=0, stop=["."])
    choice = stopped.choices[0]
    assert choice.text == text[: text.index(".")]
    assert choice.finish_reason == "stop"
    streamed = list(client.completions.create(model="smollm2", prompt=PROMPTS[0], max_tokens=24,
                                              temperature=0, stop=".", stream=True))
    assert "".join(c.choices[0].text for c in streamed) == choice.text
    assert streamed[-1].choices[0].finish_reason == "stop"


def test_logprobs_completions_and_chat(client, offline_llm):
    offline = offline_llm.generate(PROMPTS[0], SamplingParams(temperature=0, max_tokens=6, logprobs=3),
                                   use_tqdm=False)[0].outputs[0]
    result = client.completions.create(model="smollm2", prompt=PROMPTS[0], max_tokens=6,
                                       temperature=0, logprobs=3)
    lp = result.choices[0].logprobs
    assert len(lp.tokens) == len(lp.token_logprobs) == len(lp.top_logprobs) == 6
    assert "".join(lp.tokens) == result.choices[0].text
    for tid, entry, got, top in zip(offline.token_ids, offline.logprobs, lp.token_logprobs, lp.top_logprobs):
        assert got == pytest.approx(entry[tid].logprob, abs=1e-4)
        assert len(top) == 3 and max(top.values()) == pytest.approx(got, abs=1e-4)  # greedy = top-1
    assert lp.text_offset[0] == 0
    chat = client.chat.completions.create(model="smollm2", messages=CHAT, max_tokens=5, temperature=0,
                                          logprobs=True, top_logprobs=2)
    content = chat.choices[0].logprobs.content
    assert len(content) == chat.usage.completion_tokens
    for item in content:
        assert len(item.top_logprobs) == 2 and item.logprob <= 0
        assert item.top_logprobs[0].logprob == pytest.approx(item.logprob, abs=1e-4)


def test_echo_and_tokenize_endpoints(client, smol_server):
    result = client.completions.create(model="smollm2", prompt=PROMPTS[0], max_tokens=4,
                                       temperature=0, echo=True)
    assert result.choices[0].text.startswith(PROMPTS[0])
    tok = httpx.post(smol_server.url + "/tokenize", json={"prompt": PROMPTS[0]}, trust_env=False).json()
    assert tok["count"] == len(tok["tokens"]) == result.usage.prompt_tokens
    back = httpx.post(smol_server.url + "/detokenize", json={"tokens": tok["tokens"]}, trust_env=False)
    assert back.json()["prompt"] == PROMPTS[0]


def test_metrics_count_requests_and_tokens(client, smol_server):
    def scrape() -> dict[str, float]:
        text = httpx.get(smol_server.url + "/metrics", trust_env=False).text
        values = {}
        for line in text.splitlines():
            if line and not line.startswith("#"):
                name, value = line.rsplit(" ", 1)
                if "_bucket" not in name:
                    values[name.split("{")[0]] = float(value)
        return values

    before = scrape()
    client.completions.create(model="smollm2", prompt=PROMPTS[0], max_tokens=5, temperature=0,
                              extra_body={"ignore_eos": True})
    after = scrape()
    assert after["vllm:generation_tokens_total"] - before["vllm:generation_tokens_total"] == 5
    assert after["vllm:prompt_tokens_total"] - before["vllm:prompt_tokens_total"] == 5
    assert after["vllm:time_to_first_token_seconds_count"] == before["vllm:time_to_first_token_seconds_count"] + 1
    assert after["vllm:inter_token_latency_seconds_count"] == before["vllm:inter_token_latency_seconds_count"] + 4
    assert after["vllm:e2e_request_latency_seconds_count"] == before["vllm:e2e_request_latency_seconds_count"] + 1
    for name in ("vllm:num_requests_running", "vllm:num_requests_waiting", "vllm:kv_cache_usage_perc",
                 "vllm:num_preemptions_total"):
        assert name in after


def test_metrics_show_the_engine_steps_of_a_request(client, smol_server):
    """One request alone: one mixed step with its 5 prompt tokens, then 4 decode steps of one row,
    as the engine process counted them (phase3_scheduling/step_timeline.py)."""
    from phase3_scheduling.step_timeline import summarize_window
    from phase5_server.metrics import parse_step_counters

    def scrape():
        return parse_step_counters(httpx.get(smol_server.url + "/metrics", trust_env=False).text)

    before = scrape()
    client.completions.create(model="smollm2", prompt=PROMPTS[0], max_tokens=5, temperature=0,
                              extra_body={"ignore_eos": True})
    w = summarize_window(before, scrape())
    assert (w["mixed_steps"], w["decode_steps"]) == (1, 4)
    assert w["mixed_prompt_tokens_per_step"] == 5 and w["decode_rows_per_step"] == 1
    assert 0 < w["decode_step_ms"] and 0 < w["mixed_step_ms"]
