"""Every paged backend against a float64 reference on random varlen batches with context."""

import pytest
import torch

from phase1_kernels.layers.attention import Attention, get_backend
from phase2_attention import PagedAttentionMetadata
from phase2_attention.backends.paged_common import gather_kv


def reference(q, cache, tables, q_lens, s_lens, scale):
    out, start = [], 0
    for table, q_len, s_len in zip(tables, q_lens, s_lens):
        k, v = gather_kv(cache.double(), torch.tensor(table), s_len)
        qq = q[start:start + q_len].double()
        g = qq.shape[1] // k.shape[1]
        k, v = k.repeat_interleave(g, 1), v.repeat_interleave(g, 1)
        s = torch.einsum("qhd,khd->hqk", qq, k) * scale
        pos = torch.arange(q_len).unsqueeze(1) + s_len - q_len
        s = s.masked_fill(torch.arange(s_len).unsqueeze(0) > pos, float("-inf"))
        out.append(torch.einsum("hqk,khd->qhd", s.softmax(-1), v))
        start += q_len
    return torch.cat(out)


CASES = {
    # (query lens, seq lens): decodes first, then prefills with and without context
    "decode-only": ([1, 1, 1], [9, 33, 4]),
    "prefill-only": ([7, 16, 3], [7, 16, 3]),
    "mixed-with-context": ([1, 1, 5, 12], [20, 2, 21, 12]),
}


