"""The ``lightvllm`` command: ``serve``, ``chat``, ``generate``, ``bench throughput|latency|serve``,
``worker`` and ``worker-health`` (a gRPC worker rank and its health probe)."""

from __future__ import annotations

import argparse
import sys


def _generate(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="lightvllm generate")
    parser.add_argument("prompt")
    parser.add_argument("--model", default=None)
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument("--temperature", type=float, default=0.0)
    parser.add_argument("--chat", action="store_true", help="wrap the prompt in the chat template")
    from phase3_scheduling.cli_args import add_engine_args, engine_args

    add_engine_args(parser)
    args = parser.parse_args(argv)
    from phase3_scheduling import LLM, SamplingParams

    llm = LLM.from_engine_args(engine_args(args))
    params = SamplingParams(temperature=args.temperature, max_tokens=args.max_tokens)
    if args.chat:
        out = llm.chat([{"role": "user", "content": args.prompt}], params, use_tqdm=False)
    else:
        out = llm.generate(args.prompt, params, use_tqdm=False)
    print(out[0].outputs[0].text)


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    usage = ("usage: lightvllm {serve [MODEL]|chat|generate PROMPT|"
             "bench throughput|bench latency|bench serve|worker|worker-health} ... "
             "(--help after any for its options)")
    if not argv or argv[0] in ("-h", "--help"):
        print(usage)
        return
    command, rest = argv[0], argv[1:]
    if command == "bench" and rest and rest[0] in ("throughput", "latency"):
        from phase3_scheduling import benchmark

        (benchmark.throughput_main if rest[0] == "throughput" else benchmark.latency_main)(rest[1:])
    elif command == "bench" and rest and rest[0] == "serve":
        from phase5_server.cli import bench_serve

        bench_serve.main(rest[1:])
    elif command == "serve":
        from phase5_server.cli import serve

        serve.main(rest)
    elif command == "chat":
        from phase5_server.cli import chat

        chat.main(rest)
    elif command == "generate":
        _generate(rest)
    elif command == "worker":
        from phase4_distributed.grpc import server

        server.main(rest)
    elif command == "worker-health":
        from phase4_distributed.grpc import health

        health.main(rest)
    else:
        raise SystemExit(f"unknown command {' '.join(argv[:2])!r}\n{usage}")


if __name__ == "__main__":
    main()
