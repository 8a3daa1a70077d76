"""The C++ CPU paged-attention kernel and KV store against a float64 reference: odd head sizes,
GQA groups, several block sizes, partial blocks, prefill tiles longer than the kernel's 16-token
tile, strided inputs (q/k/v split from one qkv tensor), opcheck, and the argument checks."""

import pytest
import torch

from phase2_attention import PagedAttentionMetadata
from phase2_attention.ops import cpu_paged
from test_paged_backends import reference

pytestmark = pytest.mark.skipif(not cpu_paged.is_available(), reason=cpu_paged.why_unavailable())


def make_batch(q_lens, s_lens, hq, hk, d, bs, dtype, seed=0):
    """Random cache with scattered blocks, queries split out of one qkv tensor (strided)."""
    gen = torch.Generator().manual_seed(seed)
    need = sum(-(-s // bs) for s in s_lens)
    n_blocks = need + 3
    perm = (torch.randperm(n_blocks - 1, generator=gen) + 1).tolist()
    tables, used = [], 0
    for s in s_lens:
        n = -(-s // bs)
        tables.append(perm[used:used + n])
        used += n
    md = PagedAttentionMetadata.build_paged(q_lens, s_lens, tables, bs)
    cache = torch.randn(2, n_blocks, bs, hk, d, generator=gen).to(dtype)
    qkv = torch.randn(sum(q_lens), (hq + 2 * hk) * d, generator=gen).to(dtype)
    q, k, v = qkv.split([hq * d, hk * d, hk * d], dim=-1)
    shape = lambda t, h: t.view(-1, h, d)  # noqa: E731 - views keep the qkv token stride
    return md, cache, tables, shape(q, hq), shape(k, hk), shape(v, hk)


def run_and_check(q_lens, s_lens, hq, hk, d, bs, dtype=torch.float32):
    md, cache, tables, q, k, v = make_batch(q_lens, s_lens, hq, hk, d, bs, dtype)
    cpu_paged.store_kvcache(k, v, cache, md.slot_mapping)
    flat = cache.view(2, -1, hk, d)
    assert torch.equal(flat[0, md.slot_mapping], k) and torch.equal(flat[1, md.slot_mapping], v)
    out = cpu_paged.paged_attention(q, cache, md.block_tables, md.seq_lens, md.query_start_loc, d**-0.5)
    expected = reference(q, cache, tables, q_lens, s_lens, d**-0.5)
    tol = {torch.float32: 2e-5, torch.bfloat16: 2e-2, torch.float16: 2e-3}[dtype]
    torch.testing.assert_close(out.double(), expected, rtol=tol, atol=tol)


@pytest.mark.parametrize("hq,hk,d", [(9, 3, 64), (4, 4, 17), (8, 2, 80), (6, 1, 33)])
@pytest.mark.parametrize("bs", [1, 8, 16, 32])
def test_mixed_batch_matches_float64(hq, hk, d, bs):
    # decodes at partial blocks, a prefill over several 16-token tiles with context, a fresh one
    run_and_check([1, 1, 1, 37, 5], [2, 17, 70, 50, 5], hq, hk, d, bs)


@pytest.mark.parametrize("hq,hk,d", [(9, 3, 64), (8, 2, 128), (4, 4, 64)])
@pytest.mark.parametrize("bs", [1, 5, 16])
def test_decode_batch_on_the_two_pass_path(hq, hk, d, bs):
    """fp32 head sizes 64 and 128 take the two-pass AVX2 path (where the CPU has AVX2): one item
    per sequence over all kv heads once the batch has several sequences per thread, per kv head
    otherwise, and for the one-token last tile of a prompt (17 = 16 + 1)."""
    s_lens = [1, 2, 15, 16, 17, 33, 64, 100, 129, 200, 7, 300]
    run_and_check([1] * len(s_lens), s_lens, hq, hk, d, bs)
    run_and_check([1, 1, 17], [40, 3, 57], hq, hk, d, bs)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_low_precision_cache(dtype):
    run_and_check([1, 1, 20], [33, 9, 40], 8, 2, 64, 16, dtype)


def test_long_decode_and_single_token_prompt():
    run_and_check([1, 1], [1000, 1], 9, 3, 64, 16)


def test_padding_tokens_after_the_batch_are_left_alone():
    md, cache, tables, q, _, _ = make_batch([1, 3], [10, 3], 4, 2, 16, 4, torch.float32)
    padded = torch.cat([q, torch.randn(2, 4, 16)])  # two padding rows the metadata does not cover
    out = torch.full_like(padded, 7.0)
    cpu_paged.paged_attention(padded, cache, md.block_tables, md.seq_lens, md.query_start_loc,
                              0.25, out=out)
    assert out[4:].eq(7.0).all()


def test_store_skips_slot_minus_one():
    cache = torch.zeros(2, 3, 2, 1, 4)
    k, v = torch.ones(2, 1, 4), 2 * torch.ones(2, 1, 4)
    cpu_paged.store_kvcache(k, v, cache, torch.tensor([3, -1]))
    assert cache.view(2, 6, 4)[0, 3].eq(1).all() and cache.sum() == 4 + 8


def test_opcheck():
    md, cache, _, q, k, v = make_batch([1, 6], [9, 6], 4, 2, 16, 4, torch.float32)
    out = torch.empty(q.shape)
    torch.library.opcheck(torch.ops.lightvllm.store_kv_cache,
                          (k.contiguous(), v.contiguous(), cache, md.slot_mapping))
    torch.library.opcheck(torch.ops.lightvllm.paged_attention,
                          (out, q.contiguous(), cache, md.block_tables, md.seq_lens,
                           md.query_start_loc, 0.25))


def test_bad_block_id_is_refused():
    md, cache, _, q, _, _ = make_batch([1], [9], 4, 2, 16, 4, torch.float32)
    tables = md.block_tables.clone()
    tables[0, 1] = cache.shape[1]
    with pytest.raises(RuntimeError, match="outside the cache"):
        cpu_paged.paged_attention(q, cache, tables, md.seq_lens, md.query_start_loc, 0.25)


def test_too_short_table_is_refused():
    md, cache, _, q, _, _ = make_batch([1], [9], 4, 2, 16, 4, torch.float32)
    with pytest.raises(RuntimeError, match="needs 3 blocks"):
        cpu_paged.paged_attention(q, cache, md.block_tables[:, :2].contiguous(), md.seq_lens,
                                  md.query_start_loc, 0.25)


def test_slot_outside_cache_is_refused():
    cache = torch.zeros(2, 3, 2, 1, 4)
    with pytest.raises(RuntimeError, match="outside the cache"):
        cpu_paged.store_kvcache(torch.ones(1, 1, 4), torch.ones(1, 1, 4), cache, torch.tensor([6]))
