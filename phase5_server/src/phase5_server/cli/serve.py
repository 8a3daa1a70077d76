"""``lightvllm serve [MODEL]``: the OpenAI-compatible server, with vLLM's engine options.

The engine-core process is started first, before this process imports torch, FastAPI and
uvicorn (seconds), so that its own imports overlap ours; only the standard library and
``shared`` are imported until then. Its config is sent as soon as the arguments are parsed,
before the web stack is imported, so that it loads the model meanwhile.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys

from shared.engine_launch import EngineLaunch


def engine_log_level(cli_level: str) -> str:
    """uvicorn's and the engine process's log level: ``info`` on the command line means
    ``warning`` there (this process's own log stays at ``info``)."""
    return "warning" if cli_level.lower() == "info" else cli_level.lower()


def launch_engine_early(argv: list[str]) -> EngineLaunch | None:
    """Start the engine-core process now, unless this run asks for help or serves with the
    engine in a thread (``--no-engine-process``)."""
    if any(arg in ("-h", "--help") for arg in argv):
        return None
    early = argparse.ArgumentParser(add_help=False)
    early.add_argument("--engine-process", action=argparse.BooleanOptionalAction, default=True)
    early.add_argument("--log-level", default="info")
    known, _ = early.parse_known_args(argv)
    return EngineLaunch.start(engine_log_level(known.log_level)) if known.engine_process else None


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    launch = launch_engine_early(argv)
    try:
        _serve(argv, launch)
    finally:  # bad arguments, a port in use, Ctrl-C: never leave the engine process behind
        if launch is not None:
            launch.kill()


def _serve(argv: list[str], launch: EngineLaunch | None) -> None:
    from phase3_scheduling.cli_args import add_engine_args, engine_args

    from ..serving_engine import AdmissionLimits

    parser = argparse.ArgumentParser(prog="lightvllm serve",
                                     description="OpenAI-compatible HTTP server (FastAPI, uvicorn)")
    parser.add_argument("model", nargs="?", default=None,
                        help="built-in name or local HF directory (default: the embedded SmolLM2)")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--api-key", default=os.environ.get("LIGHTVLLM_API_KEY"),
                        help="require 'Authorization: Bearer KEY' (default: $LIGHTVLLM_API_KEY)")
    parser.add_argument("--served-model-name", default=None)
    parser.add_argument("--max-body-bytes", type=int, default=4 * 2**20)
    caps = AdmissionLimits()
    parser.add_argument("--max-seqs-per-request", type=int, default=caps.max_seqs_per_request,
                        help="most sequences (prompts x n) one request may start; more: 400")
    parser.add_argument("--max-queued-seqs", type=int, default=caps.max_queued_seqs,
                        help="most sequences queued or running at once; more: 429")
    parser.add_argument("--engine-process", action=argparse.BooleanOptionalAction, default=True,
                        help="run the engine core in its own process (default, as vLLM); "
                             "--no-engine-process keeps it in a thread of the API process")
    parser.add_argument("--log-level", default="info")
    parser.add_argument("--event-loop", choices=("auto", "uvloop", "asyncio"), default="auto",
                        help="uvicorn's event loop (auto: uvloop when installed, as vLLM)")
    parser.add_argument("--http", choices=("auto", "httptools", "h11"), default="auto",
                        help="uvicorn's HTTP/1.1 implementation (auto: httptools when installed)")
    add_engine_args(parser)
    args = parser.parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    engine = engine_args(args)
    start = None
    if launch is not None:  # config and tokenizer now; a failure surfaces in the model loader
        from phase3_scheduling.engine_start import EngineStart

        start = EngineStart(engine, engine_log_level(args.log_level), launch)
    from ..api_server import ServerConfig, run_server

    config = ServerConfig(engine, served_model_name=args.served_model_name,
                          api_key=args.api_key or None, host=args.host, port=args.port,
                          max_body_bytes=args.max_body_bytes,
                          log_level=engine_log_level(args.log_level),
                          engine_process=args.engine_process, engine_start=start,
                          event_loop=args.event_loop, http=args.http, gc_freeze=True,
                          admission=AdmissionLimits(args.max_seqs_per_request,
                                                    args.max_queued_seqs))
    run_server(config)


if __name__ == "__main__":
    main()
