"""Engine outputs against HF generate, and invariance under every scheduling knob."""

import pytest
import torch

from phase3_scheduling import LLM, SamplingParams


def pool_is_full(llm: LLM) -> bool:
    return llm.engine.kv_manager.all_blocks_free and not llm.engine.has_unfinished_requests()

PROMPTS = [
    "The capital of France is",
    "Write a haiku about the sea.",
    "List three primary colors:",
    "Once upon a time, in a small village by the sea, there lived an old fisherman who",
    "1 2 3",
]
GREEDY = SamplingParams(temperature=0, max_tokens=24, ignore_eos=True)


def hf_greedy(hf, ids, n):
    x = torch.tensor([ids])
    out = hf.generate(x, attention_mask=torch.ones_like(x), max_new_tokens=n, min_new_tokens=n,
                      do_sample=False, eos_token_id=None, pad_token_id=0)
    return out[0, len(ids):].tolist()


@pytest.fixture(scope="module")
def reference(smol_llm, hf_smol):
    tok = smol_llm.get_tokenizer()
    return [hf_greedy(hf_smol, tok.encode(p), 24) for p in PROMPTS]


def tokens(outputs):
    return [o.outputs[0].token_ids for o in outputs]


def test_greedy_batch_equals_hf_generate(smol_llm, reference):
    outs = smol_llm.generate(PROMPTS, GREEDY, use_tqdm=False)
    assert tokens(outs) == reference
    assert all(o.outputs[0].finish_reason == "length" for o in outs)
    assert pool_is_full(smol_llm)


@pytest.mark.parametrize(
    "settings",
    [
        dict(enable_chunked_prefill=False, max_num_batched_tokens=4096),
        dict(max_num_batched_tokens=7),  # every prompt chunked, decodes and chunks mixed
        dict(enable_prefix_caching=False),
        dict(max_num_seqs=1),
        dict(max_num_seqs=2, max_num_batched_tokens=16),
        dict(num_gpu_blocks_override=9, block_size=8),  # 64 slots for 5 sequences: preemption
        dict(async_scheduling=True),  # step N+1 scheduled before step N's tokens are read
        dict(async_scheduling=True, max_num_batched_tokens=7),
        dict(async_scheduling=True, num_gpu_blocks_override=9, block_size=8),
        dict(async_scheduling=True, max_prefill_tokens_while_decoding=5),  # prompts in 5s
    ],
    ids=["no-chunking", "tiny-budget", "no-prefix-cache", "one-seq", "two-seqs", "preemption",
         "async", "async-tiny-budget", "async-preemption", "async-prefill-cap"],
)
def test_scheduling_knobs_do_not_change_outputs(smollm2_dir, reference, settings):
    llm = LLM(str(smollm2_dir), **settings)
    outs = llm.generate(PROMPTS, GREEDY, use_tqdm=False)
    assert tokens(outs) == reference
    if "num_gpu_blocks_override" in settings:
        assert llm.engine.scheduler.num_preemptions > 0
        assert any(o.metrics.num_preemptions for o in outs)
    if settings.get("async_scheduling"):  # the overlap really happened
        assert llm.engine.scheduler.num_scheduled_ahead > 0 and llm.engine.core.peak_in_flight == 2
    assert pool_is_full(llm)


def test_prefix_cache_hits_give_identical_outputs(smol_llm, reference):
    shared = "You are a helpful assistant. Answer briefly and precisely, in one sentence. " * 3
    prompts = [shared + p for p in PROMPTS]
    cold = smol_llm.generate(prompts, GREEDY, use_tqdm=False)
    hits = smol_llm.engine.kv_manager.pool.stats["hits"]
    warm = smol_llm.generate(prompts, GREEDY, use_tqdm=False)
    assert tokens(warm) == tokens(cold)
    assert smol_llm.engine.kv_manager.pool.stats["hits"] > hits
    assert any(o.num_cached_tokens > 0 for o in warm)


