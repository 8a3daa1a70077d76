"""The engine's command-line flags come from ``EngineArgs``' fields: one flag per field, the
dataclass's defaults, the older spellings still accepted."""

from __future__ import annotations

import argparse
import dataclasses

import pytest

from phase3_scheduling import EngineArgs
from phase3_scheduling.cli_args import SKIPPED, add_engine_args, engine_args


def _parse(argv: list[str]) -> EngineArgs:
    parser = argparse.ArgumentParser()
    add_engine_args(parser)
    return engine_args(parser.parse_args(argv))


def test_no_flags_give_the_dataclass_defaults():
    assert _parse([]) == EngineArgs()


def test_every_field_has_a_flag_with_help():
    parser = argparse.ArgumentParser()
    add_engine_args(parser)
    flags = {opt: action for action in parser._actions for opt in action.option_strings}
    for field in dataclasses.fields(EngineArgs):
        if field.name not in SKIPPED:
            flag = "--" + field.name.replace("_", "-")
            assert flag in flags and flags[flag].help, flag


def test_flags_set_fields_and_old_spellings_work():
    args = _parse(["--tensor-parallel-size", "2", "--pipeline-parallel-size", "3",
                   "--distributed-executor-backend", "mp", "--max-num-seqs", "7",
                   "--kv-cache-gib", "0.5", "--no-prefix-caching", "--no-chunked-prefill",
                   "--enforce-eager", "--max-model-len", "512"])
    assert (args.tensor_parallel_size, args.pipeline_parallel_size) == (2, 3)
    assert args.distributed_executor_backend == "mp" and args.max_num_seqs == 7
    assert args.kv_cache_gib == 0.5 and args.max_model_len == 512 and args.enforce_eager
    assert not args.enable_prefix_caching and not args.enable_chunked_prefill
    assert not _parse(["--no-enable-prefix-caching"]).enable_prefix_caching
    assert _parse(["--hf-config", "llama-3.1-8b"]).hf_config["hidden_size"] == 4096


def test_cuda_graph_sizes_flag_reaches_the_engine_config_sorted():
    from phase3_scheduling.engine_config import decode_config, encode_config, resolve_engine_config
    from phase3_scheduling.worker.cuda_graphs import graph_batch_sizes

    args = _parse(["--cuda-graph-sizes", "8,1,2,4,16,4", "--load-format", "dummy",
                   "--hf-config", "llama-3.1-8b", "--device", "cpu", "--max-num-seqs", "12"])
    assert args.cuda_graph_sizes == [8, 1, 2, 4, 16, 4]
    config = resolve_engine_config(args)
    assert config.cuda_graph_sizes == [1, 2, 4, 8, 16]
    assert decode_config(encode_config(config)).cuda_graph_sizes == [1, 2, 4, 8, 16]
    assert graph_batch_sizes(12, config.cuda_graph_sizes) == [1, 2, 4, 8]  # 16 > max_num_seqs
    assert graph_batch_sizes(40) == [1, 2, 4, 8, 16, 32]  # the default, unchanged
    assert resolve_engine_config(_parse(["--load-format", "dummy", "--hf-config", "llama-3.1-8b",
                                         "--device", "cpu"])).cuda_graph_sizes is None


def test_cuda_graph_sizes_must_be_positive_integers():
    from phase3_scheduling.engine_config import resolve_engine_config

    with pytest.raises(ValueError, match="comma-separated integers"):
        _parse(["--cuda-graph-sizes", "1,two"])
    with pytest.raises(ValueError, match=">= 1"):
        resolve_engine_config(EngineArgs(load_format="dummy", hf_config=dict(
            vocab_size=512, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
            num_attention_heads=4, num_key_value_heads=2, head_dim=16,
            max_position_embeddings=2048), device="cpu", cuda_graph_sizes=[0, 4]))


def test_mixed_graph_token_limit_reaches_the_config_and_picks_the_sizes():
    """``--mixed-cuda-graph-max-tokens`` travels in the (encoded) engine config; the captured
    token counts stop at it and at the step's token budget; a negative limit is refused."""
    from phase3_scheduling.engine_config import decode_config, encode_config, resolve_engine_config
    from phase3_scheduling.worker.piecewise_graphs import mixed_graph_sizes

    base = ["--load-format", "dummy", "--hf-config", "llama-3.1-8b", "--device", "cpu"]
    config = resolve_engine_config(_parse(base + ["--mixed-cuda-graph-max-tokens", "300"]))
    assert decode_config(encode_config(config)).mixed_cuda_graph_max_tokens == 300
    assert mixed_graph_sizes(300, 8192) == [16, 32, 64, 128, 192, 256]
    assert mixed_graph_sizes(1024, 512)[-1] == 512 and mixed_graph_sizes(1024, 8192)[-1] == 1024
    assert mixed_graph_sizes(0, 8192) == []
    assert resolve_engine_config(_parse(base)).mixed_cuda_graph_max_tokens == 1024
    with pytest.raises(ValueError, match="mixed_cuda_graph_max_tokens must be >= 0"):
        resolve_engine_config(_parse(base + ["--mixed-cuda-graph-max-tokens", "-1"]))


def test_max_num_seqs_default_follows_the_device_and_a_flag_wins():
    args = _parse([])
    assert args.max_num_seqs is None
    assert args.scheduler_config(4096).max_num_seqs == 256  # the CPU
    assert args.scheduler_config(4096, "cuda", 44.0).max_num_seqs == 256  # a smaller GPU
    assert args.scheduler_config(4096, "cuda", 79.2).max_num_seqs == 1024  # an H100 80 GB
    assert args.scheduler_config(4096, "cuda", 139.8).max_num_seqs == 1024  # an H200
    assert _parse(["--max-num-seqs", "64"]).scheduler_config(
        4096, "cuda", 139.8).max_num_seqs == 64
    with pytest.raises(ValueError, match="max_num_seqs must be >= 1"):
        EngineArgs(max_num_seqs=0).scheduler_config(4096, "cuda", 79.2)  # not the default
