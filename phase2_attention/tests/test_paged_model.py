"""The LLaMA model on paged backends: same greedy tokens as phase 1's naive path and as HF;
prefix-cache hits, chunked prefill and contiguous reservation change nothing; no block leaks."""

import pytest
import torch

from phase1_kernels import LightvLLM
from phase2_attention import CacheConfig, PagedGenerator
from phase2_attention.kv_cache import bytes_per_block, determine_num_blocks

SYSTEM = [{"role": "system", "content": "You are a concise assistant who answers in one sentence."}]


@pytest.fixture(scope="module")
def naive(smollm2_dir):
    return LightvLLM.from_pretrained(smollm2_dir, device="cpu")


@pytest.fixture(scope="module")
def prompts(naive):
    tok = naive.tokenizer
    chat = [tok.encode(tok.apply_chat_template(SYSTEM + [{"role": "user", "content": q}]))
            for q in ("What is the capital of France?", "Name a large ocean.")]
    return chat + [tok.encode("Once upon a time, in a small village by the sea,"), tok.encode("1, 2,")]


@pytest.fixture(scope="module")
def expected(naive, prompts):
    return naive.generate(prompts, max_new_tokens=16, stop_token_ids=[])


def assert_pool_full(gen):
    assert gen.manager.num_free_blocks == gen.num_blocks - 1


def skip_unless_cpu_paged(backend):
    from phase2_attention.ops import cpu_paged

    if backend == "cpu_paged" and not cpu_paged.is_available():
        pytest.skip(cpu_paged.why_unavailable())


@pytest.mark.parametrize("backend", ["torch_paged", "sdpa", "cpu_paged"])
def test_paged_backends_match_naive_and_hf(smollm2_dir, prompts, expected, backend):
    from transformers import AutoModelForCausalLM

    skip_unless_cpu_paged(backend)
    gen = PagedGenerator(LightvLLM.from_pretrained(smollm2_dir, device="cpu", attn_backend=backend),
                         CacheConfig(num_blocks=48))
    assert gen.generate(prompts, max_new_tokens=16) == expected
    assert_pool_full(gen)
    hf = AutoModelForCausalLM.from_pretrained(smollm2_dir, dtype=torch.float32).eval()
    ids = torch.tensor([prompts[2]])
    hf_tokens = hf.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=16,
                            min_new_tokens=16, do_sample=False, eos_token_id=None, pad_token_id=0)
    assert hf_tokens[0, ids.shape[1]:].tolist() == expected[2]


def test_prefix_hits_chunked_prefill_and_contiguous_change_nothing(smollm2_dir, prompts, expected):
    llm = LightvLLM.from_pretrained(smollm2_dir, device="cpu", attn_backend="torch_paged")
    gen = PagedGenerator(llm, CacheConfig(num_blocks=48))
    assert gen.generate(prompts, max_new_tokens=16) == expected  # cold
    hits_before = gen.manager.pool.stats["hits"]
    assert gen.generate(prompts, max_new_tokens=16) == expected  # warm: shared system prompt
    assert gen.manager.pool.stats["hits"] > hits_before
    assert gen.generate(prompts, max_new_tokens=16, prefill_chunk=7) == expected
    assert_pool_full(gen)
    contiguous = PagedGenerator(llm, CacheConfig(num_blocks=1 + 4 * 8), contiguous_max_len=128)
    assert contiguous.generate(prompts, max_new_tokens=16) == expected
    assert contiguous.manager.usage == 0.0


def test_cpu_paged_with_prefix_hits_and_chunked_prefill(smollm2_dir, prompts, expected):
    skip_unless_cpu_paged("cpu_paged")
    gen = PagedGenerator(LightvLLM.from_pretrained(smollm2_dir, device="cpu", attn_backend="cpu_paged"),
                         CacheConfig(num_blocks=48))
    assert gen.generate(prompts, max_new_tokens=16) == expected
    assert gen.generate(prompts, max_new_tokens=16, prefill_chunk=7) == expected  # warm + chunked
    assert_pool_full(gen)


def test_triton_paged_backend_in_the_model(tiny_llama_dir):
    from phase2_attention.ops import triton_paged

    if not triton_paged.is_available("cpu"):
        pytest.skip("Triton interpreter unavailable")
    naive = LightvLLM.from_pretrained(tiny_llama_dir, device="cpu")
    prompts = [[3, 1, 4, 1, 5, 9, 2, 6], [5], [2, 7] * 5]
    expected = naive.generate(prompts, max_new_tokens=6, stop_token_ids=[])
    gen = PagedGenerator(LightvLLM.from_pretrained(tiny_llama_dir, device="cpu",
                                                   attn_backend="triton_paged"),
                         CacheConfig(num_blocks=16))
    assert gen.generate(prompts, max_new_tokens=6, prefill_chunk=4) == expected
    assert_pool_full(gen)


def test_cpu_cache_is_sized_from_gib(tiny_llama_dir):
    llm = LightvLLM.from_pretrained(tiny_llama_dir, device="cpu", attn_backend="torch_paged")
    per_block = bytes_per_block(llm.model, 16)
    assert per_block == 2 * 16 * 2 * 16 * 4 * 2  # K+V, tokens, kv heads, head dim, fp32, layers
    assert determine_num_blocks(llm.model, CacheConfig(cpu_kv_cache_gib=0.001)) == (1 << 30) * 0.001 // per_block
    with pytest.raises(ValueError, match="power of two"):
        CacheConfig(block_size=12)
