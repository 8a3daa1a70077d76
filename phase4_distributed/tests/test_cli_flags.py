"""``--tensor-parallel-size``, ``--pipeline-parallel-size`` and ``--distributed-executor-backend``
reach ``EngineArgs`` from every command that takes engine flags; ``--worker-addresses`` reaches
the ``EngineConfig`` the grpc executor reads."""

import argparse

import pytest

from phase3_scheduling.cli_args import add_engine_args, engine_args
from phase3_scheduling.config import ParallelConfig


def parse(argv):
    parser = argparse.ArgumentParser()
    add_engine_args(parser)
    return engine_args(parser.parse_args(argv))


def test_parallel_flags_build_the_parallel_config():
    args = parse(["--tensor-parallel-size", "2", "--pipeline-parallel-size", "3",
                  "--distributed-executor-backend", "ray"])
    assert args.parallel_config() == ParallelConfig(2, 3, "ray")
    assert args.parallel_config().world_size == 6


def test_defaults_pick_uni_for_one_worker_and_mp_for_several():
    assert parse([]).parallel_config().executor_name == "uni"
    assert parse(["--tensor-parallel-size", "2"]).parallel_config().executor_name == "mp"


def test_generate_takes_the_engine_flags(capsys):
    from lightvllm.cli import main

    with pytest.raises(SystemExit):
        main(["generate", "--help"])
    out = capsys.readouterr().out
    for flag in ("--tensor-parallel-size", "--pipeline-parallel-size",
                 "--distributed-executor-backend"):
        assert flag in out


def test_worker_addresses_reach_the_engine_config_the_workers_get(tiny_llama_dir):
    from phase3_scheduling.engine_config import decode_config, encode_config, resolve_engine_config

    args = parse(["--tensor-parallel-size", "2", "--distributed-executor-backend", "grpc",
                  "--worker-addresses", "w-0.svc:50051, w-1.svc:50051"])
    args.model = str(tiny_llama_dir)
    assert args.extra["worker_addresses"] == "w-0.svc:50051, w-1.svc:50051"
    config = decode_config(encode_config(resolve_engine_config(args)))
    assert config.parallel_config.worker_addresses == ["w-0.svc:50051", "w-1.svc:50051"]
    assert parse([]).parallel_config().worker_addresses == []
