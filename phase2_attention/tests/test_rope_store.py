"""The fused rotary + K/V-cache store kernel against phase 1's rotary op (in float64) and a
plain store: the query rotated in place, rotated keys and values at their slots, slot -1 and
every other cache entry left untouched. CPU cases run under Triton's interpreter."""

from __future__ import annotations

import pytest
import torch

from phase1_kernels.layers.rotary_embedding import RotaryEmbedding
from phase1_kernels.ops import native
from phase2_attention.ops import triton_paged as tp
from phase2_attention.ops.rope_store import rope_store_kvcache, rotary_fusable

CUDA = torch.cuda.is_available()
DEVICE = "cuda" if CUDA else "cpu"
pytestmark = pytest.mark.skipif(not tp.is_available(DEVICE),
                                reason="triton unavailable (CPU needs TRITON_INTERPRET=1)")
TOL = {torch.float32: 1e-5, torch.float16: 1e-3, torch.bfloat16: 8e-3}
LLAMA3 = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
          "high_freq_factor": 4.0, "original_max_position_embeddings": 64}


def run_case(hq, hk, d, tokens, block_size, dtype, scaling=None, seed=0, device=DEVICE):
    gen = torch.Generator().manual_seed(seed)
    # q, k, v as row-strided views of one fused qkv output, as the model gives them
    qkv = torch.randn(tokens, (hq + 2 * hk) * d, generator=gen).to(dtype).to(device)
    q = qkv[:, :hq * d].view(tokens, hq, d)
    k = qkv[:, hq * d:(hq + hk) * d].view(tokens, hk, d)
    v = qkv[:, (hq + hk) * d:].view(tokens, hk, d)
    q0, k0, v0 = q.clone(), k.clone(), v.clone()
    rotary = RotaryEmbedding(d, d, 512, 10000.0, scaling=scaling, impl="native")
    cos_sin = rotary.cos_sin_cache.to(device)
    positions = torch.randint(0, 512, (tokens,), generator=gen).to(device)
    num_blocks = tokens // block_size + 3
    cache = torch.full((2, num_blocks, block_size, hk, d), 7.0, dtype=dtype, device=device)
    slots = (torch.randperm((num_blocks - 1) * block_size, generator=gen)[:tokens] + block_size)
    slots[tokens // 2] = -1  # a padding token: not stored
    slots = slots.to(device)
    rope_store_kvcache(q, k, v, cache, slots, positions, cos_sin)

    rq, rk = native.rotary_embedding(positions.cpu(), q0.double().cpu(), k0.double().cpu(), d,
                                     cos_sin.double().cpu(), True)
    tol = TOL[dtype]
    torch.testing.assert_close(q.double().cpu(), rq, rtol=tol, atol=tol)
    keep = (slots >= 0).cpu()
    flat = cache.view(2, -1, hk, d).cpu()
    kept_slots = slots.cpu()[keep]
    torch.testing.assert_close(flat[0, kept_slots].double(), rk[keep], rtol=tol, atol=tol)
    assert torch.equal(flat[1, kept_slots], v0.cpu()[keep])  # values are copied, not rotated
    assert torch.equal(k, k0) and torch.equal(v, v0)  # the inputs k, v are not written
    untouched = torch.ones(flat.shape[1], dtype=torch.bool)
    untouched[kept_slots] = False
    assert flat[:, untouched].eq(7.0).all()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("hq,hk,d,tokens,block_size", [
    (4, 2, 32, 9, 16),   # GQA
    (3, 3, 16, 5, 16),   # heads not a power of two
    (6, 2, 48, 7, 32),   # head size not a power of two (a padded half)
])
def test_rope_store_matches_rotary_then_store(hq, hk, d, tokens, block_size, dtype):
    run_case(hq, hk, d, tokens, block_size, dtype)


def test_rope_store_with_llama3_scaling():
    run_case(4, 2, 32, 6, 16, torch.float32, scaling=LLAMA3, seed=3)


def test_rotary_fusable_only_for_whole_head_neox():
    assert rotary_fusable(RotaryEmbedding(64, 64, 16, 1e4, impl="native"))
    assert not rotary_fusable(RotaryEmbedding(64, 64, 16, 1e4, is_neox_style=False, impl="native"))
    assert not rotary_fusable(RotaryEmbedding(64, 32, 16, 1e4, impl="native"))
    assert not rotary_fusable(object())


def test_rope_store_bad_inputs_raise():
    cache = torch.zeros(2, 4, 16, 2, 32, device=DEVICE)
    q, k = torch.zeros(3, 4, 32, device=DEVICE), torch.zeros(3, 2, 32, device=DEVICE)
    pos, slots = torch.zeros(3, dtype=torch.long, device=DEVICE), torch.arange(3, device=DEVICE)
    cos_sin = torch.zeros(8, 32, device=DEVICE)
    with pytest.raises(ValueError, match="key/value must be"):
        rope_store_kvcache(q, k[:, :1], k, cache, slots, pos, cos_sin)
    with pytest.raises(ValueError, match="positions must be"):
        rope_store_kvcache(q, k, k, cache, slots, pos[:2], cos_sin)
    with pytest.raises(ValueError, match="cos_sin_cache must be"):
        rope_store_kvcache(q, k, k, cache, slots, pos, cos_sin[:, :16])
    with pytest.raises(ValueError, match="slot_mapping must be"):
        rope_store_kvcache(q, k, k, cache, slots[:1], pos, cos_sin)
    with pytest.raises(ValueError, match="contiguous"):
        rope_store_kvcache(q.transpose(1, 2).contiguous().transpose(1, 2), k, k, cache, slots,
                           pos, cos_sin)


@pytest.mark.gpu
@pytest.mark.skipif(not CUDA, reason="needs CUDA")
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_rope_store_gpu_llama8b_shape(dtype):
    run_case(32, 8, 128, 300, 16, dtype, scaling=LLAMA3)
