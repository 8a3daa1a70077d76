"""Rotary embedding fused with the paged K/V-cache store: one Triton kernel instead of two.

In a decode step every layer runs the rotary kernel (read q and k, write them back rotated) and
then the store kernel (read k and v again, write them into the cache). At batch 1 both are tiny
and their cost is the launch and the ramp of a kernel, twice per layer. This kernel does both
in one pass per token: it rotates the query in place, rotates the key and writes it and the
value straight to the token's cache slot. The rotated key is not written back to ``key``: the
paged attention kernels read keys from the cache only.

NeoX-style rotation over the whole head (``rotary_dim == head_size``), which is what LLaMA
uses; ``rotary_fusable`` says whether a rotary layer fits, the attention layer otherwise rotates
first and stores separately. A slot of ``-1`` (graph padding) skips the store, as in
``store_kvcache``; the query of such a token is still rotated (its output is discarded).
"""

from __future__ import annotations

import logging

import torch

from .triton_paged import (HAS_TRITON, _cache_strides, _check_cache, _check_new_kv, _next_pow2,
                           _rowmajor_last, pdl_launch)

logger = logging.getLogger(__name__)

if HAS_TRITON:
    import triton
    import triton.language as tl

    from .triton_paged import _pdl_enter

    @triton.jit
    def _rotate_halves(x1, x2, cos, sin):
        """NeoX rotation of a head split in halves: (x1, x2) -> (x1 c - x2 s, x2 c + x1 s)."""
        return x1 * cos - x2 * sin, x2 * cos + x1 * sin

    @triton.jit
    def _rope_store_kernel(
        q_ptr, k_ptr, v_ptr, pos_ptr, cos_sin_ptr, cache_ptr, slot_ptr,
        q_stride_t, q_stride_h, k_stride_t, k_stride_h, v_stride_t, v_stride_h, cs_stride,
        c_stride_kv, c_stride_block, c_stride_off, c_stride_h,
        NUM_Q_HEADS: tl.constexpr, NUM_KV_HEADS: tl.constexpr, HALF: tl.constexpr,
        HQ_PAD: tl.constexpr, HK_PAD: tl.constexpr, HALF_PAD: tl.constexpr,
        BLOCK_SIZE: tl.constexpr, USE_PDL: tl.constexpr,
    ):
        _pdl_enter(USE_PDL)  # q, k, v come from the GEMM before
        t = tl.program_id(0).to(tl.int64)
        pos = tl.load(pos_ptr + t).to(tl.int64)
        d = tl.arange(0, HALF_PAD)
        d_mask = d < HALF
        cos = tl.load(cos_sin_ptr + pos * cs_stride + d, mask=d_mask, other=0.0).to(tl.float32)
        sin = tl.load(cos_sin_ptr + pos * cs_stride + HALF + d, mask=d_mask, other=0.0).to(tl.float32)
        cos, sin = cos[None, :], sin[None, :]

        hq = tl.arange(0, HQ_PAD)
        q_mask = (hq[:, None] < NUM_Q_HEADS) & d_mask[None, :]
        q1_ptrs = q_ptr + t * q_stride_t + hq[:, None] * q_stride_h + d[None, :]
        q1 = tl.load(q1_ptrs, mask=q_mask, other=0.0).to(tl.float32)
        q2 = tl.load(q1_ptrs + HALF, mask=q_mask, other=0.0).to(tl.float32)
        r1, r2 = _rotate_halves(q1, q2, cos, sin)
        tl.store(q1_ptrs, r1.to(q_ptr.dtype.element_ty), mask=q_mask)
        tl.store(q1_ptrs + HALF, r2.to(q_ptr.dtype.element_ty), mask=q_mask)

        slot = tl.load(slot_ptr + t).to(tl.int64)
        if slot >= 0:
            hk = tl.arange(0, HK_PAD)
            k_mask = (hk[:, None] < NUM_KV_HEADS) & d_mask[None, :]
            k1_ptrs = k_ptr + t * k_stride_t + hk[:, None] * k_stride_h + d[None, :]
            k1 = tl.load(k1_ptrs, mask=k_mask, other=0.0).to(tl.float32)
            k2 = tl.load(k1_ptrs + HALF, mask=k_mask, other=0.0).to(tl.float32)
            v_ptrs = v_ptr + t * v_stride_t + hk[:, None] * v_stride_h + d[None, :]
            v1 = tl.load(v_ptrs, mask=k_mask, other=0.0)
            v2 = tl.load(v_ptrs + HALF, mask=k_mask, other=0.0)
            s1, s2 = _rotate_halves(k1, k2, cos, sin)
            dst = (cache_ptr + (slot // BLOCK_SIZE) * c_stride_block
                   + (slot % BLOCK_SIZE) * c_stride_off + hk[:, None] * c_stride_h + d[None, :])
            out_ty = cache_ptr.dtype.element_ty
            tl.store(dst, s1.to(out_ty), mask=k_mask)
            tl.store(dst + HALF, s2.to(out_ty), mask=k_mask)
            tl.store(dst + c_stride_kv, v1.to(out_ty), mask=k_mask)
            tl.store(dst + c_stride_kv + HALF, v2.to(out_ty), mask=k_mask)


def rotary_fusable(rotary: object) -> bool:
    """Whether ``rotary`` (phase 1's ``RotaryEmbedding``) is a rotation this kernel does."""
    return (getattr(rotary, "is_neox_style", False)
            and getattr(rotary, "rotary_dim", None) == getattr(rotary, "head_size", -1)
            and getattr(rotary, "head_size", 1) % 2 == 0)


def _check_rope_inputs(query, positions, cos_sin_cache, tokens, head_size):
    if query.dim() != 3 or query.shape[0] != tokens or query.shape[2] != head_size:
        raise ValueError(f"query must be [{tokens}, Hq, {head_size}], got {tuple(query.shape)}")
    if positions.shape != (tokens,):
        raise ValueError(f"positions must be [{tokens}], got {tuple(positions.shape)}")
    if cos_sin_cache.dim() != 2 or cos_sin_cache.shape[1] != head_size:
        raise ValueError(f"cos_sin_cache must be [max_position, {head_size}] (cos | sin), got "
                         f"{tuple(cos_sin_cache.shape)}")
    if query.stride(-1) != 1:
        raise ValueError("query's head dim must be contiguous: it is rotated in place")


def rope_store_kvcache(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                       kv_cache: torch.Tensor, slot_mapping: torch.Tensor,
                       positions: torch.Tensor, cos_sin_cache: torch.Tensor) -> None:
    """Rotate ``query`` [T, Hq, D] in place and store the rotated ``key`` and ``value``
    [T, Hk, D] (row-strided views allowed) at ``slot_mapping`` in ``kv_cache``."""
    _, block_size, num_kv_heads, head_size = _check_cache(kv_cache)
    tokens = _check_new_kv(key, value, slot_mapping, num_kv_heads, head_size)
    _check_rope_inputs(query, positions, cos_sin_cache, tokens, head_size)
    if tokens == 0:
        return
    key, value = _rowmajor_last(key), _rowmajor_last(value)
    cos_sin_cache = _rowmajor_last(cos_sin_cache)
    num_heads = query.shape[1]
    _rope_store_kernel[(tokens,)](
        query, key, value, positions, cos_sin_cache, kv_cache, slot_mapping,
        query.stride(0), query.stride(1), key.stride(0), key.stride(1),
        value.stride(0), value.stride(1), cos_sin_cache.stride(0),
        *_cache_strides(kv_cache),
        NUM_Q_HEADS=num_heads, NUM_KV_HEADS=num_kv_heads, HALF=head_size // 2,
        HQ_PAD=_next_pow2(num_heads), HK_PAD=_next_pow2(num_kv_heads),
        HALF_PAD=_next_pow2(head_size // 2), BLOCK_SIZE=block_size,
        num_warps=4 if num_heads * head_size >= 2048 else 1, **pdl_launch(query.device),
    )


__all__ = ["rope_store_kvcache", "rotary_fusable"]
