"""The physical floor of an offline throughput workload (B3): the least time any engine could take
on a device with the given memory bandwidth and peak FLOP/s, for the workload's exact lengths.

B3 (256 requests, prompt and output lengths uniform in [100, 1024], seed 0) runs every request at
once on a large GPU: its prompts are prefilled (compute: ``2 · params · tokens`` FLOPs, plus
causal attention), then one decode step per output token of the longest request, each of which
must read every weight once (the embedding table one row per sequence) and the K/V of every
running sequence's context. The floor adds the prefill FLOPs at the peak and the decode bytes at
the bandwidth (nothing overlapped, nothing re-read, no kernel boundary); an engine's measured
B3 time divided by it is how far the engine is from the device (docs/benchmarks.md).

    python phase3_scheduling/benchmarks/workload_floor.py                      # B3, H200 figures
    python phase3_scheduling/benchmarks/workload_floor.py --bandwidth-gbs 3010 --tflops 989 \
        --measured-s 16.6                                                        # an H100 run
"""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict, dataclass

from phase1_kernels.config import LLAMA_3_1_8B
from phase3_scheduling.benchmark import make_workload

BF16 = 2  # bytes per weight and per K/V element


@dataclass(frozen=True)
class Shape:
    """What the floor needs of a Llama-family model."""

    layers: int
    hidden: int
    intermediate: int
    heads: int
    kv_heads: int
    head_dim: int
    vocab: int
    tied: bool

    @classmethod
    def from_config(cls, cfg: dict) -> "Shape":
        head_dim = cfg.get("head_dim") or cfg["hidden_size"] // cfg["num_attention_heads"]
        return cls(cfg["num_hidden_layers"], cfg["hidden_size"], cfg["intermediate_size"],
                   cfg["num_attention_heads"], cfg["num_key_value_heads"], head_dim,
                   cfg["vocab_size"], bool(cfg.get("tie_word_embeddings")))

    @property
    def layer_matmul_params(self) -> int:
        """qkv, o, gate|up and down of one layer."""
        q, kv = self.heads * self.head_dim, self.kv_heads * self.head_dim
        return self.hidden * (q + 2 * kv) + q * self.hidden + 3 * self.hidden * self.intermediate

    @property
    def step_weight_bytes(self) -> int:
        """What one decode step reads of the weights: every layer's (with its two norms), the
        final norm and the lm_head; the embedding only a row per sequence (left out)."""
        per_layer = self.layer_matmul_params + 2 * self.hidden
        return BF16 * (self.layers * per_layer + self.hidden + self.vocab * self.hidden)

    @property
    def kv_bytes_per_token(self) -> int:
        return self.layers * 2 * self.kv_heads * self.head_dim * BF16


@dataclass
class Floor:
    prefill_s: float
    decode_weights_s: float
    decode_kv_s: float
    decode_steps: int
    output_tokens: int

    @property
    def total_s(self) -> float:
        return self.prefill_s + self.decode_weights_s + self.decode_kv_s

    @property
    def output_tok_s(self) -> float:
        return self.output_tokens / self.total_s


def prefill_flops(shape: Shape, prompt_lens: list[int]) -> float:
    """GEMMs of every prompt token (the lm_head only for each prompt's last token) and causal
    attention (``QKᵀ`` and ``PV``: ``2 · l² · heads · head_dim`` per layer for a prompt of ``l``)."""
    layers = 2 * shape.layer_matmul_params * sum(prompt_lens) * shape.layers
    head = 2 * shape.vocab * shape.hidden * len(prompt_lens)
    attention = sum(2 * n * n * shape.heads * shape.head_dim for n in prompt_lens) * shape.layers
    return layers + head + attention


def workload_floor(shape: Shape, prompt_lens: list[int], output_lens: list[int],
                   bandwidth_gbs: float, tflops: float) -> Floor:
    """Prefill at the peak, then decode step s (1 ≤ s < max output) for every request with more
    than s output tokens: all weights once plus each one's K/V of ``prompt + s`` tokens."""
    steps = max(output_lens) - 1
    kv_tokens = 0
    for s in range(1, steps + 1):
        kv_tokens += sum(p + s for p, o in zip(prompt_lens, output_lens) if o > s)
    bandwidth = bandwidth_gbs * 1e9
    return Floor(prefill_s=prefill_flops(shape, prompt_lens) / (tflops * 1e12),
                 decode_weights_s=steps * shape.step_weight_bytes / bandwidth,
                 decode_kv_s=kv_tokens * shape.kv_bytes_per_token / bandwidth,
                 decode_steps=steps, output_tokens=sum(output_lens))


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--num-prompts", type=int, default=256)
    parser.add_argument("--input-len", type=int, nargs=2, default=[100, 1024])
    parser.add_argument("--output-len", type=int, nargs=2, default=[100, 1024])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--bandwidth-gbs", type=float, default=4300.0,
                        help="device copy bandwidth (H200 ~4,300 GB/s read+write, measured)")
    parser.add_argument("--tflops", type=float, default=989.0, help="dense bf16 peak (H100/H200)")
    parser.add_argument("--measured-s", type=float, default=None,
                        help="an engine's measured time for the workload: printed as a share")
    parser.add_argument("--out", default=None)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    shape = Shape.from_config(LLAMA_3_1_8B)
    work = make_workload(args.num_prompts, tuple(args.input_len), tuple(args.output_len),
                         shape.vocab, args.seed)
    floor = workload_floor(shape, [len(p) for p in work.prompts], work.output_lens,
                           args.bandwidth_gbs, args.tflops)
    result = dict(asdict(floor), total_s=floor.total_s, output_tok_s=floor.output_tok_s,
                  bandwidth_gbs=args.bandwidth_gbs, tflops=args.tflops)
    print(f"floor: prefill {floor.prefill_s:.2f} s at {args.tflops:.0f} TFLOP/s; "
          f"{floor.decode_steps} decode steps: weights {floor.decode_weights_s:.2f} s + "
          f"K/V {floor.decode_kv_s:.2f} s at {args.bandwidth_gbs:.0f} GB/s; total "
          f"{floor.total_s:.2f} s = {floor.output_tok_s:,.0f} output tok/s")
    if args.measured_s:
        result["measured_s"] = args.measured_s
        result["share_of_floor"] = floor.total_s / args.measured_s
        print(f"measured {args.measured_s:.2f} s: {100 * floor.total_s / args.measured_s:.1f} % "
              f"of the floor's speed")
    if args.out:
        with open(args.out, "w") as handle:
            json.dump(result, handle, indent=2)
    return result


if __name__ == "__main__":
    main()
