"""Our Triton paged backend: store K/V by slot mapping, split-KV decode for the decode
sequences, varlen causal prefill over the paged cache for the rest (chunked prefill and prefix
hits included). Given the layer's rotary embedding (``forward_rotary``), the store kernel also
rotates q and k (``ops/rope_store.py``): one kernel per layer instead of two."""

from __future__ import annotations

import logging
import os

import torch

from phase1_kernels.layers.attention import AttentionBackend

from .paged_common import check_paged

logger = logging.getLogger(__name__)

FUSE_ENV_VAR = "LIGHTVLLM_FUSE_ROPE_STORE"


class TritonPagedBackend(AttentionBackend):
    name = "triton_paged"
    cudagraph_safe = True  # lengths and tables are read from device tensors; grid from max_model_len

    def __init__(self, fuse_rotary: bool | None = None):
        from ..ops import rope_store, triton_paged

        self.kernels = triton_paged
        self.rope_store = rope_store
        if fuse_rotary is None:  # env FUSE_ENV_VAR=0: rotary and store as two kernels (A/B runs)
            fuse_rotary = os.environ.get(FUSE_ENV_VAR, "1") != "0"
        self.fuse_rotary = fuse_rotary

    def fuses_rotary(self, rotary):
        """LLaMA's NeoX rotation over the whole head: rotated inside the K/V store kernel."""
        return self.fuse_rotary and self.rope_store.rotary_fusable(rotary)

    def forward_rotary(self, layer, query, key, value, metadata, positions, rotary):
        cache = check_paged(layer, metadata)
        self.rope_store.rope_store_kvcache(query, key, value, cache, metadata.slot_mapping,
                                           positions, rotary.cos_sin_cache)
        return self._attend(layer, query, cache, metadata)

    def forward(self, layer, query, key, value, metadata):
        cache = check_paged(layer, metadata)
        self.kernels.store_kvcache(key, value, cache, metadata.slot_mapping)
        return self._attend(layer, query, cache, metadata)

    def _attend(self, layer, query, cache, metadata):
        """Decode rows first (split-KV), then the prefill rows over the cache."""
        ops = self.kernels
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
