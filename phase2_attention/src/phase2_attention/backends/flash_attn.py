"""The flash-attn package's kernels, used when ``import flash_attn`` works.

Prefill runs ``flash_attn_varlen_func`` over the whole flattened batch with the paged cache as
K/V (``block_table``); decode runs ``flash_attn_with_kvcache``. Upstream flash-attn 2 pages only
in blocks of a multiple of 256 tokens (vLLM ships its own build for 16), so this backend checks
the cache's block size and says so rather than failing inside the kernel.
"""

from __future__ import annotations

import logging
import torch

from phase1_kernels.layers.attention import AttentionBackend

from .paged_common import check_paged, store_kv

logger = logging.getLogger(__name__)


def flash_attn_available() -> bool:
    try:
        import flash_attn  # noqa: F401
    except Exception:
        return False
    return torch.cuda.is_available()


class FlashAttnBackend(AttentionBackend):
    name = "flash_attn"

    def __init__(self):
        if not flash_attn_available():
            raise RuntimeError("flash_attn backend: the flash-attn package is not importable "
                               "(no binary wheel on PyPI) or no CUDA device is present")
        from flash_attn import flash_attn_varlen_func, flash_attn_with_kvcache

        self._varlen, self._with_kvcache = flash_attn_varlen_func, flash_attn_with_kvcache

    def forward(self, layer, query, key, value, metadata):
        cache = check_paged(layer, metadata)
        if cache.shape[2] % 256:
            raise ValueError(f"flash-attn pages in multiples of 256 tokens; this cache's block "
                             f"size is {cache.shape[2]}: use the triton_paged backend instead")
        store_kv(key, value, cache, metadata.slot_mapping)
        out = torch.empty_like(query)
        nd = metadata.num_decodes
        if nd:
            out[:nd] = self._with_kvcache(
                query[:nd].unsqueeze(1), cache[0], cache[1],
                cache_seqlens=metadata.seq_lens[:nd], block_table=metadata.block_tables[:nd],
                softmax_scale=layer.scale, causal=True,
            ).squeeze(1)
        if metadata.num_prefills:
            q_loc = metadata.query_start_loc[nd:] - nd
            k_loc = torch.zeros_like(q_loc)
            k_loc[1:] = metadata.seq_lens[nd:].cumsum(0)
            out[nd:] = self._varlen(
                query[nd:], cache[0], cache[1], cu_seqlens_q=q_loc, cu_seqlens_k=k_loc,
                max_seqlen_q=max(metadata.query_lens_cpu[nd:]),
                max_seqlen_k=max(metadata.seq_lens_cpu[nd:]),
                softmax_scale=layer.scale, causal=True, block_table=metadata.block_tables[nd:],
            )
        return out
