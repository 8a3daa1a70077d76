"""The ``lightvllm`` command: ``bench throughput|latency``, ``generate`` (more in later phases)."""

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
    args = parser.parse_args(argv)
    from phase3_scheduling import LLM, SamplingParams

    llm = LLM(args.model)
    params = SamplingParams(temperature=args.temperature, max_tokens=args.max_tokens)
    if args.chat:
        out = llm.chat([{"role": "user", "content": args.prompt}], params, use_tqdm=False)
    else:
        out = llm.generate(args.prompt, params, use_tqdm=False)
    print(out[0].outputs[0].text)


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    usage = "usage: lightvllm {bench throughput|bench latency|generate} ..."
    if not argv or argv[0] in ("-h", "--help"):
        print(usage)
        return
    command, rest = argv[0], argv[1:]
    if command == "bench" and rest and rest[0] in ("throughput", "latency"):
        from phase3_scheduling import benchmark

        (benchmark.throughput_main if rest[0] == "throughput" else benchmark.latency_main)(rest[1:])
    elif command == "generate":
        _generate(rest)
    else:
        raise SystemExit(f"unknown command {' '.join(argv[:2])!r}\n{usage}")


if __name__ == "__main__":
    main()
