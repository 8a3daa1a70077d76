"""Our Triton paged backend: store K/V by slot mapping, split-KV decode for the decode
sequences, varlen causal prefill over the paged cache for the rest (chunked prefill and prefix
hits included)."""

from __future__ import annotations

import logging
import torch

from phase1_kernels.layers.attention import AttentionBackend

from .paged_common import check_paged

logger = logging.getLogger(__name__)


class TritonPagedBackend(AttentionBackend):
    name = "triton_paged"
    cudagraph_safe = True  # lengths and tables are read from device tensors; grid from max_model_len

    def __init__(self):
        from ..ops import triton_paged

        self.kernels = triton_paged

    def forward(self, layer, query, key, value, metadata):
        cache = check_paged(layer, metadata)
        ops = self.kernels
        ops.store_kvcache(key, value, cache, metadata.slot_mapping)
        out = torch.empty_like(query)
        nd = metadata.num_decodes
        if nd:
            ops.paged_decode_attention(query[:nd], cache, metadata.block_tables[:nd],
                                       metadata.seq_lens[:nd], layer.scale, out=out[:nd])
        if metadata.num_prefills:
            ops.paged_prefill_attention(
                query[nd:], cache, metadata.block_tables[nd:], metadata.query_start_loc[nd:] - nd,
                metadata.seq_lens[nd:], max(metadata.query_lens_cpu[nd:]), layer.scale,
                out=out[nd:],
            )
        return out
