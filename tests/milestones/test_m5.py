"""Milestone 5 of the roadmap (분산 추론 (TP)), item by item, on the CPU: every rank is a real
process and the collectives run over gloo (the device group is NCCL on GPUs; that path is not
exercised here). The references are independent of the parallel code: the single-worker engine
for tokens, phase 1's one-process model in float64 for logits, the checkpoint's own tensor sizes
for what a rank holds.
"""

from __future__ import annotations

import pytest
import torch

from phase1_kernels import ModelConfig
from phase1_kernels.config import LLAMA_3_1_8B
from phase3_scheduling import LLM, SamplingParams
from phase4_distributed.shard_analysis import rank_shard
from phase4_distributed.testing import reference_logits, run_layouts

GREEDY = SamplingParams(temperature=0, max_tokens=10, ignore_eos=True)
PROMPTS = [[1, 2, 3, 4, 5, 6, 7], [9, 8, 7], list(range(20, 45))]
ENGINE = dict(kv_cache_gib=0.01, max_num_batched_tokens=16)


def generate(model_dir, **kwargs) -> list[list[int]]:
    llm = LLM(str(model_dir), **ENGINE, **kwargs)
    try:
        if kwargs.get("distributed_executor_backend") == "mp":
            pids = llm.engine.executor.pids
            world = kwargs.get("tensor_parallel_size", 1) * kwargs.get("pipeline_parallel_size", 1)
            assert len(set(pids)) == world  # one process per rank
        return [o.outputs[0].token_ids for o in llm.generate(PROMPTS, GREEDY, use_tqdm=False)]
    finally:
        llm.engine.shutdown()


@pytest.fixture(scope="module")
def tp2_forward(tiny_llama_dir, tmp_path_factory):
    """Two ranks run two paged varlen steps of the tiny checkpoint at TP=2 (each rank's logits,
    parameter count and counted collectives)."""
    out = tmp_path_factory.mktemp("m5")
    return run_layouts({"tp2": (2, 1)}, {"tiny": tiny_llama_dir}, out, dump_params=False)["tp2"]["tiny"]


def test_single_node_multi_worker(tiny_llama_dir):
    """[ ] 단일 노드 멀티 GPU 동작 — ``LLM(tensor_parallel_size=2)`` with two worker processes
    (the ``mp`` executor) generates the single-worker engine's greedy tokens."""
    assert generate(tiny_llama_dir, tensor_parallel_size=2, distributed_executor_backend="mp") \
        == generate(tiny_llama_dir, distributed_executor_backend="uni")


def test_collectives_succeed_and_are_counted(tiny_llama_dir, tp2_forward):
    """[ ] NCCL 통신 성공 (gloo on the CPU) — the sharded forward equals the one-process model
    within 1e-6 (fp64), with exactly 2 x layers + 1 all-reduces of [tokens, hidden] per
    forward and one all-gather for the LM head."""
    config = ModelConfig.from_pretrained(tiny_llama_dir)
    expected = reference_logits(tiny_llama_dir)
    for rank in tp2_forward:
        for step, logits in enumerate(expected):
            torch.testing.assert_close(rank["tensors"][f"logits{step}"], logits, rtol=0, atol=1e-6)
            stats = rank["steps"][step]
            want = 2 * config.num_hidden_layers + 1
            assert stats["tp_forward"]["calls"] == {"all_reduce": want}
            assert stats["tp_forward"]["bytes"]["all_reduce"] == want * stats["num_tokens"] * config.hidden_size * 8
            assert stats["tp_logits"]["calls"] == {"all_gather": 1}


def test_scaling_each_rank_holds_one_tp_th(tiny_llama_dir, tp2_forward):
    """[ ] 스케일링 효율성 측정 — what decides TP scaling, per rank: the real ranks hold the
    parameters the meta-device analysis predicts, and for Llama-3.1-8B ``tp x per-rank``
    exceeds the whole model by exactly the replicated norms plus the vocabulary padding (the
    time per step is measured by ``phase4_distributed/benchmarks/executor_overhead.py``)."""
    config = ModelConfig.from_pretrained(tiny_llama_dir)
    assert all(r["num_params"] == rank_shard(config, 2).num_params for r in tp2_forward)
    llama = ModelConfig(**LLAMA_3_1_8B)
    whole = rank_shard(llama, 1).num_params
    assert whole == 8_030_261_248
    norms = llama.num_hidden_layers * 2 * llama.hidden_size + llama.hidden_size
    for tp in (2, 4, 8):
        padded_vocab = -(-llama.vocab_size // (64 * tp)) * 64 * tp
        padding = 2 * (padded_vocab - llama.vocab_size) * llama.hidden_size  # embed + lm_head
        assert tp * rank_shard(llama, tp).num_params - whole == (tp - 1) * norms + padding
