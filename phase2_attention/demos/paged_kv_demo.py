"""Phase-2 demo: the paged KV cache, step by step, then a real model on top of it.

    python phase2_attention/demos/paged_kv_demo.py [--skip-model]

Part 1 drives a ``KVCacheManager`` by hand (no model): requests get blocks as they grow, give
them back when they finish, and two requests with the same prompt prefix share blocks (the ref
counts show it). Part 2 runs SmolLM2 through ``PagedGenerator`` with the ``torch_paged`` backend
and checks that its greedy tokens equal phase 1's naive, contiguous-cache path.
"""

import argparse
import time

from phase2_attention import KVCacheManager

BLOCK_SIZE = 4  # tiny, so block tables are short enough to read


def show(manager: KVCacheManager, title: str) -> None:
    print(f"-- {title}")
    for rid, blocks in manager.req_blocks.items():
        table = ", ".join(f"{b.block_id}(ref {b.ref_cnt})" for b in blocks)
        print(f"   {rid:<8} block table [{table}]")
    free = [b.block_id for b in manager.pool.free_queue]
    cached = sorted(b.block_id for b in manager.pool.cached.values())
    print(f"   free queue (evicted from the left): {free}")
    print(f"   cached full blocks (prefix cache):  {cached}   usage {100 * manager.usage:.0f}%\n")


def part1_block_bookkeeping() -> None:
    print("=" * 78)
    print(f"Part 1: a KVCacheManager with 12 blocks of {BLOCK_SIZE} tokens (block 0 = null block)")
    print("=" * 78)
    kv = KVCacheManager(num_blocks=12, block_size=BLOCK_SIZE)
    show(kv, "empty pool")

    prompt_a = list(range(100, 110))  # 10 tokens -> 3 blocks (the last one 2/4 full)
    prompt_b = list(range(200, 203))  # 3 tokens -> 1 block
    kv.allocate_slots("A", len(prompt_a))
    kv.allocate_slots("B", len(prompt_b))
    kv.cache_blocks("A", prompt_a, len(prompt_a))  # after prefill: A's 2 full blocks get hashes
    show(kv, "A (10 tokens) and B (3 tokens) admitted: ceil(tokens / 4) blocks each")

    tokens_b = prompt_b + [7, 8]
    kv.allocate_slots("B", len(tokens_b))
    show(kv, "B decoded 2 tokens: 5 tokens no longer fit one block, so it takes one more")

    kv.free("B")
    show(kv, "B finished: its blocks go to the tail of the free queue (last block first)")

    prompt_c = prompt_a[:8] + [555, 556, 557]  # same first 8 tokens as A, then different
    hits, num_cached = kv.get_computed_blocks(prompt_c)
    print(f"C's prompt starts with A's first 8 tokens: prefix-cache lookup finds blocks "
          f"{[b.block_id for b in hits]} = {num_cached} tokens already computed")
    kv.allocate_slots("C", len(prompt_c), hits)
    show(kv, "C admitted: shares A's two full blocks (ref 2), gets one new block of its own")

    kv.free("A")
    show(kv, "A finished: the shared blocks stay (C still holds them, ref 1)")
    kv.free("C")
    show(kv, "C finished: every block is free again; hashed blocks wait for a later prefix hit")


def part2_model(max_new_tokens: int) -> None:
    from phase1_kernels import LightvLLM
    from phase2_attention import CacheConfig, PagedGenerator

    print("=" * 78)
    print("Part 2: SmolLM2 on the paged cache (torch_paged) vs phase 1's naive contiguous cache")
    print("=" * 78)
    start = time.perf_counter()
    naive = LightvLLM.from_pretrained(device="cpu")  # attention backend "naive"
    paged_llm = LightvLLM.from_pretrained(device="cpu", attn_backend="torch_paged")
    tok = naive.tokenizer
    print(f"loaded SmolLM2 twice in {time.perf_counter() - start:.1f}s "
          f"(backends: {naive.model.attn_backend.name}, {paged_llm.model.attn_backend.name})")

    texts = ["The capital of France is", "Once upon a time, in a small village by the sea,", "1, 2, 3,"]
    prompts = [tok.encode(t) for t in texts]
    gen = PagedGenerator(paged_llm, CacheConfig(num_blocks=32, block_size=16))
    shape = tuple(paged_llm.model.attention_layers[0].kv_cache.shape)
    print(f"paged KV cache per layer: {shape} = [K/V, num_blocks, block_size, kv_heads, head_dim]\n")

    start = time.perf_counter()
    expected = naive.generate(prompts, max_new_tokens=max_new_tokens, stop_token_ids=[])
    t_naive = time.perf_counter() - start
    start = time.perf_counter()
    got = gen.generate(prompts, max_new_tokens=max_new_tokens)
    t_paged = time.perf_counter() - start
    for text, e, g in zip(texts, expected, got):
        mark = "identical" if e == g else "DIFFERENT"
        print(f"{text!r} -> {tok.decode(g)!r}\n   paged tokens {g[:8]}... {mark} to naive")
    print(f"\nnaive {t_naive:.1f}s, paged {t_paged:.1f}s for {len(prompts)} x {max_new_tokens} tokens; "
          f"free blocks after generate: {gen.manager.num_free_blocks}/{gen.num_blocks - 1}")
    if got != expected:
        raise SystemExit("paged and naive outputs differ")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--skip-model", action="store_true", help="only the block bookkeeping")
    parser.add_argument("--max-new-tokens", type=int, default=8)
    args = parser.parse_args()
    part1_block_bookkeeping()
    if not args.skip_model:
        part2_model(args.max_new_tokens)


if __name__ == "__main__":
    main()
