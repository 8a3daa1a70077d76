"""The block pool: owner of every KV-cache block (vLLM v1's design, in small form).

- Blocks have reference counts: a block shared by several requests (a common prompt prefix)
  is freed only when the last one lets go.
- Free blocks wait in an LRU queue (a doubly linked list, O(1) removal from the middle). A freed
  block keeps its contents and its hash, so a later request with the same prefix can take it
  back (a prefix-cache hit) until it is reused for something else (evicted) from the queue head.
- Block 0 is the null block: never handed out; padding in block tables points at it.
- Full blocks are named by a hash chain: ``hash(parent_hash, token_ids)``, so a block's name
  covers the whole prefix up to it. A hit is checked against the stored token ids, so a hash
  collision can never return the wrong K/V.
"""

from __future__ import annotations

import logging
import hashlib
from array import array
from dataclasses import dataclass, field
from typing import Iterable, Sequence

logger = logging.getLogger(__name__)


class OutOfKVBlocksError(RuntimeError):
    """Not enough free KV blocks; the scheduler (phase 3) preempts a request and retries."""


@dataclass(eq=False)
class KVCacheBlock:
    block_id: int
    ref_cnt: int = 0
    block_hash: bytes | None = None
    token_ids: tuple[int, ...] | None = None  # the tokens a full, hashed block holds
    prev_free: "KVCacheBlock | None" = field(default=None, repr=False)
    next_free: "KVCacheBlock | None" = field(default=None, repr=False)

    @property
    def is_null(self) -> bool:
        return self.block_id == 0


def hash_block(parent_hash: bytes | None, token_ids: Sequence[int]) -> bytes:
    """Chained block hash: equal only when the whole prefix up to this block is equal."""
    digest = hashlib.sha256()
    digest.update(parent_hash or b"root")
    digest.update(array("q", token_ids).tobytes())
    return digest.digest()


class FreeBlockQueue:
    """Free blocks in eviction order: the head is evicted first (least recently freed)."""

    def __init__(self, blocks: Iterable[KVCacheBlock]):
        self._head = KVCacheBlock(-1)  # sentinels
        self._tail = KVCacheBlock(-1)
        self._head.next_free, self._tail.prev_free = self._tail, self._head
        self.num_free = 0
        for block in blocks:
            self.append(block)

    def append(self, block: KVCacheBlock) -> None:
        last = self._tail.prev_free
        assert last is not None  # the sentinels stay linked: at worst this is the head
        last.next_free, block.prev_free = block, last
        block.next_free, self._tail.prev_free = self._tail, block
        self.num_free += 1

    def remove(self, block: KVCacheBlock) -> None:
        if block.prev_free is None or block.next_free is None:
            raise RuntimeError(f"block {block.block_id} is not in the free queue")
        block.prev_free.next_free, block.next_free.prev_free = block.next_free, block.prev_free
        block.prev_free = block.next_free = None
        self.num_free -= 1

    def popleft(self) -> KVCacheBlock:
        if self.num_free == 0:
            raise OutOfKVBlocksError("no free KV blocks")
        block = self._head.next_free
        assert block is not None  # num_free > 0: a real block follows the head sentinel
        self.remove(block)
        return block

    def __iter__(self):
        block = self._head.next_free
        while block is not self._tail:
            assert block is not None  # linked up to the tail sentinel
            yield block
            block = block.next_free


class BlockPool:
    def __init__(self, num_blocks: int, enable_caching: bool = True):
        if num_blocks < 2:
            raise ValueError(f"the pool needs at least 2 blocks (one is the null block), got {num_blocks}")
        self.num_blocks = num_blocks
        self.enable_caching = enable_caching
        self.blocks = [KVCacheBlock(i) for i in range(num_blocks)]
        self.null_block = self.blocks[0]
        self.null_block.ref_cnt = 1  # never freed, never handed out
        self.free_queue = FreeBlockQueue(self.blocks[1:])
        self.cached: dict[bytes, KVCacheBlock] = {}
        self.stats = {"hits": 0, "queries": 0, "evictions": 0}

    @property
    def num_free_blocks(self) -> int:
        return self.free_queue.num_free

    @property
    def usage(self) -> float:
        """Fraction of allocatable blocks in use (the null block excluded)."""
        return 1.0 - self.num_free_blocks / (self.num_blocks - 1)

    def get_new_blocks(self, n: int) -> list[KVCacheBlock]:
        """``n`` blocks with ref count 1, evicting the least recently freed cached ones."""
        if n > self.num_free_blocks:
            raise OutOfKVBlocksError(
                f"need {n} KV blocks, only {self.num_free_blocks} of {self.num_blocks - 1} are free"
            )
        out = []
        for _ in range(n):
            block = self.free_queue.popleft()
            self._evict(block)
            block.ref_cnt = 1
            out.append(block)
        return out

    def _evict(self, block: KVCacheBlock) -> None:
        if block.block_hash is not None:
            if self.cached.get(block.block_hash) is block:
                del self.cached[block.block_hash]
            block.block_hash = block.token_ids = None
            self.stats["evictions"] += 1

    def touch(self, blocks: Iterable[KVCacheBlock]) -> None:
        """Take a reference on cache-hit blocks (reviving them from the free queue if idle)."""
        for block in blocks:
            if block.ref_cnt == 0:
                self.free_queue.remove(block)
            block.ref_cnt += 1

    def free_blocks(self, blocks: Iterable[KVCacheBlock]) -> None:
        """Drop one reference each; blocks reaching zero join the queue tail in the given order
        (callers pass a request's blocks last-first, so its prefix is evicted last)."""
        for block in blocks:
            if block.is_null:
                continue
            if block.ref_cnt <= 0:
                raise RuntimeError(f"block {block.block_id} freed more often than allocated")
            block.ref_cnt -= 1
            if block.ref_cnt == 0:
                if not self.enable_caching:
                    self._evict(block)
                self.free_queue.append(block)

    def lookup(self, block_hash: bytes, token_ids: Sequence[int]) -> KVCacheBlock | None:
        """The cached full block for this hash, if its stored tokens really are ``token_ids``."""
        if not self.enable_caching:
            return None
        self.stats["queries"] += 1
        block = self.cached.get(block_hash)
        if block is None or block.token_ids != tuple(token_ids):
            return None
        self.stats["hits"] += 1
        return block

    def cache_full_block(self, block: KVCacheBlock, block_hash: bytes, token_ids: Sequence[int]) -> None:
        """Name a block that just became full, so later requests can share it."""
        if not self.enable_caching or block.block_hash is not None:
            return
        block.block_hash, block.token_ids = block_hash, tuple(token_ids)
        self.cached.setdefault(block_hash, block)
