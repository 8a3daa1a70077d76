"""In one process, no process groups: the rank layout, the pipeline split, the errors for
models that do not split, the shard table, and the launcher's failure handling."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from phase1_kernels import LLAMA_3_1_8B, ModelConfig
from phase3_scheduling.config import ParallelConfig
from phase4_distributed.group_coordinator import GroupCoordinator, NotConnectedError
from phase4_distributed.layers import TensorParallelError
from phase4_distributed.local_launch import LaunchError, launch_local_ranks
from phase4_distributed.model_loader import build_parallel_model
from phase4_distributed.parallel_state import ParallelLayoutError, RankLayout
from phase4_distributed.pipeline import pipeline_layer_range
from phase4_distributed.shard_analysis import SMOLLM2_135M, rank_shard

TESTS_DIR = Path(__file__).parent


def test_tp_ranks_are_contiguous_like_vllm():
    layout = RankLayout(rank=3, tensor_parallel_size=2, pipeline_parallel_size=2)
    assert layout.tp_groups() == [[0, 1], [2, 3]]
    assert layout.pp_groups() == [[0, 2], [1, 3]]
    assert (layout.tp_rank, layout.pp_rank) == (1, 1)
    assert RankLayout(5, 4, 2).tp_groups() == [[0, 1, 2, 3], [4, 5, 6, 7]]
    with pytest.raises(ParallelLayoutError, match="rank 4 is outside the world of 4 ranks"):
        RankLayout(4, 2, 2)


@pytest.mark.parametrize("layers, pp", [(30, 4), (3, 2), (32, 3), (5, 4), (7, 7), (8, 1)])
def test_pipeline_stages_cover_every_layer_once(layers, pp):
    ranges = [pipeline_layer_range(layers, rank, pp) for rank in range(pp)]
    assert ranges[0][0] == 0 and ranges[-1][1] == layers
    assert all(a[1] == b[0] for a, b in zip(ranges, ranges[1:]))
    sizes = [end - start for start, end in ranges]
    assert max(sizes) - min(sizes) <= 1 and sizes[-1] == min(sizes)  # the last runs the head


def test_more_stages_than_layers_is_refused():
    with pytest.raises(ParallelLayoutError, match=r"pipeline_parallel_size \(31\).*\(30\)"):
        pipeline_layer_range(30, 0, 31)


def test_smollm2_tp2_says_why_not(smollm2_dir):
    """9 heads / 3 kv heads: TP=3 splits them, TP=2 cannot; refused before any process group."""
    with pytest.raises(TensorParallelError,
                       match=r"num_attention_heads \(9\) is not divisible by tensor_parallel_size "
                             r"\(2\).*9 attention heads, 3 kv heads.*one of \[1, 3\]"):
        build_parallel_model(smollm2_dir, ParallelConfig(tensor_parallel_size=2), rank=0)


def test_kv_heads_that_cannot_be_replicated_evenly_are_refused():
    config = ModelConfig(**{**SMOLLM2_135M, "num_attention_heads": 12, "intermediate_size": 1536})
    with pytest.raises(TensorParallelError, match=r"tensor_parallel_size \(4\) exceeds "
                                                  r"num_key_value_heads \(3\)"):
        build_parallel_model(config, ParallelConfig(4), rank=0, load_format="dummy")


def test_shard_table_counts_match_the_checkpoints(smollm2_dir):
    """TP=1 rows are the models' whole parameter counts: Llama-3.1-8B's published 8,030,261,248
    and the SmolLM2 file's own tensor sizes."""
    assert rank_shard(ModelConfig(**LLAMA_3_1_8B), 1).num_params == 8_030_261_248
    with safe_open(str(smollm2_dir / "model.safetensors"), "pt") as f:
        in_file = sum(torch.Size(f.get_slice(k).get_shape()).numel() for k in f.keys())
    assert rank_shard(ModelConfig(**SMOLLM2_135M), 1).num_params == in_file
    tp3 = rank_shard(ModelConfig(**SMOLLM2_135M), 3)
    assert tp3.num_params == 44_861_760  # what each SmolLM2 TP=3 rank holds in the forward test
    assert tp3.shapes["qkv"] == (5 * 64, 576) and tp3.kv_bytes_per_token == 2 * 64 * 2 * 30


def test_unconnected_group_builds_shapes_but_refuses_collectives():
    group = GroupCoordinator.unconnected("tp", 1, 2)
    with pytest.raises(NotConnectedError, match="rank 1 of 2.*init_distributed"):
        group.all_reduce(torch.ones(2))
    alone = GroupCoordinator.unconnected("tp", 0, 1)
    x = torch.ones(3)
    assert alone.all_reduce(x) is x and alone.all_gather(x) is x and not alone.stats.calls


def test_a_failing_rank_stops_the_launch_with_its_error():
    start = time.monotonic()
    with pytest.raises(LaunchError, match="(?s)rank 1 exited with 1.*rank 1 gives up"):
        launch_local_ranks("launch_targets:fail_on_rank_one", 2, timeout_s=60,
                           extra_pythonpath=[TESTS_DIR])
    assert time.monotonic() - start < 30  # not the other rank's 60 s sleep


def test_a_hanging_rank_is_stopped_at_the_timeout():
    with pytest.raises(LaunchError, match=r"ranks \[0, 1\] still running after 2 s"):
        launch_local_ranks("launch_targets:hang", 2, timeout_s=2, extra_pythonpath=[TESTS_DIR])
