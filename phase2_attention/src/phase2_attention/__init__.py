"""LightvLLM phase 2: attention backends (naive, SDPA, flash-attn, Triton paged, torch paged),
the block pool, KV-cache managers (paged and contiguous), cache sizing and paged attention."""

from . import backends
from .backends import PAGED_BACKENDS, best_paged_backend
from .block_pool import BlockPool, KVCacheBlock, OutOfKVBlocksError, hash_block
from .kv_cache import CacheConfig, allocate_kv_cache, determine_num_blocks
from .kv_cache_manager import ContiguousKVCacheManager, KVCacheManager
from .metadata import PagedAttentionMetadata
from .paged_generate import PagedGenerator

__all__ = [
    "backends", "PAGED_BACKENDS", "best_paged_backend", "BlockPool", "KVCacheBlock",
    "OutOfKVBlocksError", "hash_block", "CacheConfig", "allocate_kv_cache",
    "determine_num_blocks", "ContiguousKVCacheManager", "KVCacheManager",
    "PagedAttentionMetadata", "PagedGenerator",
]
