"""How a model splits over tensor-parallel ranks: each rank's shard shapes, parameter bytes,
KV cache bytes per token, and the all-reduce traffic per layer. Computed from the real layers
(each rank's model built on the ``meta`` device with an unconnected TP group), not from a
separate formula. ``python -m phase4_distributed.shard_analysis`` prints the tables of
docs/phase4.md."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from phase1_kernels.config import LLAMA_3_1_8B, ModelConfig
from phase1_kernels.models.llama import LlamaForCausalLM

from .group_coordinator import GroupCoordinator
from .layers.factory import TensorParallelLinearFactory

SMOLLM2_135M = dict(vocab_size=49152, hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
                    num_attention_heads=9, num_key_value_heads=3, head_dim=64,
                    max_position_embeddings=8192, rms_norm_eps=1e-5, rope_theta=100000.0,
                    tie_word_embeddings=True)
"""SmolLM2-135M's shape (the embedded default model)."""

SHAPES = {"qkv": "model.layers.0.self_attn.qkv_proj.weight",
          "o_proj": "model.layers.0.self_attn.o_proj.weight",
          "gate_up": "model.layers.0.mlp.gate_up_proj.weight",
          "down": "model.layers.0.mlp.down_proj.weight",
          "embed": "model.embed_tokens.weight"}


@dataclass
class RankShard:
    """One TP rank of a model (every rank of a TP group holds the same sizes)."""

    tp: int
    num_params: int
    param_bytes: int
    shapes: dict[str, tuple[int, ...]]
    kv_bytes_per_token: int  # K and V of one token, all layers, this rank's kv heads
    all_reduces_per_layer: int  # o_proj and down_proj
    all_reduce_bytes_per_token: int  # one all-reduce's payload per token (hidden x dtype)

    @property
    def ring_bytes_per_token_per_layer(self) -> float:
        """What each rank sends per token per layer in a ring all-reduce: 2 (tp-1)/tp x payload
        for each of the layer's all-reduces."""
        return (self.all_reduces_per_layer * 2 * (self.tp - 1) / self.tp
                * self.all_reduce_bytes_per_token)


def rank_shard(config: ModelConfig, tp: int, dtype: torch.dtype = torch.bfloat16) -> RankShard:
    """TP rank 0's shard of ``config`` (no pipeline split), built on the meta device."""
    factory = TensorParallelLinearFactory(GroupCoordinator.unconnected("tp", 0, tp))
    with torch.device("meta"):
        model = LlamaForCausalLM(config, "naive", factory, kernel_impl="native")
    params = dict(model.named_parameters())
    num_params = sum(p.numel() for p in params.values())
    itemsize = torch.empty((), dtype=dtype).element_size()
    attn = model.attention_layers[0]
    return RankShard(
        tp=tp, num_params=num_params, param_bytes=num_params * itemsize,
        shapes={key: tuple(params[name].shape) for key, name in SHAPES.items()},
        kv_bytes_per_token=2 * attn.num_kv_heads * attn.head_size * itemsize * len(model.attention_layers),
        all_reduces_per_layer=2, all_reduce_bytes_per_token=config.hidden_size * itemsize)


def shard_table(config: ModelConfig, tp_sizes: list[int], dtype: torch.dtype = torch.bfloat16) -> str:
    """A markdown table: one row per TP size, the shapes and bytes one rank holds."""
    head = ("| TP | qkv | o_proj | gate_up | down | embed (= lm_head) | params / rank | "
            "weights / rank | KV / token / rank | all-reduce / token / layer (ring send) |")
    rows = [head, "|" + "---|" * 10]
    for tp in tp_sizes:
        s = rank_shard(config, tp, dtype)
        shape = {k: "x".join(map(str, v)) for k, v in s.shapes.items()}
        rows.append(
            f"| {tp} | {shape['qkv']} | {shape['o_proj']} | {shape['gate_up']} | {shape['down']} | "
            f"{shape['embed']} | {s.num_params:,} | {s.param_bytes / 2**20:,.1f} MiB | "
            f"{s.kv_bytes_per_token / 1024:.1f} KiB | {s.all_reduces_per_layer} x "
            f"{s.all_reduce_bytes_per_token:,} B ({s.ring_bytes_per_token_per_layer:,.0f} B) |")
    return "\n".join(rows)


def main() -> None:
    for name, shape, sizes in (("SmolLM2-135M", SMOLLM2_135M, [1, 3]),
                               ("Llama-3.1-8B", LLAMA_3_1_8B, [1, 2, 4, 8])):
        print(f"\n{name}, bf16:\n")
        print(shard_table(ModelConfig(**shape), sizes))


if __name__ == "__main__":
    main()
