"""KV-cache managers: which blocks hold which request's tokens.

``KVCacheManager`` pages: a request holds ``ceil(tokens / block_size)`` blocks, taken one at a
time as it grows, shared with other requests through prefix caching.
``ContiguousKVCacheManager`` is the pre-vLLM way, kept for comparison: every request reserves
``max_model_len`` tokens of consecutive blocks when admitted, used or not.
Both expose the same interface, so the same model, kernels and (phase 3) scheduler run on
either and the memory they waste can be measured side by side.
"""

from __future__ import annotations

import logging
from typing import Sequence

from .block_pool import BlockPool, KVCacheBlock, OutOfKVBlocksError, hash_block

logger = logging.getLogger(__name__)


def cdiv(a: int, b: int) -> int:
    return -(-a // b)


class KVCacheManager:
    def __init__(self, num_blocks: int, block_size: int = 16, enable_caching: bool = True):
        if block_size < 1 or block_size & (block_size - 1):
            raise ValueError(f"block_size must be a power of two, got {block_size}")
        self.block_size = block_size
        self.pool = BlockPool(num_blocks, enable_caching)
        self.req_blocks: dict[str, list[KVCacheBlock]] = {}
        self.req_hashes: dict[str, list[bytes]] = {}

    # ---- queries -------------------------------------------------------------------------
    @property
    def num_free_blocks(self) -> int:
        return self.pool.num_free_blocks

    @property
    def usage(self) -> float:
        return self.pool.usage

    @property
    def all_blocks_free(self) -> bool:
        """True when no request holds a block (the leak check after every test)."""
        return self.num_free_blocks == self.pool.num_blocks - 1

    def block_ids(self, request_id: str, start: int = 0) -> list[int]:
        return [b.block_id for b in self.req_blocks.get(request_id, [])[start:]]

    def get_computed_blocks(self, token_ids: Sequence[int]) -> tuple[list[KVCacheBlock], int]:
        """Longest prefix of ``token_ids`` already in cached full blocks, and its token count.

        At least the last token is always left to compute (its logits are needed), so a prompt
        that is entirely cached still runs one token.
        """
        hits: list[KVCacheBlock] = []
        parent = None
        bs = self.block_size
        for i in range((len(token_ids) - 1) // bs):
            chunk = token_ids[i * bs : (i + 1) * bs]
            parent = hash_block(parent, chunk)
            block = self.pool.lookup(parent, chunk)
            if block is None:
                break
            hits.append(block)
        return hits, len(hits) * bs

    def blocks_needed(self, request_id: str, num_tokens: int,
                      computed_blocks: Sequence[KVCacheBlock] = ()) -> int:
        """Free blocks that ``allocate_slots`` would consume (revived cache hits included)."""
        held = len(self.req_blocks.get(request_id, ())) + len(computed_blocks)
        revived = sum(1 for b in computed_blocks if b.ref_cnt == 0)
        return max(0, cdiv(num_tokens, self.block_size) - held) + revived

    def can_allocate(self, request_id: str, num_tokens: int,
                     computed_blocks: Sequence[KVCacheBlock] = ()) -> bool:
        return self.blocks_needed(request_id, num_tokens, computed_blocks) <= self.num_free_blocks

    # ---- updates -------------------------------------------------------------------------
    def allocate_slots(self, request_id: str, num_tokens: int,
                       computed_blocks: Sequence[KVCacheBlock] = ()) -> list[KVCacheBlock]:
        """Make ``request_id`` hold enough blocks for ``num_tokens`` tokens in total.

        ``computed_blocks`` (from ``get_computed_blocks``, first call only) are shared, not
        copied. Raises ``OutOfKVBlocksError`` and changes nothing when the pool is short.
        """
        needed = self.blocks_needed(request_id, num_tokens, computed_blocks)
        if needed == 0 and not computed_blocks:
            return []  # the common decode step: the last block still has room
        if needed > self.num_free_blocks:
            raise OutOfKVBlocksError(
                f"request {request_id!r} needs {needed} more KV blocks for {num_tokens} tokens, "
                f"{self.num_free_blocks} free"
            )
        blocks = self.req_blocks.setdefault(request_id, [])
        if computed_blocks:
            if blocks:
                raise ValueError("cached prefix blocks can only be attached to a new request")
            self.pool.touch(computed_blocks)
            blocks.extend(computed_blocks)
            hashes: list[bytes] = []
            for block in computed_blocks:
                assert block.block_hash is not None  # cache hits are full, hashed blocks
                hashes.append(block.block_hash)
            self.req_hashes[request_id] = hashes
        new = self.pool.get_new_blocks(max(0, cdiv(num_tokens, self.block_size) - len(blocks)))
        blocks.extend(new)
        return new

    def cache_blocks(self, request_id: str, token_ids: Sequence[int], num_computed_tokens: int) -> None:
        """Publish the request's blocks that are now full of computed K/V for prefix sharing."""
        blocks = self.req_blocks.get(request_id, [])
        hashes = self.req_hashes.setdefault(request_id, [])
        bs = self.block_size
        for i in range(len(hashes), min(num_computed_tokens // bs, len(blocks))):
            chunk = token_ids[i * bs : (i + 1) * bs]
            block_hash = hash_block(hashes[-1] if hashes else None, chunk)
            self.pool.cache_full_block(blocks[i], block_hash, chunk)
            hashes.append(block_hash)

    def free(self, request_id: str) -> None:
        """Release the request's blocks (last block first, so shared prefixes are evicted last)."""
        blocks = self.req_blocks.pop(request_id, [])
        self.req_hashes.pop(request_id, None)
        self.pool.free_blocks(reversed(blocks))


class ContiguousKVCacheManager:
    """Static reservation: each admitted request takes a region of ``max_model_len`` tokens
    (consecutive blocks) whatever its real length. No sharing, no growth beyond the region."""

    def __init__(self, num_blocks: int, block_size: int, max_model_len: int):
        self.block_size = block_size
        self.max_model_len = max_model_len
        self.blocks_per_region = cdiv(max_model_len, block_size)
        self.num_regions = (num_blocks - 1) // self.blocks_per_region
        if self.num_regions < 1:
            raise ValueError(
                f"{num_blocks - 1} blocks of {block_size} cannot hold one {max_model_len}-token region"
            )
        self.num_blocks = num_blocks
        self.free_regions = list(range(self.num_regions))
        self.req_region: dict[str, int] = {}

    @property
    def num_free_blocks(self) -> int:
        return len(self.free_regions) * self.blocks_per_region

    @property
    def usage(self) -> float:
        return 1.0 - len(self.free_regions) / self.num_regions

    def block_ids(self, request_id: str, start: int = 0) -> list[int]:
        first = 1 + self.req_region[request_id] * self.blocks_per_region
        return list(range(first + start, first + self.blocks_per_region))

    def get_computed_blocks(self, token_ids: Sequence[int]) -> tuple[list, int]:
        return [], 0

    def can_allocate(self, request_id: str, num_tokens: int, computed_blocks=()) -> bool:
        if num_tokens > self.max_model_len:
            return False
        return request_id in self.req_region or bool(self.free_regions)

    def allocate_slots(self, request_id: str, num_tokens: int, computed_blocks=()) -> list:
        if num_tokens > self.max_model_len:
            raise OutOfKVBlocksError(
                f"request {request_id!r} needs {num_tokens} tokens, its region holds {self.max_model_len}"
            )
        if request_id not in self.req_region:
            if not self.free_regions:
                raise OutOfKVBlocksError(f"all {self.num_regions} contiguous regions are taken")
            self.req_region[request_id] = self.free_regions.pop(0)
        return []

    def cache_blocks(self, request_id: str, token_ids: Sequence[int], num_computed_tokens: int) -> None:
        return None

    def free(self, request_id: str) -> None:
        region = self.req_region.pop(request_id, None)
        if region is not None:
            self.free_regions.append(region)
