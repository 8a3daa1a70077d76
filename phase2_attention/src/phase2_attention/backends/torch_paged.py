"""The torch-native paged backend: store by slot mapping, gather blocks through the block table,
then phase 1's reference attention. The CPU path and the oracle the fast backends are tested
against."""

from __future__ import annotations

import logging
import torch

from phase1_kernels.layers.attention import AttentionBackend, causal_attention

from .paged_common import check_paged, gather_kv, store_kv

logger = logging.getLogger(__name__)


class TorchPagedBackend(AttentionBackend):
    name = "torch_paged"

    def forward(self, layer, query, key, value, metadata):
        cache = check_paged(layer, metadata)
        store_kv(key, value, cache, metadata.slot_mapping)
        out = torch.empty_like(query)
        start = 0
        for i, (q_len, s_len) in enumerate(zip(metadata.query_lens_cpu, metadata.seq_lens_cpu)):
            if q_len:
                keys, values = gather_kv(cache, metadata.block_tables[i], s_len)
                out[start : start + q_len] = causal_attention(
                    query[start : start + q_len], keys, values, layer.scale
                )
            start += q_len
        return out
