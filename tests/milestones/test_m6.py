"""Milestone 6 of the roadmap (분산 추론 (PP + K8s)), the pipeline-parallel half, on the CPU:
every stage is a real process joined by gloo on loopback. The Kubernetes half (Kubernetes
Controller 동작, gRPC 통신 안정성) is tested against a real local control plane in
``phase4_distributed/tests/k8s`` (``test_operator.py``, ``test_scheduling.py``,
``test_discovery.py``, ``test_crd.py``), not repeated here.
"""

from __future__ import annotations

import pytest
import torch

from phase1_kernels import ModelConfig
from phase4_distributed.pipeline import pipeline_layer_range
from phase4_distributed.testing import BLOCK_SIZE, NUM_BLOCKS, reference_logits, run_layouts

from test_m5 import generate


@pytest.fixture(scope="module")
def pp2_forward(tiny_llama_dir, tmp_path_factory):
    """Two stages run two paged varlen steps of the tiny checkpoint at PP=2."""
    out = tmp_path_factory.mktemp("m6")
    return run_layouts({"pp2": (1, 2)}, {"tiny": tiny_llama_dir}, out, dump_params=False)["pp2"]["tiny"]


def test_multi_stage_inference(tiny_llama_dir):
    """[ ] 멀티 노드 추론 성공 (stages as processes on one host) — ``LLM(pipeline_parallel_size=2)``
    through the ``mp`` executor generates the single-worker engine's greedy tokens."""
    assert generate(tiny_llama_dir, pipeline_parallel_size=2, distributed_executor_backend="mp") \
        == generate(tiny_llama_dir, distributed_executor_backend="uni")


def test_pipeline_logits_and_traffic(tiny_llama_dir, pp2_forward):
    """The last stage's fp64 logits equal the one-process model within 1e-6; the first stage
    sends exactly hidden + residual ([tokens, hidden] each) per step and nothing else."""
    config = ModelConfig.from_pretrained(tiny_llama_dir)
    first, last = pp2_forward
    for step, logits in enumerate(reference_logits(tiny_llama_dir)):
        torch.testing.assert_close(last["tensors"][f"logits{step}"], logits, rtol=0, atol=1e-6)
        activation = first["steps"][step]["num_tokens"] * config.hidden_size * 8
        assert first["steps"][step]["pp"]["calls"]["send"] == 2
        assert first["steps"][step]["pp"]["bytes"]["send"] == 2 * activation
        assert last["steps"][step]["pp"]["bytes"]["recv"] == 2 * activation
    assert not any(k.startswith("logits") for k in first["tensors"])


def test_each_stage_caches_only_its_layers(tiny_llama_dir, pp2_forward):
    """Per-rank KV cache: each stage allocates (and fills) blocks only for its own layers."""
    config = ModelConfig.from_pretrained(tiny_llama_dir)
    layers = config.num_hidden_layers
    kv_shape = [2, NUM_BLOCKS, BLOCK_SIZE, config.num_key_value_heads, config.head_dim]
    covered = []
    for rank in pp2_forward:
        start, end = pipeline_layer_range(layers, rank["pp_rank"], 2)
        assert rank["kv_cache"] == [[i, kv_shape, True] for i in range(start, end)]
        covered += [layer for layer, _, _ in rank["kv_cache"]]
    assert covered == list(range(layers))
