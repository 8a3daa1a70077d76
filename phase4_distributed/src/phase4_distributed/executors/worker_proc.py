"""The ``mp`` worker process: ``python -m phase4_distributed.executors.worker_proc --rank R ...``
with the msgpack-encoded ``EngineConfig`` on stdin. It subscribes to the engine's broadcast
socket, pushes replies to the engine's result socket, and exits when told to, when SIGTERMed,
or when its engine process is gone."""

from __future__ import annotations

import argparse
import logging
import os
import sys

import zmq

from phase3_scheduling.engine_config import decode_config

from . import messages as m
from .processes import exit_when_parent_dies
from .worker_host import DEFAULT_BUILDER, WorkerHost, error_reply

logger = logging.getLogger(__name__)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rank", type=int, required=True)
    parser.add_argument("--local-rank", type=int, required=True)
    parser.add_argument("--world-size", type=int, required=True)
    parser.add_argument("--master-addr", default="127.0.0.1")
    parser.add_argument("--master-port", type=int, required=True)
    parser.add_argument("--broadcast-addr", required=True, help="the engine's XPUB socket")
    parser.add_argument("--result-addr", required=True, help="the engine's PULL socket")
    parser.add_argument("--parent-pid", type=int, required=True)
    parser.add_argument("--model-builder", default=DEFAULT_BUILDER, help="module:function")
    return parser.parse_args(argv)


def connect(ctx: zmq.Context, args: argparse.Namespace) -> tuple[zmq.Socket, zmq.Socket]:
    sub = ctx.socket(zmq.SUB)
    sub.setsockopt(zmq.SUBSCRIBE, b"")
    sub.connect(args.broadcast_addr)
    push = ctx.socket(zmq.PUSH)
    push.setsockopt(zmq.LINGER, 2000)
    push.connect(args.result_addr)
    return sub, push


def serve(host: WorkerHost, sub: zmq.Socket, push: zmq.Socket) -> None:
    """Answer broadcast messages until a ``shutdown`` RPC."""
    rank = m.pack_int(host.rank)
    while True:
        kind, seq, payload = sub.recv_multipart()
        if kind == m.STEP:
            try:
                output = host.execute(payload)
            except Exception as error:  # the engine decides whether this is fatal
                logger.exception("rank %d: step failed", host.rank)
                push.send_multipart([m.STEP_ERROR, seq, rank, error_reply(error)])
                continue
            if output is not None:
                push.send_multipart([m.OUTPUT, seq, rank, output], copy=False)
        else:
            push.send_multipart([m.RPC_REPLY, seq, rank, host.call(payload)])
            if host.last_method == "shutdown":
                return


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    logging.basicConfig(level=os.environ.get("LIGHTVLLM_LOG_LEVEL", "WARNING"),
                        format=f"[worker {args.rank}] %(levelname)s %(name)s: %(message)s")
    exit_when_parent_dies(args.parent_pid)
    config = decode_config(sys.stdin.buffer.read())
    ctx = zmq.Context()
    sub, push = connect(ctx, args)
    host = WorkerHost.start(config, args.rank, args.local_rank, args.master_addr,
                            args.master_port, args.model_builder)
    try:
        serve(host, sub, push)
    finally:
        sub.close(0)
        push.close()
        ctx.term()


if __name__ == "__main__":
    main()
