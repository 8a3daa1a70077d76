"""``--tensor-parallel-size``, ``--pipeline-parallel-size`` and ``--distributed-executor-backend``
reach ``EngineArgs`` from every command that takes engine flags."""

import argparse

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

    try:
        main(["generate", "--help"])
    except SystemExit:
        pass
    out = capsys.readouterr().out
    for flag in ("--tensor-parallel-size", "--pipeline-parallel-size",
                 "--distributed-executor-backend"):
        assert flag in out
