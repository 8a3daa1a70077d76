"""Share of reserved KV memory holding real tokens, contiguous reservation vs paging.

    python phase2_attention/benchmarks/memory_efficiency.py [--capacity 200000] [--block-size 16]

Replays the PagedAttention paper's Figure 2 comparison (see phase2_attention.memory_analysis).
"""

import argparse

from phase2_attention.memory_analysis import report
from shared.bench import markdown_table


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--capacity", type=int, default=200_000, help="KV slots (tokens) available")
    parser.add_argument("--block-size", type=int, default=16)
    parser.add_argument("--max-model-len", type=int, default=2048)
    args = parser.parse_args()
    rows = report(args.requests, args.capacity, args.block_size, args.max_model_len)
    base = {r["dataset"]: r["concurrent"] for r in rows if r["scheme"] == "orca_max"}
    print(f"{args.requests} requests per dataset, max_model_len {args.max_model_len}, "
          f"block size {args.block_size}, KV capacity {args.capacity:,} tokens\n")
    print(markdown_table(
        ["dataset", "scheme", "KV slots holding real tokens", "concurrent requests that fit", "vs orca_max"],
        [[r["dataset"], r["scheme"], f"{100 * r['utilization']:.1f}%", r["concurrent"],
          f"{r['concurrent'] / base[r['dataset']]:.1f}x"] for r in rows],
    ))


if __name__ == "__main__":
    main()
