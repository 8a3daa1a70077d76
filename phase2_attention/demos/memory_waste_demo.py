"""Phase-2 demo: how much KV-cache memory holds real tokens, contiguous reservation vs paging.

    python phase2_attention/demos/memory_waste_demo.py [--capacity 200000] [--block-size 16]

Before vLLM, a serving system reserved one contiguous KV region per request when it was
admitted, because nobody knows in advance how long the answer will be. Three ways to size that
region (the PagedAttention paper's Orca baselines):

- orca_max:    max_model_len tokens for everyone (the safe choice),
- orca_pow2:   the final length rounded up to a power of two (an optimistic guess),
- orca_oracle: exactly the final length (impossible in practice: the output length is unknown),

against paging: a request holds ceil(tokens so far / block_size) blocks and grows one block at a
time. Each request is looked at a random point of its generation, as a running server would see
it. Reserved-but-empty slots are memory no other request can use; the last
column shows what that costs: how many requests fit in the same KV memory at once.
"""

import argparse

from phase2_attention.memory_analysis import DATASETS, report

EXPLAIN = {
    "orca_max": "reserve max_model_len",
    "orca_pow2": "reserve final length -> 2^k",
    "orca_oracle": "reserve exact final length",
    "paged": "blocks for tokens so far",
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--capacity", type=int, default=200_000, help="KV slots (tokens) available")
    parser.add_argument("--block-size", type=int, default=16)
    parser.add_argument("--max-model-len", type=int, default=2048)
    args = parser.parse_args()

    rows = report(args.requests, args.capacity, args.block_size, args.max_model_len)
    print(f"{args.requests} requests per dataset (log-normal lengths with the paper's means), "
          f"max_model_len {args.max_model_len}, block size {args.block_size}, "
          f"KV memory for {args.capacity:,} tokens\n")
    for dataset, (mean_in, mean_out) in DATASETS.items():
        print(f"{dataset}: mean prompt {mean_in} tokens, mean output {mean_out} tokens")
        print(f"  {'scheme':<12} {'policy':<28} {'slots holding real tokens':>26} {'requests that fit':>18}")
        base = next(r["concurrent"] for r in rows if r["dataset"] == dataset and r["scheme"] == "orca_max")
        for r in (r for r in rows if r["dataset"] == dataset):
            bar = "#" * round(20 * r["utilization"])
            print(f"  {r['scheme']:<12} {EXPLAIN[r['scheme']]:<28} {100 * r['utilization']:6.1f}% {bar:<20}"
                  f" {r['concurrent']:>8} ({r['concurrent'] / base:.1f}x)")
        print()
    paged = [r for r in rows if r["scheme"] == "paged"]
    shares = ", ".join(f"{100 * r['utilization']:.0f}% on {r['dataset']}" for r in paged)
    print("Paging wastes at most the unfilled tail of each request's last block "
          f"(< {args.block_size} tokens), so utilization stays near 100% "
          f"({shares}); "
          "the paper reports 20.4-38.2% for the contiguous systems and ~96% for vLLM.")
    print("(alpaca's paged figure is lower only because its requests are short: a 40-token request "
          "still rounds up to whole 16-token blocks; capacity is then not the limit, all requests fit.)")


if __name__ == "__main__":
    main()
