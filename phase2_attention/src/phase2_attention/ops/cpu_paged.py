"""Our C++ CPU paged-attention kernels (``torch.ops.lightvllm.paged_attention`` and
``store_kv_cache``, built with phase 1's extension), with shape-checked Python wrappers.

``paged_attention`` reads K/V through the block table inside the kernel (no gather into a
padded copy, unlike the SDPA backend), serves decode and varlen/chunked prefill in one call,
shares each K/V block among the query heads of its GQA group and runs an fp32 online softmax.
"""

from __future__ import annotations

import torch

from phase1_kernels.ops import extension


def is_available() -> bool:
    return extension.is_available("cpu")


def why_unavailable() -> str:
    return extension.why_unavailable("cpu")


def _ops():
    if not is_available():
        raise RuntimeError(f"the lightvllm CPU kernels are unavailable: {why_unavailable()}")
    return torch.ops.lightvllm


def store_kvcache(key: torch.Tensor, value: torch.Tensor, kv_cache: torch.Tensor,
                  slot_mapping: torch.Tensor) -> None:
    """``kv_cache[0|1]`` at ``slot_mapping[t]`` = ``key|value[t]`` ([T, Hk, D]); slot -1 skips."""
    _ops().store_kv_cache(key, value, kv_cache, slot_mapping)


def paged_attention(query: torch.Tensor, kv_cache: torch.Tensor, block_tables: torch.Tensor,
                    seq_lens: torch.Tensor, query_start_loc: torch.Tensor, scale: float,
                    out: torch.Tensor | None = None) -> torch.Tensor:
    """Causal attention of query [T, Hq, D] (sequence b's tokens are
    ``query_start_loc[b]:query_start_loc[b+1]``, the last of its ``seq_lens[b]``) over
    ``kv_cache`` [2, NB, BS, Hk, D] through ``block_tables`` [B, W]. Returns ``out``."""
    if out is None:
        out = torch.empty(query.shape, dtype=query.dtype, device=query.device)
    _ops().paged_attention(out, query, kv_cache, block_tables, seq_lens, query_start_loc, scale)
    return out
