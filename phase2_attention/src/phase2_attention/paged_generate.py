"""Greedy/temperature generation over a paged KV cache, batch by batch (phase 2's harness).

It does by hand what phase 3's scheduler automates: look up cached prefix blocks, allocate
blocks as sequences grow, build one flattened batch per step (decodes first), publish full
blocks for prefix sharing, free everything at the end. Optional chunked prefill splits long
prompts into chunks whose attention reads the earlier chunks from the cache.
"""

from __future__ import annotations

import logging
from typing import Sequence

import torch

from phase1_kernels import LightvLLM

from .kv_cache import CacheConfig, allocate_kv_cache, determine_num_blocks
from .kv_cache_manager import ContiguousKVCacheManager, KVCacheManager
from .metadata import PagedAttentionMetadata

logger = logging.getLogger(__name__)


class PagedGenerator:
    def __init__(self, llm: LightvLLM, cache_config: CacheConfig | None = None,
                 contiguous_max_len: int | None = None):
        """``llm`` must have been built with a paged attention backend. ``contiguous_max_len``
        switches to the static-reservation manager (for comparison)."""
        self.llm = llm
        self.model = llm.model
        self.cache_config = cache_config or CacheConfig()
        self.block_size = self.cache_config.block_size
        self.num_blocks = determine_num_blocks(self.model, self.cache_config)
        allocate_kv_cache(self.model, self.num_blocks, self.block_size)
        self.manager: KVCacheManager | ContiguousKVCacheManager
        if contiguous_max_len:
            self.manager = ContiguousKVCacheManager(self.num_blocks, self.block_size, contiguous_max_len)
        else:
            self.manager = KVCacheManager(self.num_blocks, self.block_size,
                                          self.cache_config.enable_prefix_caching)
        self._next_id = 0

    @torch.inference_mode()
    def generate(self, prompts: Sequence[Sequence[int]], max_new_tokens: int = 32,
                 prefill_chunk: int | None = None, stop_token_ids: Sequence[int] = ()) -> list[list[int]]:
        """Greedy continuation of each prompt; every block is back in the pool afterwards."""
        device = self.llm.device
        ids = [f"r{self._next_id + i}" for i in range(len(prompts))]
        self._next_id += len(prompts)
        tokens = [list(p) for p in prompts]
        done = [0] * len(prompts)  # tokens whose K/V is in the cache
        outputs: list[list[int]] = [[] for _ in prompts]
        try:
            for i, rid in enumerate(ids):
                hits, cached = self.manager.get_computed_blocks(tokens[i])
                self.manager.allocate_slots(rid, len(tokens[i]), hits)
                done[i] = cached
            active = list(range(len(prompts)))
            while active:
                # decodes (one token on top of context) first, then prompt chunks
                decodes = [i for i in active if len(tokens[i]) - done[i] == 1 and done[i] > 0]
                prefills = [i for i in active if i not in decodes]
                order = decodes + prefills
                q_lens = []
                for i in order:
                    todo = len(tokens[i]) - done[i]
                    q_lens.append(min(todo, prefill_chunk) if prefill_chunk and i in prefills else todo)
                for i, q in zip(order, q_lens):
                    self.manager.allocate_slots(ids[i], done[i] + q)
                seq_lens = [done[i] + q for i, q in zip(order, q_lens)]
                metadata = PagedAttentionMetadata.build_paged(
                    q_lens, seq_lens, [self.manager.block_ids(ids[i]) for i in order],
                    self.block_size, device)
                flat = [t for i, q in zip(order, q_lens) for t in tokens[i][done[i]: done[i] + q]]
                positions = [p for i, q in zip(order, q_lens) for p in range(done[i], done[i] + q)]
                hidden = self.model(torch.tensor(flat, device=device),
                                    torch.tensor(positions, device=device), metadata)
                last = metadata.query_start_loc[1:].long() - 1
                next_tokens = self.model.compute_logits(hidden[last]).argmax(-1).tolist()
                for i, q, token in zip(order, q_lens, next_tokens):
                    done[i] += q
                    self.manager.cache_blocks(ids[i], tokens[i], done[i])
                    if done[i] < len(tokens[i]):
                        continue  # mid-prompt chunk: its sample is meaningless
                    outputs[i].append(token)
                    tokens[i].append(token)
                    if len(outputs[i]) >= max_new_tokens or token in stop_token_ids:
                        active.remove(i)
                        self.manager.free(ids[i])
            return outputs
        finally:
            for rid in ids:
                self.manager.free(rid)
