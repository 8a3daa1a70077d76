"""The engine's command-line flags come from ``EngineArgs``' fields: one flag per field, the
dataclass's defaults, the older spellings still accepted."""

from __future__ import annotations

import argparse
import dataclasses

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
