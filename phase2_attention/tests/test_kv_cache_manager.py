import pytest

from phase2_attention import ContiguousKVCacheManager, KVCacheManager, OutOfKVBlocksError


def test_allocation_grows_block_by_block_and_free_restores_the_pool():
    m = KVCacheManager(num_blocks=10, block_size=4)
    m.allocate_slots("a", 5)
    assert len(m.block_ids("a")) == 2
    m.allocate_slots("a", 8)
    assert len(m.block_ids("a")) == 2
    m.allocate_slots("a", 9)
    assert len(m.block_ids("a")) == 3 and m.num_free_blocks == 6
    m.free("a")
    assert m.num_free_blocks == 9


def test_out_of_blocks_raises_and_changes_nothing():
    m = KVCacheManager(num_blocks=4, block_size=4)
    m.allocate_slots("a", 8)
    with pytest.raises(OutOfKVBlocksError, match="needs 2 more KV blocks for 8 tokens, 1 free"):
        m.allocate_slots("b", 8)
    assert m.block_ids("b") == [] and m.num_free_blocks == 1
    assert not m.can_allocate("b", 8) and m.can_allocate("b", 4)


def test_prefix_hits_share_blocks_and_leave_the_last_token_to_compute():
    m = KVCacheManager(num_blocks=20, block_size=4)
    prompt = list(range(12))
    m.allocate_slots("a", 12)
    m.cache_blocks("a", prompt, 12)
    hits, n = m.get_computed_blocks(prompt)
    assert n == 8 and [b.block_id for b in hits] == m.block_ids("a")[:2]  # not the last block
    longer = prompt + [99, 98]
    hits, n = m.get_computed_blocks(longer)
    assert n == 12
    m.allocate_slots("b", len(longer), hits)
    assert m.block_ids("b")[:3] == m.block_ids("a")
    assert all(b.ref_cnt == 2 for b in hits)
    m.free("a")
    m.free("b")
    assert m.num_free_blocks == 19
    hits, n = m.get_computed_blocks(longer)  # freed blocks keep their contents until reused
    assert n == 12


def test_different_prefix_does_not_hit():
    m = KVCacheManager(num_blocks=20, block_size=4)
    m.allocate_slots("a", 8)
    m.cache_blocks("a", list(range(8)), 8)
    assert m.get_computed_blocks([0, 1, 2, 3, 9, 9, 9, 9, 9])[1] == 4
    assert m.get_computed_blocks([5, 1, 2, 3, 4, 5, 6, 7, 8])[1] == 0


def test_caching_off_never_hits():
    m = KVCacheManager(num_blocks=20, block_size=4, enable_caching=False)
    m.allocate_slots("a", 8)
    m.cache_blocks("a", list(range(8)), 8)
    assert m.get_computed_blocks(list(range(9))) == ([], 0)


def test_contiguous_manager_reserves_max_len_per_request():
    m = ContiguousKVCacheManager(num_blocks=1 + 3 * 8, block_size=4, max_model_len=32)
    for rid in "abc":
        m.allocate_slots(rid, 3)
    assert m.block_ids("b") == list(range(9, 17))
    with pytest.raises(OutOfKVBlocksError, match="all 3 contiguous regions"):
        m.allocate_slots("d", 1)
    with pytest.raises(OutOfKVBlocksError, match="region holds 32"):
        m.allocate_slots("a", 33)
    m.free("a")
    m.allocate_slots("d", 1)
    assert m.usage == 1.0
