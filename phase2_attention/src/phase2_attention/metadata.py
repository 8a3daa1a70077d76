"""Attention metadata for a paged KV cache: phase 1's varlen batch plus where each token's K/V
lives (``slot_mapping``) and where each sequence's history lives (``block_tables``)."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Sequence

import torch

from phase1_kernels.layers.attention import AttentionMetadata

logger = logging.getLogger(__name__)


@dataclass
class PagedAttentionMetadata(AttentionMetadata):
    """One flattened batch over a paged cache.

    Decode sequences (exactly one new token on top of cached context) come first:
    ``num_decodes`` of them, then the prefill sequences (any query length, with or without
    cached context: chunked prefill and prefix-cache hits are the same case).

    ``slot_mapping[t]`` is the cache slot (``block_id * block_size + offset``) token ``t``'s K/V
    is written to, ``-1`` to skip it. ``block_tables[i, j]`` is the id of sequence ``i``'s
    ``j``-th block, padded with 0 (the reserved null block).
    """

    slot_mapping: torch.Tensor | None = None  # [T] int64
    block_tables: torch.Tensor | None = None  # [B, max_blocks] int32
    block_size: int = 16
    num_decodes: int = 0

    @property
    def num_decode_tokens(self) -> int:
        return self.num_decodes

    @property
    def num_prefills(self) -> int:
        return self.num_seqs - self.num_decodes

    @property
    def num_prefill_tokens(self) -> int:
        return self.num_tokens - self.num_decodes

    @classmethod
    def build_paged(
        cls,
        query_lens: Sequence[int],
        seq_lens: Sequence[int],
        block_tables: Sequence[Sequence[int]],
        block_size: int,
        device: torch.device | str = "cpu",
    ) -> "PagedAttentionMetadata":
        """Metadata for sequences whose blocks are listed in ``block_tables``; every new token
        gets the slot of its position. Decodes must come first."""
        base = AttentionMetadata.build(list(query_lens), list(seq_lens), device=device)
        num_decodes = 0  # the leading run of one-token-on-top-of-context sequences
        while num_decodes < len(query_lens) and query_lens[num_decodes] == 1 \
                and seq_lens[num_decodes] > 1:
            num_decodes += 1
        slots: list[int] = []
        for q, s, table in zip(query_lens, seq_lens, block_tables):
            if (s + block_size - 1) // block_size > len(table):
                raise ValueError(f"a sequence of {s} tokens needs more than its {len(table)} blocks")
            for pos in range(s - q, s):
                slots.append(table[pos // block_size] * block_size + pos % block_size)
        width = max((len(t) for t in block_tables), default=0)
        padded = [list(t) + [0] * (width - len(t)) for t in block_tables]
        return cls(
            query_start_loc=base.query_start_loc,
            seq_lens=base.seq_lens,
            query_lens_cpu=base.query_lens_cpu,
            seq_lens_cpu=base.seq_lens_cpu,
            slot_mapping=torch.tensor(slots, dtype=torch.int64, device=device),
            block_tables=torch.tensor(padded, dtype=torch.int32, device=device).reshape(len(padded), width),
            block_size=block_size,
            num_decodes=num_decodes,
        )
