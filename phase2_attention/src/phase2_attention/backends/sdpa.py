"""PyTorch's ``scaled_dot_product_attention`` (FlashAttention-2 / memory-efficient kernels on
GPU). Works with or without a paged cache: without one, each sequence attends to its own new
tokens (plain prefill)."""

from __future__ import annotations

import logging
import torch
import torch.nn.functional as F

from phase1_kernels.layers.attention import AttentionBackend

from .paged_common import gather_kv, store_kv

logger = logging.getLogger(__name__)


def sdpa_one(query: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, scale: float) -> torch.Tensor:
    """query [q, Hq, D] = the last q of k positions in keys/values [k, Hk, D]; causal."""
    q_len, k_len = query.shape[0], keys.shape[0]
    q = query.transpose(0, 1).unsqueeze(0)
    k = keys.transpose(0, 1).unsqueeze(0)
    v = values.transpose(0, 1).unsqueeze(0)
    group = q.shape[1] // k.shape[1]
    if group > 1:
        k = k.repeat_interleave(group, dim=1)
        v = v.repeat_interleave(group, dim=1)
    if q_len == k_len:
        out = F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=scale)
    elif q_len == 1:
        out = F.scaled_dot_product_attention(q, k, v, scale=scale)
    else:
        rows = torch.arange(q_len, device=q.device).unsqueeze(1) + (k_len - q_len)
        mask = torch.arange(k_len, device=q.device).unsqueeze(0) <= rows
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale)
    return out.squeeze(0).transpose(0, 1)


def sdpa_decode(query: torch.Tensor, kv_cache: torch.Tensor, block_tables: torch.Tensor,
                seq_lens: torch.Tensor, max_len: int, scale: float) -> torch.Tensor:
    """Every decode sequence in one SDPA call: gather each sequence's blocks (padded to the
    longest), mask the padding. query [B, Hq, D] -> [B, Hq, D]."""
    batch, num_heads, dim = query.shape
    block_size, num_kv_heads = kv_cache.shape[2], kv_cache.shape[3]
    blocks = block_tables[:, : -(-max_len // block_size)].reshape(-1).long()
    length = blocks.numel() // batch * block_size
    k = kv_cache[0].index_select(0, blocks).view(batch, length, num_kv_heads, dim).transpose(1, 2)
    v = kv_cache[1].index_select(0, blocks).view(batch, length, num_kv_heads, dim).transpose(1, 2)
    q = query.view(batch, num_kv_heads, num_heads // num_kv_heads, dim)  # GQA: a group per kv head
    valid = torch.arange(length, device=query.device) < seq_lens.unsqueeze(1)  # [B, L]
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=valid[:, None, None, :], scale=scale)
    return out.reshape(batch, num_heads, dim)


class SdpaBackend(AttentionBackend):
    name = "sdpa"

    def forward(self, layer, query, key, value, metadata):
        cache = layer.kv_cache
        paged = cache is not None and getattr(metadata, "block_tables", None) is not None
        if cache is not None and not paged:
            raise ValueError("the sdpa backend reads a paged cache; pass PagedAttentionMetadata")
        out = torch.empty_like(query)
        start = 0
        if paged:
            store_kv(key, value, cache, metadata.slot_mapping)
            start = nd = metadata.num_decodes
            if nd:
                out[:nd] = sdpa_decode(query[:nd], cache, metadata.block_tables[:nd],
                                       metadata.seq_lens[:nd], max(metadata.seq_lens_cpu[:nd]),
                                       layer.scale)
        for i in range(start, metadata.num_seqs):
            q_len, s_len = metadata.query_lens_cpu[i], metadata.seq_lens_cpu[i]
            end = start + q_len
            if not q_len:
                continue
            if paged:
                keys, values = gather_kv(cache, metadata.block_tables[i], s_len)
            elif s_len != q_len:
                raise ValueError(f"sequence {i} has cached context but no KV cache was given")
            else:
                keys, values = key[start:end], value[start:end]
            out[start:end] = sdpa_one(query[start:end], keys, values, layer.scale)
            start = end
        return out
