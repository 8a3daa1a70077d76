import random

import pytest

from phase2_attention.block_pool import BlockPool, OutOfKVBlocksError, hash_block


def test_null_block_is_never_handed_out():
    pool = BlockPool(5)
    blocks = pool.get_new_blocks(4)
    assert sorted(b.block_id for b in blocks) == [1, 2, 3, 4]
    with pytest.raises(OutOfKVBlocksError, match="need 1 KV blocks, only 0 of 4"):
        pool.get_new_blocks(1)
    pool.free_blocks([pool.null_block])  # ignored
    assert pool.null_block.ref_cnt == 1


def test_freed_blocks_are_evicted_least_recently_freed_first():
    pool = BlockPool(6, enable_caching=True)
    a, b, c = pool.get_new_blocks(3)
    pool.free_blocks([c, a])
    pool.free_blocks([b])
    order = [blk.block_id for blk in pool.free_queue]
    assert order == [4, 5, c.block_id, a.block_id, b.block_id]
    assert [x.block_id for x in pool.get_new_blocks(3)] == [4, 5, c.block_id]


def test_ref_counts_share_a_block_until_the_last_user_frees_it():
    pool = BlockPool(3)
    (block,) = pool.get_new_blocks(1)
    pool.touch([block])
    assert block.ref_cnt == 2
    pool.free_blocks([block])
    assert pool.num_free_blocks == 1
    pool.free_blocks([block])
    assert pool.num_free_blocks == 2
    with pytest.raises(RuntimeError, match="freed more often"):
        pool.free_blocks([block])


def test_cached_block_revives_from_the_free_queue_and_is_evicted_on_reuse():
    pool = BlockPool(3)
    (block,) = pool.get_new_blocks(1)
    h = hash_block(None, [1, 2])
    pool.cache_full_block(block, h, [1, 2])
    pool.free_blocks([block])
    assert pool.lookup(h, [1, 2]) is block
    pool.touch([block])  # a hit takes it back out of the free queue
    assert pool.num_free_blocks == 1 and block.ref_cnt == 1
    pool.free_blocks([block])
    pool.get_new_blocks(2)  # reuse evicts it
    assert pool.lookup(h, [1, 2]) is None and pool.stats["evictions"] == 1


def test_hash_chain_covers_the_whole_prefix_and_hits_check_tokens():
    a = hash_block(None, [1, 2, 3])
    assert hash_block(a, [4]) != hash_block(hash_block(None, [9, 9, 9]), [4])
    pool = BlockPool(3)
    (block,) = pool.get_new_blocks(1)
    pool.cache_full_block(block, b"collision", [1, 2])
    assert pool.lookup(b"collision", [1, 3]) is None  # same hash, other tokens: no hit
    assert pool.lookup(b"collision", [1, 2]) is block


def test_random_operations_never_hand_out_a_block_twice():
    rng = random.Random(0)
    pool = BlockPool(40)
    owners: dict[int, list] = {}
    for step in range(2000):
        if owners and (rng.random() < 0.45 or pool.num_free_blocks == 0):
            key = rng.choice(list(owners))
            pool.free_blocks(reversed(owners.pop(key)))
        else:
            n = rng.randint(1, min(5, pool.num_free_blocks))
            owners[step] = pool.get_new_blocks(n)
        held = [b.block_id for blocks in owners.values() for b in blocks]
        assert len(held) == len(set(held)) and 0 not in held
        assert pool.num_free_blocks + len(held) == 39