@pytest.mark.parametrize("backend", ["torch_paged", "sdpa", "triton_paged", "cpu_paged"])
@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_paged_backend_matches_float64(backend, case, dtype):
    if backend == "triton_paged":
        from phase2_attention.ops import triton_paged

        if not triton_paged.is_available("cpu"):
            pytest.skip("Triton interpreter unavailable")
    if backend == "cpu_paged":
        from phase2_attention.ops import cpu_paged

        if not cpu_paged.is_available():
            pytest.skip(cpu_paged.why_unavailable())
    if dtype == torch.float16 and backend != "triton_paged":
        dtype = torch.bfloat16
    q_lens, s_lens = CASES[case]
    torch.manual_seed(0)
    hq, hk, d, bs = 4, 2, 32, 16
    n_blocks = 40
    perm = torch.randperm(n_blocks - 1) + 1  # scattered blocks, never the null block
    tables, used = [], 0
    for s in s_lens:
        n = -(-s // bs)
        tables.append(perm[used:used + n].tolist())
        used += n
    md = PagedAttentionMetadata.build_paged(q_lens, s_lens, tables, bs)
    assert md.num_decodes == sum(1 for q, s in zip(q_lens, s_lens) if q == 1 and s > 1)
    cache = torch.randn(2, n_blocks, bs, hk, d, dtype=dtype)  # context already cached
    T = sum(q_lens)
    q, k, v = (torch.randn(T, h, d, dtype=dtype) for h in (hq, hk, hk))
    layer = Attention(hq, d, d**-0.5, hk, get_backend(backend))
    layer.kv_cache = cache
    out = layer(q.flatten(1), k.flatten(1), v.flatten(1), md).view(T, hq, d)
    flat = cache.view(2, -1, hk, d)
    assert torch.equal(flat[0, md.slot_mapping], k) and torch.equal(flat[1, md.slot_mapping], v)
    expected = reference(q, cache, tables, q_lens, s_lens, d**-0.5)
    tol = 2e-5 if dtype == torch.float32 else 2e-2
    torch.testing.assert_close(out.double(), expected, rtol=tol, atol=tol)


@pytest.mark.parametrize("backend", ["torch_paged", "sdpa", "triton_paged", "triton_unfused",
                                     "cpu_paged"])
@pytest.mark.parametrize("case", ["decode-only", "mixed-with-context"])
def test_attention_layer_rotates_before_or_inside_the_store(backend, case):
    """Given the rotary layer, the attention layer gives every backend's forward rotated q and k
    (triton_paged rotates inside its store kernel): the output and the cached keys equal a
    float64 rotation followed by float64 attention."""
    from phase1_kernels.layers.rotary_embedding import RotaryEmbedding
    from phase1_kernels.ops import native

    from phase2_attention.backends.triton_paged import TritonPagedBackend

    if backend.startswith("triton"):
        from phase2_attention.ops import triton_paged

        if not triton_paged.is_available("cpu"):
            pytest.skip("Triton interpreter unavailable")
    if backend == "cpu_paged":
        from phase2_attention.ops import cpu_paged

        if not cpu_paged.is_available():
            pytest.skip(cpu_paged.why_unavailable())
    impl = (TritonPagedBackend(fuse_rotary=False) if backend == "triton_unfused"
            else get_backend(backend))
    q_lens, s_lens = CASES[case]
    torch.manual_seed(1)
    hq, hk, d, bs = 4, 2, 32, 16
    tables = [[1 + 3 * i, 2 + 3 * i, 3 + 3 * i] for i in range(len(s_lens))]
    md = PagedAttentionMetadata.build_paged(q_lens, s_lens, tables, bs)
    cache = torch.randn(2, 3 * len(s_lens) + 1, bs, hk, d)
    T = sum(q_lens)
    q, k, v = (torch.randn(T, h * d) for h in (hq, hk, hk))
    positions = torch.cat([torch.arange(s - n, s) for n, s in zip(q_lens, s_lens)])
    rotary = RotaryEmbedding(d, d, 64, 10000.0, impl="native")
    assert impl.fuses_rotary(rotary) == (backend == "triton_paged")
    layer = Attention(hq, d, d**-0.5, hk, impl)
    layer.kv_cache = cache
    out = layer(q.clone(), k.clone(), v, md, positions, rotary).view(T, hq, d)
    rq, rk = native.rotary_embedding(positions, q.double(), k.double(), d,
                                     rotary.cos_sin_cache.double(), True)
    flat = cache.view(2, -1, hk, d)
    torch.testing.assert_close(flat[0, md.slot_mapping].double(), rk.view(T, hk, d),
                               rtol=1e-5, atol=1e-5)
    expected = reference(rq.view(T, hq, d), cache, tables, q_lens, s_lens, d**-0.5)
    torch.testing.assert_close(out.double(), expected, rtol=2e-5, atol=2e-5)


def test_store_skips_slot_minus_one():
    from phase2_attention.backends.paged_common import store_kv

    cache = torch.zeros(2, 3, 2, 1, 4)
    k, v = torch.ones(2, 1, 4), 2 * torch.ones(2, 1, 4)
    store_kv(k, v, cache, torch.tensor([3, -1]))
    assert cache.view(2, 6, 4)[0, 3].eq(1).all() and cache.sum() == 4 + 8


def test_paged_backend_without_cache_explains():
    layer = Attention(2, 8, 0.3, 2, get_backend("torch_paged"))
    md = PagedAttentionMetadata.build_paged([2], [2], [[1]], 4)
    with pytest.raises(ValueError, match="need a paged KV cache"):
        layer(torch.randn(2, 16), torch.randn(2, 16), torch.randn(2, 16), md)


def test_flash_attn_backend_reports_why_it_is_missing():
    from phase2_attention.backends import (FlashAttnUnavailable, flash_attn_available,
                                           flash_attn_unavailable_reason)

    if flash_attn_available():
        pytest.skip("FlashAttention runs here")
    reason = flash_attn_unavailable_reason()
    expected = "no CUDA device" if not torch.cuda.is_available() else "phase2-attention\\[flash\\]"
    with pytest.raises(FlashAttnUnavailable, match=expected):
        get_backend("flash_attn")
    assert reason and "flash_attn backend unavailable: " + reason


def test_flash_attn_backend_names_its_block_sizes_and_graph_safety():
    from phase2_attention.backends import FlashAttnBackend

    assert FlashAttnBackend.preferred_block_size == 128  # FA4's TMA page on sm90, head 128
    assert FlashAttnBackend.supported_block_sizes is None and FlashAttnBackend.cudagraph_safe