def test_repetition_penalty_through_the_engine_equals_hf_generate(smol_llm, hf_smol):
    """The runner hands the sampler each row's prompt and output ids only when a penalty needs
    them: a penalised request batched with plain greedy ones matches HF's
    ``repetition_penalty`` (over prompt and generated ids), the plain ones HF's greedy."""
    tok = smol_llm.get_tokenizer()
    penalised = SamplingParams(temperature=0, max_tokens=16, ignore_eos=True, repetition_penalty=1.3)
    outs = smol_llm.generate(PROMPTS[:3], [GREEDY, penalised, GREEDY], use_tqdm=False)
    ids = tok.encode(PROMPTS[1])
    x = torch.tensor([ids])
    hf = hf_smol.generate(x, attention_mask=torch.ones_like(x), max_new_tokens=16, min_new_tokens=16,
                          do_sample=False, repetition_penalty=1.3, eos_token_id=None, pad_token_id=0)
    assert outs[1].outputs[0].token_ids == hf[0, len(ids):].tolist()
    assert outs[1].outputs[0].token_ids != hf_greedy(hf_smol, ids, 16)  # the penalty mattered
    assert [outs[0].outputs[0].token_ids, outs[2].outputs[0].token_ids] == [
        hf_greedy(hf_smol, tok.encode(PROMPTS[i]), 24) for i in (0, 2)]
    assert pool_is_full(smol_llm)


def test_seeded_sampling_is_independent_of_batch_composition(smol_llm):
    p = SamplingParams(temperature=0.9, top_p=0.95, top_k=50, seed=1234, max_tokens=20)
    alone = smol_llm.generate([PROMPTS[1]], p, use_tqdm=False)[0].outputs[0].text
    others = SamplingParams(temperature=1.0, max_tokens=12)
    batch = smol_llm.generate(PROMPTS[:1] + [PROMPTS[1]] + PROMPTS[2:],
                              [others, p, others, others, others], use_tqdm=False)
    assert batch[1].outputs[0].text == alone
    unseeded = SamplingParams(temperature=1.5, max_tokens=20)
    texts = {o.outputs[0].text for o in smol_llm.generate([PROMPTS[1]] * 4, unseeded, use_tqdm=False)}
    assert len(texts) > 1


def test_n_samples_and_logprobs(smol_llm, hf_smol):
    tok = smol_llm.get_tokenizer()
    out = smol_llm.generate(PROMPTS[0], SamplingParams(n=3, temperature=1.0, seed=5, max_tokens=6,
                                                       logprobs=3), use_tqdm=False)[0]
    assert [c.index for c in out.outputs] == [0, 1, 2]
    ids = tok.encode(PROMPTS[0])
    for c in out.outputs:
        assert len(c.logprobs) == len(c.token_ids) == 6
        seq = ids + c.token_ids
        with torch.no_grad():
            ref = torch.log_softmax(hf_smol(torch.tensor([seq])).logits[0].float(), -1)
        for step, (token, entry) in enumerate(zip(c.token_ids, c.logprobs)):
            row = ref[len(ids) + step - 1]
            assert entry[token].logprob == pytest.approx(row[token].item(), abs=1e-3)
            assert entry[token].rank == int((row > row[token]).sum()) + 1
            top3 = {i for i, lp in entry.items() if lp.rank <= 3}
            assert top3 == set(row.topk(3).indices.tolist())
        assert c.cumulative_logprob == pytest.approx(sum(e[t].logprob for t, e in zip(c.token_ids, c.logprobs)))


def test_stop_strings_eos_and_min_tokens(smol_llm):
    base = smol_llm.generate(PROMPTS[0], GREEDY, use_tqdm=False)[0].outputs[0].text
    assert "." in base
    stop = smol_llm.generate(PROMPTS[0], SamplingParams(temperature=0, max_tokens=24, stop=["."]),
                             use_tqdm=False)[0].outputs[0]
    assert stop.text == base[: base.index(".")] and stop.finish_reason == "stop" and stop.stop_reason == "."
    chat = smol_llm.chat([{"role": "user", "content": "Say hello."}],
                         SamplingParams(temperature=0, max_tokens=64), use_tqdm=False)[0].outputs[0]
    assert chat.finish_reason == "stop" and chat.token_ids[-1] == 2  # <|im_end|>
    longer = smol_llm.chat([{"role": "user", "content": "Say hello."}],
                           SamplingParams(temperature=0, max_tokens=64, min_tokens=len(chat.token_ids) + 3),
                           use_tqdm=False)[0].outputs[0]
    assert len(longer.token_ids) >= len(chat.token_ids) + 3


def test_bad_requests_fail_clearly_and_leak_nothing(smol_llm):
    eng = smol_llm.engine
    with pytest.raises(ValueError, match="prompt has 5000 tokens, max_model_len is 4096"):
        eng.add_request("long", [1] * 5000, SamplingParams())
    with pytest.raises(ValueError, match="out of range"):
        eng.add_request("bad", [1, 10**6], SamplingParams())
    with pytest.raises(ValueError, match="empty"):
        eng.add_request("empty", "", SamplingParams())
    eng.add_request("x", PROMPTS[3], SamplingParams(max_tokens=50))
    eng.step()
    eng.abort_request("x")
    assert pool_is_full(smol_llm)
