"""Triton paged-attention kernels against a float64 PyTorch reference.

The cache is poisoned with NaN everywhere no token was written (block 0, the padding of the
last block, unused blocks), so a kernel that reads a slot it must not makes the test fail.
CPU cases run under Triton's interpreter and are kept tiny; ``gpu`` cases use real sizes.
"""

from __future__ import annotations

import math

import pytest
import torch

from phase2_attention.ops import triton_paged as tp

CUDA = torch.cuda.is_available()
DEVICE = "cuda" if CUDA else "cpu"
pytestmark = pytest.mark.skipif(not tp.is_available(DEVICE),
                                reason="triton unavailable (CPU needs TRITON_INTERPRET=1)")

TOL = {torch.float32: 2e-5, torch.float16: 2e-3, torch.bfloat16: 1.5e-2}


def rel_err(out: torch.Tensor, ref: torch.Tensor) -> float:
    assert not torch.isnan(out).any(), "output holds NaN (unwritten or poisoned read)"
    return ((out.double() - ref).norm() / ref.norm()).item()


class PagedBatch:
    """Random sequences scattered over shuffled, non-contiguous cache blocks (never block 0)."""

    def __init__(self, seq_lens, query_lens, num_kv_heads, group, head_size, block_size,
                 dtype, device=DEVICE, seed=0, spare_blocks=3):
        gen = torch.Generator().manual_seed(seed)
        self.seq_lens_list, self.query_lens_list = list(seq_lens), list(query_lens)
        self.block_size, self.hk, self.hq, self.d = block_size, num_kv_heads, num_kv_heads * group, head_size
        blocks_per_seq = [math.ceil(s / block_size) for s in seq_lens]
        num_blocks = 1 + sum(blocks_per_seq) + spare_blocks
        ids = (torch.randperm(num_blocks - 1, generator=gen) + 1).tolist()  # excludes block 0
        width = max(blocks_per_seq)
        self.block_tables = torch.zeros(len(seq_lens), width, dtype=torch.int32)
        i = 0
        for b, n in enumerate(blocks_per_seq):
            self.block_tables[b, :n] = torch.tensor(ids[i:i + n])
            i += n
        # Full K/V per sequence, float64 master copy; stored into a NaN-poisoned cache.
        self.k = [torch.randn(s, num_kv_heads, head_size, generator=gen, dtype=torch.float64)
                  for s in seq_lens]
        self.v = [torch.randn(s, num_kv_heads, head_size, generator=gen, dtype=torch.float64)
                  for s in seq_lens]
        self.k = [x.to(dtype).double() for x in self.k]  # what the cache can hold exactly
        self.v = [x.to(dtype).double() for x in self.v]
        self.cache = torch.full((2, num_blocks, block_size, num_kv_heads, head_size), float("nan"),
                                dtype=dtype)
        for b, s in enumerate(seq_lens):
            for pos in range(s):
                blk = self.block_tables[b, pos // block_size]
                self.cache[0, blk, pos % block_size] = self.k[b][pos].to(dtype)
                self.cache[1, blk, pos % block_size] = self.v[b][pos].to(dtype)
        self.cache = self.cache.to(device)
        self.block_tables = self.block_tables.to(device)
        self.seq_lens = torch.tensor(seq_lens, dtype=torch.int32, device=device)
        qsl = [0]
        for q in query_lens:
            qsl.append(qsl[-1] + q)
        self.query_start_loc = torch.tensor(qsl, dtype=torch.int32, device=device)
        total_q = qsl[-1]
        self.query = torch.randn(total_q, self.hq, head_size, generator=gen).to(dtype).to(device)
        self.scale = head_size ** -0.5

    def reference(self) -> torch.Tensor:
        """float64 attention: each sequence's queries at their absolute positions, causal,
        GQA by repeating KV heads."""
        q_all = self.query.double().cpu()
        outs, start = [], 0
        g = self.hq // self.hk
        for b, (s, ql) in enumerate(zip(self.seq_lens_list, self.query_lens_list)):
            q = q_all[start:start + ql].transpose(0, 1)               # [Hq, ql, D]
            k = self.k[b].repeat_interleave(g, dim=1).transpose(0, 1)  # [Hq, s, D]
            v = self.v[b].repeat_interleave(g, dim=1).transpose(0, 1)
            scores = q @ k.transpose(1, 2) * self.scale
            pos = torch.arange(s - ql, s)[:, None]
            scores = scores.masked_fill(torch.arange(s)[None, :] > pos, float("-inf"))
            outs.append((scores.softmax(-1) @ v).transpose(0, 1))
            start += ql
        return torch.cat(outs)


def poisoned_like(x: torch.Tensor) -> torch.Tensor:
    return torch.full_like(x, float("nan"))


# --------------------------------------------------------------------------------------------
# store_kvcache
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("block_size", [16, 32])
def test_store_kvcache_strided_and_skip(dtype, block_size):
    hk, d, t, num_blocks = 2, 32, 11, 4
    gen = torch.Generator().manual_seed(1)
    # a fused qkv output [T, (Hq + 2 Hk) * D]; key and value are row-strided views of it
    qkv = torch.randn(t, (4 + 2 * hk) * d, generator=gen).to(dtype).to(DEVICE)
    key = qkv[:, 4 * d:(4 + hk) * d].view(t, hk, d)
    value = qkv[:, (4 + hk) * d:].view(t, hk, d)
    assert not key.is_contiguous()
    cache = torch.full((2, num_blocks, block_size, hk, d), 7.0, dtype=dtype, device=DEVICE)
    slots = torch.randperm((num_blocks - 1) * block_size, generator=gen)[:t] + block_size
    slots[3] = -1
    slots = slots.to(DEVICE)
    before = cache.clone()
    tp.store_kvcache(key, value, cache, slots)
    flat = cache.view(2, -1, hk, d)
    expect = before.view(2, -1, hk, d).clone()
    keep = slots >= 0
    expect[0, slots[keep]] = key[keep]
    expect[1, slots[keep]] = value[keep]
    torch.testing.assert_close(flat, expect, rtol=0, atol=0)
    assert (flat[:, slots[keep]] != 7.0).any()


# --------------------------------------------------------------------------------------------
# decode
# --------------------------------------------------------------------------------------------
CPU_DECODE = [
    # seq_lens, hk, group, head, block, splits
    ([1, 37, 16, 64], 2, 1, 64, 16, None),
    ([45, 3, 100], 1, 4, 32, 16, 3),
    ([70, 33], 2, 8, 32, 32, 4),
    ([19, 64, 50], 1, 4, 64, 32, 1),
    ([130], 1, 2, 16, 64, 2),   # BLOCK_N (32) smaller than the block size
    ([200, 31], 2, 4, 128, 32, None),
]


@pytest.mark.parametrize("seq_lens,hk,group,head,block,splits", CPU_DECODE)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_decode_cpu(seq_lens, hk, group, head, block, splits, dtype):
    if CUDA:
        pytest.skip("CPU interpreter case")
    batch = PagedBatch(seq_lens, [1] * len(seq_lens), hk, group, head, block, dtype)
    out = poisoned_like(batch.query)
    tp.paged_decode_attention(batch.query, batch.cache, batch.block_tables, batch.seq_lens,
                              batch.scale, out=out, num_splits=splits)
    assert rel_err(out, batch.reference()) < TOL[dtype]


def test_decode_strided_query_cpu():
    if CUDA:
        pytest.skip("CPU interpreter case")
    batch = PagedBatch([20, 41], [1, 1], 2, 2, 32, 16, torch.float32)
    wide = torch.randn(2, 8, 32)
    wide[:, :4] = batch.query
    out = tp.paged_decode_attention(wide[:, :4], batch.cache, batch.block_tables,
                                    batch.seq_lens, batch.scale, num_splits=2)
    assert rel_err(out, batch.reference()) < TOL[torch.float32]


def test_choose_num_splits():
    assert tp.choose_num_splits(128, 8, 4096, 132) == 1
    assert tp.choose_num_splits(1, 8, 32768, 132) == tp.MAX_SPLITS
    assert tp.choose_num_splits(1, 8, 300, 132) == 1
    assert 1 < tp.choose_num_splits(64, 8, 4096, 132) <= 4


# --------------------------------------------------------------------------------------------
# prefill
# --------------------------------------------------------------------------------------------
CPU_PREFILL = [
    # seq_lens, query_lens, hk, group, head, block
    ([23, 40], [23, 40], 1, 1, 64, 16),           # no context
    ([50, 9, 33], [17, 1, 33], 2, 4, 32, 16),     # context + q_len 1 + no context
    ([70, 36], [5, 20], 1, 8, 32, 32),            # context, GQA 8
    ([45], [45], 1, 2, 16, 64),                   # BLOCK_N smaller than the block size
    ([90, 40], [60, 40], 2, 4, 128, 16),
]


@pytest.mark.parametrize("seq_lens,query_lens,hk,group,head,block", CPU_PREFILL)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_prefill_cpu(seq_lens, query_lens, hk, group, head, block, dtype):
    if CUDA:
        pytest.skip("CPU interpreter case")
    batch = PagedBatch(seq_lens, query_lens, hk, group, head, block, dtype)
    out = poisoned_like(batch.query)
    tp.paged_prefill_attention(batch.query, batch.cache, batch.block_tables,
                               batch.query_start_loc, batch.seq_lens, max(query_lens),
                               batch.scale, out=out)
    assert rel_err(out, batch.reference()) < TOL[dtype]


@pytest.mark.parametrize("cfg", [dict(BLOCK_M=128, BLOCK_N=64), dict(BLOCK_M=64, BLOCK_N=16),
                                 dict(BLOCK_M=16, BLOCK_N=128)])
def test_prefill_tile_shapes_cpu(cfg):
    """The GPU tile shapes (BLOCK_M != BLOCK_N, BLOCK_N != block size) on the interpreter."""
    if CUDA:
        pytest.skip("CPU interpreter case")
    batch = PagedBatch([200, 70, 5], [150, 1, 5], 2, 2, 32, 32, torch.float32, seed=5)
    out = poisoned_like(batch.query)
    tp.paged_prefill_attention(batch.query, batch.cache, batch.block_tables,
                               batch.query_start_loc, batch.seq_lens, 150, batch.scale, out=out,
                               config=dict(cfg, num_warps=1, num_stages=1))
    assert rel_err(out, batch.reference()) < TOL[torch.float32]


@pytest.mark.parametrize("block_n", [16, 64, 128])
def test_decode_tile_shapes_cpu(block_n):
    if CUDA:
        pytest.skip("CPU interpreter case")
    batch = PagedBatch([300, 70, 5], [1, 1, 1], 2, 4, 32, 32, torch.float32, seed=6)
    out = poisoned_like(batch.query)
    tp.paged_decode_attention(batch.query, batch.cache, batch.block_tables, batch.seq_lens,
                              batch.scale, out=out, num_splits=3,
                              config=dict(BLOCK_N=block_n, num_warps=1, num_stages=1))
    assert rel_err(out, batch.reference()) < TOL[torch.float32]


def test_prefill_store_then_attend_cpu():
    """The engine's order: store the new tokens' K/V by slot, then attend over the cache."""
    if CUDA:
        pytest.skip("CPU interpreter case")
    batch = PagedBatch([30, 18], [12, 18], 2, 2, 32, 16, torch.float32, seed=3)
    slots = []
    for b, (s, ql) in enumerate(zip(batch.seq_lens_list, batch.query_lens_list)):
        for pos in range(s - ql, s):
            slots.append(int(batch.block_tables[b, pos // 16]) * 16 + pos % 16)
    slots = torch.tensor(slots)
    new_k = torch.cat([k[s - ql:] for k, s, ql in
                       zip(batch.k, batch.seq_lens_list, batch.query_lens_list)]).float()
    new_v = torch.cat([v[s - ql:] for v, s, ql in
                       zip(batch.v, batch.seq_lens_list, batch.query_lens_list)]).float()
    batch.cache.view(2, -1, 2, 32)[:, slots] = float("nan")  # forget them first
    tp.store_kvcache(new_k, new_v, batch.cache, slots)
    out = tp.paged_prefill_attention(batch.query, batch.cache, batch.block_tables,
                                     batch.query_start_loc, batch.seq_lens, 18, batch.scale)
    assert rel_err(out, batch.reference()) < TOL[torch.float32]


def test_bad_inputs_raise():
    cache = torch.zeros(2, 3, 12, 1, 32)
    with pytest.raises(ValueError, match="block_size"):
        tp.paged_decode_attention(torch.zeros(1, 1, 32), cache, torch.ones(1, 1, dtype=torch.int32),
                                  torch.ones(1, dtype=torch.int32), 1.0)
    cache = torch.zeros(2, 3, 16, 2, 32)
    with pytest.raises(ValueError, match="query"):
        tp.paged_decode_attention(torch.zeros(1, 3, 32), cache, torch.ones(1, 1, dtype=torch.int32),
                                  torch.ones(1, dtype=torch.int32), 1.0)


# --------------------------------------------------------------------------------------------
# GPU: real sizes
# --------------------------------------------------------------------------------------------
def _fast_batch(seq_lens, query_lens, hk, group, head, block, dtype, seed=0):
    """A large random batch built on the GPU (the PagedBatch loop is too slow at 32k)."""
    gen = torch.Generator(device="cuda").manual_seed(seed)
    nblk = [math.ceil(s / block) for s in seq_lens]
    num_blocks = 1 + sum(nblk) + 5
    ids = torch.randperm(num_blocks - 1, device="cuda", generator=gen).int() + 1
    width = max(nblk)
    tables = torch.zeros(len(seq_lens), width, dtype=torch.int32, device="cuda")
    cache = torch.full((2, num_blocks, block, hk, head), float("nan"), dtype=dtype, device="cuda")
    ks, vs, i = [], [], 0
    for b, (s, n) in enumerate(zip(seq_lens, nblk)):
        tables[b, :n] = ids[i:i + n]
        i += n
        k = torch.randn(s, hk, head, device="cuda", generator=gen, dtype=dtype)
        v = torch.randn(s, hk, head, device="cuda", generator=gen, dtype=dtype)
        pos = torch.arange(s, device="cuda")
        slot = tables[b, pos // block].long() * block + pos % block
        cache[0].view(-1, hk, head)[slot] = k
        cache[1].view(-1, hk, head)[slot] = v
        ks.append(k)
        vs.append(v)
    qsl = torch.tensor([0] + list(query_lens), device="cuda").cumsum(0).int()
    q = torch.randn(int(qsl[-1]), hk * group, head, device="cuda", generator=gen, dtype=dtype)
    return cache, tables, torch.tensor(seq_lens, dtype=torch.int32, device="cuda"), qsl, q, ks, vs


def _gpu_reference(q, ks, vs, seq_lens, query_lens, group, scale, chunk=1024):
    """Explicit softmax attention in float32 on the GPU, per sequence and per chunk of query
    rows (float64 matmuls at 32k are too slow; float32 is ~1e-6 relative, far below the bf16
    tolerance). Each chunk sees only the keys up to its last query's position."""
    outs, start = [], 0
    for k, v, s, ql in zip(ks, vs, seq_lens, query_lens):
        kk = k.float().repeat_interleave(group, 1).transpose(0, 1)   # [Hq, s, D]
        vv = v.float().repeat_interleave(group, 1).transpose(0, 1)
        for i0 in range(0, ql, chunk):
            i1 = min(ql, i0 + chunk)
            qq = q[start + i0:start + i1].float().transpose(0, 1)  # [Hq, n, D]
            last = s - ql + i1  # keys [0, last) are visible to some row of the chunk
            scores = qq @ kk[:, :last].transpose(1, 2) * scale
            pos = torch.arange(s - ql + i0, s - ql + i1, device="cuda")[:, None]
            scores.masked_fill_(torch.arange(last, device="cuda")[None, :] > pos, float("-inf"))
            outs.append((scores.softmax(-1) @ vv[:, :last]).transpose(0, 1))
        start += ql
    return torch.cat(outs)


GPU_DECODE = [
    # seq_lens, hk, group, head, block, splits
    ([32768], 8, 4, 128, 16, None),
    ([4096] * 64, 8, 4, 128, 16, None),
    ([1, 17, 4097, 1000, 32768, 555] * 2, 8, 4, 128, 32, None),
    ([5000, 123, 2048], 8, 8, 64, 16, 7),
    ([3000, 77], 2, 4, 80, 16, None),
    ([2000, 9], 4, 1, 256, 32, 3),
    ([300] * 64, 4, 8, 128, 16, 1),
    ([530, 17, 1, 530, 2048, 64, 300, 999] * 2, 8, 4, 128, 16, None),  # 16 rows: the small-batch tile
    ([530, 9, 1200, 64], 8, 4, 64, 16, None),
]


@pytest.mark.gpu
@pytest.mark.parametrize("seq_lens,hk,group,head,block,splits", GPU_DECODE)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_decode_gpu(seq_lens, hk, group, head, block, splits, dtype):
    cache, tables, sl, _, q, ks, vs = _fast_batch(seq_lens, [1] * len(seq_lens), hk, group,
                                                  head, block, dtype)
    scale = head ** -0.5
    out = poisoned_like(q)
    tp.paged_decode_attention(q, cache, tables, sl, scale, out=out, num_splits=splits)
    ref = _gpu_reference(q, ks, vs, seq_lens, [1] * len(seq_lens), group, scale)
    assert rel_err(out, ref.double()) < TOL[dtype]


GPU_PREFILL = [
    # seq_lens, query_lens, hk, group, head, block
    ([32768], [32768], 8, 4, 128, 16),
    ([4096, 1000, 3000, 17], [4096, 1, 1200, 17], 8, 4, 128, 32),
    ([2048] * 8, [512] * 8, 8, 8, 64, 16),
    ([777, 1500], [777, 300], 2, 4, 80, 16),
    ([600, 1025], [600, 1], 4, 1, 256, 32),
    ([100] * 64, [100] * 64, 8, 4, 128, 16),
]


@pytest.mark.gpu
@pytest.mark.parametrize("seq_lens,query_lens,hk,group,head,block", GPU_PREFILL)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_prefill_gpu(seq_lens, query_lens, hk, group, head, block, dtype):
    cache, tables, sl, qsl, q, ks, vs = _fast_batch(seq_lens, query_lens, hk, group, head,
                                                    block, dtype)
    scale = head ** -0.5
    out = poisoned_like(q)
    tp.paged_prefill_attention(q, cache, tables, qsl, sl, max(query_lens), scale, out=out)
    ref = _gpu_reference(q, ks, vs, seq_lens, query_lens, group, scale)
    assert rel_err(out, ref.double()) < TOL[dtype]


@pytest.mark.gpu
def test_store_kvcache_gpu():
    hk, d, t, block = 8, 128, 4096, 16
    num_blocks = t // block + 3
    qkv = torch.randn(t, (32 + 2 * hk) * d, device="cuda", dtype=torch.bfloat16)
    key = qkv[:, 32 * d:(32 + hk) * d].view(t, hk, d)
    value = qkv[:, (32 + hk) * d:].view(t, hk, d)
    cache = torch.zeros(2, num_blocks, block, hk, d, device="cuda", dtype=torch.bfloat16)
    slots = torch.randperm((num_blocks - 1) * block, device="cuda")[:t] + block
    slots[::7] = -1
    tp.store_kvcache(key, value, cache, slots)
    keep = slots >= 0
    flat = cache.view(2, -1, hk, d)
    assert torch.equal(flat[0, slots[keep]], key[keep])
    assert torch.equal(flat[1, slots[keep]], value[keep])
    written = torch.zeros(flat.shape[1], dtype=torch.bool, device="cuda")
    written[slots[keep]] = True
    assert (flat[:, ~written] == 0).all()


@pytest.mark.gpu
def test_decode_chain_with_pdl_in_a_cuda_graph_gpu(monkeypatch):
    """PDL (the default on Hopper): a GEMM, then rope+store, split and merge kernels each
    launched to overlap the one before, captured in a CUDA graph and replayed: the same output
    as without PDL, bit for bit (each kernel waits for its predecessor's writes)."""
    from phase2_attention.ops.rope_store import rope_store_kvcache

    if torch.cuda.get_device_capability()[0] < 9:
        pytest.skip("programmatic dependent launch needs sm90")
    hk, group, head, block, ctx = 8, 4, 128, 16, 3000
    seq_lens = [ctx + 1, 200 + 1]
    cache, tables, sl, _, _, _, _ = _fast_batch(seq_lens, [1, 1], hk, group, head, block,
                                                torch.bfloat16)
    gen = torch.Generator(device="cuda").manual_seed(0)
    x = torch.randn(2, 4096, device="cuda", dtype=torch.bfloat16, generator=gen)
    w = torch.randn((group + 2) * hk * head, 4096, device="cuda", dtype=torch.bfloat16,
                    generator=gen) * 0.02
    cos_sin = torch.randn(8192, head, device="cuda")
    positions = torch.tensor([ctx, 200], device="cuda")
    blocks = tables.gather(1, (positions // block).view(2, 1)).view(2)
    slots = blocks.long() * block + positions % block

    def step(out_cache):
        qkv = x @ w.T
        q = qkv[:, :group * hk * head].view(2, group * hk, head)
        k = qkv[:, group * hk * head:(group + 1) * hk * head].view(2, hk, head)
        v = qkv[:, (group + 1) * hk * head:].view(2, hk, head)
        rope_store_kvcache(q, k, v, out_cache, slots, positions, cos_sin)
        return tp.paged_decode_attention(q, out_cache, tables, sl, head ** -0.5, num_splits=8)

    results = {}
    for pdl in ("0", "1"):
        monkeypatch.setenv(tp.PDL_ENV_VAR, pdl)
        work = cache.clone()
        step(work)  # compile outside the capture
        work.copy_(cache)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            out = step(work)
        for _ in range(3):
            work.copy_(cache)
            graph.replay()
        torch.cuda.synchronize()
        results[pdl] = (out.clone(), work.clone())
    for a, b in zip(results["0"], results["1"]):  # the cache's unwritten slots hold NaN
        torch.testing.assert_close(a, b, rtol=0, atol=0, equal_nan=True)
    assert not results["1"][0].isnan().any()
