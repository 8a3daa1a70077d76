"""Request validation at add time: every bad value is refused with a typed error naming the field,
before it can reach an engine step, and the engine serves the same greedy text afterwards."""

from __future__ import annotations

import math

import pytest

from phase3_scheduling import (LLM, RequestTooLargeError, RequestValidationError, SamplingParams,
                               SamplingParamsError)

GREEDY = SamplingParams(temperature=0, max_tokens=8)
PROMPT = "The capital of France is"

# (field, value): refused by SamplingParams() already, and again at add time when set afterwards
BAD_FIELDS = [
    ("top_k", 2**63), ("top_k", -2), ("top_k", 49153), ("top_k", 1.5), ("n", 0), ("n", True),
    ("temperature", math.nan), ("temperature", math.inf), ("temperature", -1.0),
    ("top_p", 0.0), ("top_p", math.nan), ("min_p", 1.5), ("repetition_penalty", math.inf),
    ("repetition_penalty", 0.0), ("presence_penalty", 2.5), ("frequency_penalty", math.nan),
    ("seed", 2**64), ("seed", -(2**63) - 1), ("seed", "7"), ("max_tokens", 0), ("max_tokens", 2.0),
    ("min_tokens", -1), ("logprobs", 21), ("logprobs", -1), ("stop_token_ids", [10**9]),
    ("stop_token_ids", [-100000]), ("stop_token_ids", ["a"]), ("stop", [""]), ("stop", ["\ud800"]),
    ("ignore_eos", "yes"),
]
NEEDS_MODEL = [("top_k", 2**63), ("top_k", 49153), ("stop_token_ids", [10**9]),
               ("stop_token_ids", [-100000])]


TINY = dict(vocab_size=49152, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
            num_attention_heads=4, num_key_value_heads=2, head_dim=16, max_position_embeddings=4096,
            rms_norm_eps=1e-5, rope_theta=10000.0, tie_word_embeddings=True, bos_token_id=1,
            eos_token_id=2)


def tiny_llm(tokenizer_dir, **kwargs) -> LLM:
    """A 2-layer random-weight Llama with SmolLM2's tokenizer: only the checks matter here."""
    return LLM(None, load_format="dummy", hf_config=TINY, tokenizer=str(tokenizer_dir),
               dtype="float32", device="cpu", kv_cache_gib=0.05, **kwargs)


@pytest.fixture(scope="module")
def llm(smollm2_dir):
    return tiny_llm(smollm2_dir, max_model_len=4096)


def pool_is_full(llm: LLM) -> bool:
    return llm.engine.kv_manager.all_blocks_free and not llm.engine.has_unfinished_requests()


@pytest.fixture(scope="module")
def reference(llm):
    return llm.generate(PROMPT, GREEDY, use_tqdm=False)[0].outputs[0].text


def _assert_still_serving(llm: LLM, reference: str) -> None:
    assert pool_is_full(llm)
    assert llm.generate(PROMPT, GREEDY, use_tqdm=False)[0].outputs[0].text == reference


@pytest.mark.parametrize("name, value", BAD_FIELDS, ids=[f"{n}={v!r}" for n, v in BAD_FIELDS])
def test_bad_field_refused_at_add_time(llm, reference, name, value):
    params = SamplingParams(temperature=0, max_tokens=4, min_tokens=2)
    if (name, value) not in NEEDS_MODEL:
        with pytest.raises(SamplingParamsError) as construct:  # model-independent: at construction
            SamplingParams(**{"temperature": 0, "max_tokens": 4, name: value})
        assert construct.value.param == name
    setattr(params, name, value)  # changed after construction: the engine checks again
    with pytest.raises(RequestValidationError) as added:
        llm.generate(PROMPT, params, use_tqdm=False)
    assert added.value.param == name and name in str(added.value)
    _assert_still_serving(llm, reference)


def test_min_tokens_above_max_tokens(llm, reference):
    params = SamplingParams(temperature=0, max_tokens=4)
    params.min_tokens = 5
    with pytest.raises(RequestValidationError, match=r"min_tokens must be <= max_tokens \(4\)"):
        llm.generate(PROMPT, params, use_tqdm=False)
    _assert_still_serving(llm, reference)


@pytest.mark.parametrize("prompt, match", [
    ([1, 10**9], "out of range"), ([1, -1], "out of range"), ([1, True], "integer token ids"),
    ([], "empty"), ("caf\udce9", "lone UTF-16 surrogate"), ([1] * 5000, "max_model_len is 4096"),
])
def test_bad_prompts_refused(llm, reference, prompt, match):
    with pytest.raises(RequestValidationError, match=match) as error:
        llm.generate([prompt] if isinstance(prompt, list) else prompt, GREEDY, use_tqdm=False)
    assert error.value.param == "prompt"
    _assert_still_serving(llm, reference)


def test_request_larger_than_the_kv_cache(smollm2_dir):
    llm = tiny_llm(smollm2_dir, num_gpu_blocks_override=9, block_size=16, max_model_len=1024)
    capacity = llm.engine.limits.request_limits.kv_cache_tokens
    assert capacity == 8 * 16
    full = r"more than the whole cache holds \(128 tokens\)"
    with pytest.raises(RequestTooLargeError, match=full) as e:
        llm.generate(PROMPT, SamplingParams(temperature=0, max_tokens=200), use_tqdm=False)
    assert e.value.param == "max_tokens"
    with pytest.raises(RequestTooLargeError):  # max_tokens=None reaches for the whole context
        llm.generate(PROMPT, SamplingParams(temperature=0, max_tokens=None), use_tqdm=False)
    fits = llm.generate(PROMPT, SamplingParams(temperature=0, max_tokens=8), use_tqdm=False)
    assert len(fits[0].outputs[0].token_ids) == 8 and pool_is_full(llm)


def test_seed_at_the_limit_gives_valid_children(llm):
    params = SamplingParams(n=3, seed=2**63 - 1, temperature=0.7, max_tokens=2)
    out = llm.generate(PROMPT, params, use_tqdm=False)[0]
    assert len(out.outputs) == 3 and pool_is_full(llm)
