"""The flash_attn backend (FlashAttention 4 on a GPU) against a float64 reference, PyTorch's
SDPA backend and our Triton kernels, on varlen batches over a scattered paged cache.

Every block no sequence uses (the null block 0 and the spares) is NaN, so a kernel that reads a
page it must not makes the test fail; the tail rows of a sequence's last block hold finite
garbage (FA4's TMA path loads them and masks their scores).
"""

from __future__ import annotations

import math

import pytest
import torch

from phase1_kernels.layers.attention import Attention, get_backend
from phase2_attention import PagedAttentionMetadata
from phase2_attention.backends import (FlashAttnUnsupported, flash_attn_available,
                                       flash_attn_unavailable_reason)
from phase2_attention.backends.paged_common import gather_kv, store_kv

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not flash_attn_available(),
                                 reason=f"flash_attn: {flash_attn_unavailable_reason()}")]

CASES = {  # (query lens, seq lens): decodes first
    "prefill-odd": ([1000, 17, 1, 333], [1000, 17, 1, 333]),
    "decode": ([1] * 6, [9, 33, 4096, 130, 16, 2]),
    "mixed-chunked": ([1, 1, 300, 77], [500, 129, 300, 1277]),
    "decode-32k": ([1, 1, 1], [32768, 32001, 7]),
    "chunk-at-32k": ([1, 517], [12000, 32768]),
}


def make_batch(q_lens, s_lens, block_size, hq, hk, d, seed=0):
    """Metadata over shuffled blocks, a cache holding every sequence's context (NaN where no
    sequence lives), and the new tokens' q/k/v."""
    gen = torch.Generator().manual_seed(seed)
    per_seq = [math.ceil(s / block_size) for s in s_lens]
    num_blocks = 1 + sum(per_seq) + 3
    ids = (torch.randperm(num_blocks - 1, generator=gen) + 1).tolist()
    tables, used = [], 0
    for n in per_seq:
        tables.append(ids[used:used + n])
        used += n
    md = PagedAttentionMetadata.build_paged(q_lens, s_lens, tables, block_size, device="cuda")
    cache = torch.full((2, num_blocks, block_size, hk, d), float("nan"), dtype=torch.bfloat16)
    live = torch.tensor(ids[:used])
    cache[:, live] = torch.randn(2, len(live), block_size, hk, d, generator=gen).bfloat16()
    T = sum(q_lens)
    q, k, v = (torch.randn(T, h, d, generator=gen).bfloat16().cuda() for h in (hq, hk, hk))
    return md, cache.cuda(), q, k, v, tables


def run_backend(name, md, cache, q, k, v):
    hq, hk, d = q.shape[1], k.shape[1], q.shape[2]
    layer = Attention(hq, d, d ** -0.5, hk, get_backend(name))
    layer.kv_cache = cache
    with torch.inference_mode():
        out = layer(q.flatten(1), k.flatten(1), v.flatten(1), md)
    torch.cuda.synchronize()
    return out.view(-1, hq, d)


def reference(md, cache, q, k, v, tables):
    """float64 attention over the stored cache, one sequence and one KV head at a time."""
    cache = cache.clone()
    store_kv(k, v, cache, md.slot_mapping)
    hq, hk = q.shape[1], k.shape[1]
    g, scale, outs, start = hq // hk, q.shape[2] ** -0.5, [], 0
    for table, q_len, s_len in zip(tables, md.query_lens_cpu, md.seq_lens_cpu):
        keys, values = gather_kv(cache, torch.tensor(table, device="cuda"), s_len)
        qq = q[start:start + q_len].double()
        out = torch.empty_like(qq)
        rows = torch.arange(q_len, device="cuda").unsqueeze(1) + s_len - q_len
        future = torch.arange(s_len, device="cuda").unsqueeze(0) > rows
        for h in range(hk):
            s = torch.einsum("qgd,kd->gqk", qq[:, h * g:(h + 1) * g], keys[:, h].double()) * scale
            p = s.masked_fill(future, float("-inf")).softmax(-1)
            out[:, h * g:(h + 1) * g] = torch.einsum("gqk,kd->qgd", p, values[:, h].double())
        outs.append(out)
        start += q_len
    return torch.cat(outs)


def rel_err(out, ref):
    assert not torch.isnan(out).any(), "output holds NaN: a poisoned page was read"
    return ((out.double() - ref).norm() / ref.norm()).item()


# Llama-3.1-8B's heads (GQA 4) everywhere; MHA on two cases (each head layout and page path
# is a kernel FA4 compiles at its first call, so the grid stays small).
GRID = [(case, (32, 8), bs) for case in CASES for bs in (16, 128)] + [
    ("decode", (16, 16), 16), ("mixed-chunked", (16, 16), 16)]


@pytest.mark.parametrize("case,heads,block_size", GRID)
def test_flash_attn_matches_float64_sdpa_and_triton(case, heads, block_size):
    hq, hk = heads
    md, cache, q, k, v, tables = make_batch(*CASES[case], block_size, hq, hk, 128)
    ref = reference(md, cache, q, k, v, tables)
    flash_cache = cache.clone()
    flash = run_backend("flash_attn", md, flash_cache, q, k, v)
    triton = run_backend("triton_paged", md, cache.clone(), q, k, v)
    sdpa = run_backend("sdpa", md, torch.nan_to_num(cache), q, k, v)  # SDPA masks, NaN would leak
    flat = flash_cache.view(2, -1, hk, 128)
    assert torch.equal(flat[0, md.slot_mapping], k) and torch.equal(flat[1, md.slot_mapping], v)
    errs = {name: rel_err(out, ref) for name, out in
            (("flash_attn", flash), ("triton_paged", triton), ("sdpa", sdpa))}
    print(f"{case} {heads} block {block_size}: rel. error vs float64 {errs}")
    assert errs["flash_attn"] < 1e-2, errs
    assert errs["flash_attn"] < 2 * max(errs["triton_paged"], errs["sdpa"]) + 1e-3, errs
    for other in (triton, sdpa):
        assert rel_err(flash, other.double()) < 1.5e-2


def test_flash_attn_is_cuda_graph_safe_as_declared():
    """A decode step captured once replays correctly after the contexts grow (the kernel's
    bounds come from the block-table width, not the capture-time lengths)."""
    backend = get_backend("flash_attn")
    assert backend.cudagraph_safe
    md, cache, q, k, v, tables = make_batch([1] * 4, [40, 300, 7, 1000], 16, 32, 8, 128)
    layer = Attention(32, 128, 128 ** -0.5, 8, backend)
    layer.kv_cache = cache
    args = (q.flatten(1), k.flatten(1), v.flatten(1), md)
    with torch.inference_mode():
        layer(*args)  # compile before capture
        torch.cuda.synchronize()
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            out = layer(*args)
        md.seq_lens.copy_(torch.tensor([41, 301, 8, 1001], dtype=torch.int32))  # one step later
        md.slot_mapping.add_(1)  # next position: all still inside each sequence's blocks
        graph.replay()
        torch.cuda.synchronize()
        md.seq_lens_cpu = [41, 301, 8, 1001]
        expected = layer(*args)
    assert rel_err(out.view(-1, 32, 128), expected.view(-1, 32, 128).double()) < 1e-6


def test_flash_attn_refuses_float32_saying_why():
    md, cache, q, k, v, _ = make_batch([5], [5], 16, 4, 2, 64)
    with pytest.raises(FlashAttnUnsupported, match="float16 or bfloat16 only"):
        run_backend("flash_attn", md, cache.float(), q.float(), k.float(), v.float())
