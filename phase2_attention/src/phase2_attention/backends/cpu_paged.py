"""The CPU paged backend: our C++ kernels store K/V by slot mapping and attend over the block
table directly (decode and chunked prefill in one call, GQA groups sharing each block). The
default on CPU when the extension builds; ``sdpa`` is the fallback."""

from __future__ import annotations

from phase1_kernels.layers.attention import AttentionBackend

from .paged_common import check_paged


class CpuPagedBackend(AttentionBackend):
    name = "cpu_paged"

    def __init__(self):
        from ..ops import cpu_paged

        if not cpu_paged.is_available():
            raise RuntimeError(f"the cpu_paged backend needs the C++ kernels: {cpu_paged.why_unavailable()}")
        self.kernels = cpu_paged

    def forward(self, layer, query, key, value, metadata):
        cache = check_paged(layer, metadata)
        self.kernels.store_kvcache(key, value, cache, metadata.slot_mapping)
        return self.kernels.paged_attention(query, cache, metadata.block_tables, metadata.seq_lens,
                                            metadata.query_start_loc, layer.scale)
