"""Torch-native paged-cache primitives shared by the torch and SDPA backends."""

from __future__ import annotations

import logging
import torch

logger = logging.getLogger(__name__)


def store_kv(key: torch.Tensor, value: torch.Tensor, kv_cache: torch.Tensor,
             slot_mapping: torch.Tensor) -> None:
    """Write each token's K/V ([T, Hk, D]) to its slot of ``kv_cache`` [2, NB, BS, Hk, D];
    slot -1 means skip."""
    _, num_blocks, block_size, heads, dim = kv_cache.shape
    flat = kv_cache.view(2, num_blocks * block_size, heads, dim)
    if bool((slot_mapping < 0).any()):  # padding tokens: drop them first
        keep = slot_mapping >= 0
        slot_mapping, key, value = slot_mapping[keep], key[keep], value[keep]
    flat[0].index_copy_(0, slot_mapping, key.to(kv_cache.dtype))
    flat[1].index_copy_(0, slot_mapping, value.to(kv_cache.dtype))


def gather_kv(kv_cache: torch.Tensor, block_table: torch.Tensor, seq_len: int
              ) -> tuple[torch.Tensor, torch.Tensor]:
    """One sequence's first ``seq_len`` keys and values ([seq_len, Hk, D]) through its block
    table: the indirection that lets a sequence's blocks lie anywhere in memory."""
    block_size = kv_cache.shape[2]
    used = block_table[: -(-seq_len // block_size)].long()
    keys = kv_cache[0].index_select(0, used).flatten(0, 1)[:seq_len]
    values = kv_cache[1].index_select(0, used).flatten(0, 1)[:seq_len]
    return keys, values


def check_paged(layer, metadata) -> torch.Tensor:
    cache = layer.kv_cache
    if cache is None or getattr(metadata, "block_tables", None) is None:
        raise ValueError(
            "paged backends need a paged KV cache bound to the layer and PagedAttentionMetadata "
            "(allocate one with phase2_attention.kv_cache.allocate_kv_cache)"
        )
    return cache
