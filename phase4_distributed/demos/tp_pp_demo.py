"""Tensor and pipeline parallelism on the CPU with a tiny random checkpoint (2 layers, hidden 64,
4 heads, 2 kv heads): TP=2 and PP=2 generation through the ``mp`` executor against TP=1 (the
same greedy tokens), each rank's shard shapes, and the collectives one forward counts.

    python phase4_distributed/demos/tp_pp_demo.py
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

from phase3_scheduling import LLM, SamplingParams
from phase4_distributed.testing import run_layouts
from shared.fixtures import write_random_llama

PROMPTS = [[1, 2, 3, 4, 5, 6, 7], [9, 8, 7]]
GREEDY = SamplingParams(temperature=0, max_tokens=8, ignore_eos=True)
SHOWN = ("model.embed_tokens.weight", "model.layers.0.self_attn.qkv_proj.weight",
         "model.layers.0.self_attn.o_proj.weight", "model.layers.0.mlp.gate_up_proj.weight",
         "model.layers.0.mlp.down_proj.weight", "model.layers.1.mlp.down_proj.weight", "lm_head.weight")


def generate(model_dir: str, tp: int, pp: int) -> list[list[int]]:
    backend = "uni" if tp * pp == 1 else "mp"
    llm = LLM(model_dir, tensor_parallel_size=tp, pipeline_parallel_size=pp,
              distributed_executor_backend=backend, kv_cache_gib=0.01)
    try:
        return [o.outputs[0].token_ids for o in llm.generate(PROMPTS, GREEDY, use_tqdm=False)]
    finally:
        llm.engine.shutdown()


def print_generation(model_dir: str) -> None:
    expected = generate(model_dir, 1, 1)
    print(f"TP=1 (one process): {expected}")
    for tp, pp in ((2, 1), (1, 2)):
        got = generate(model_dir, tp, pp)
        print(f"TP={tp} PP={pp} ({tp * pp} worker processes): {got}  same: {got == expected}")
        if got != expected:
            sys.exit(f"TP={tp} PP={pp} generated other tokens than TP=1")


def print_ranks(model_dir: str, out: Path) -> None:
    results = run_layouts({"tp2": (2, 1), "pp2": (1, 2)}, {"tiny": Path(model_dir)}, out)
    for layout, by_job in results.items():
        print(f"\n{layout}: shapes per rank (absent = not on this rank), collectives of step 1")
        for rank in by_job["tiny"]:
            shapes = {n.split(".", 1)[1] if n.startswith("model.") else n: tuple(rank["tensors"][n].shape)
                      for n in SHOWN if n in rank["tensors"]}
            step = rank["steps"][0]
            print(f"  rank {rank['rank']} ({rank['num_params']:,} params): {shapes}")
            print(f"    {step['num_tokens']} tokens; TP forward {step['tp_forward']['calls']} "
                  f"{step['tp_forward']['bytes']} B; LM head {step.get('tp_logits', {}).get('calls', {})}; "
                  f"PP {step['pp']['calls']} {step['pp']['bytes']} B")


def main() -> None:
    with tempfile.TemporaryDirectory(prefix="tp-pp-demo-") as tmp:
        model_dir = str(write_random_llama(Path(tmp, "ckpt")))
        print_generation(model_dir)
        print_ranks(model_dir, Path(tmp, "ranks"))
    print("\nTP: 2 x layers + 1 all-reduces per forward (embedding, o_proj, down_proj); "
          "PP: hidden + residual sent once per step")


if __name__ == "__main__":
    main()
