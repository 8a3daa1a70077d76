"""``lightvllm worker-health --address HOST:PORT``: exit 0 when the worker's ``Health`` RPC
answers ok within the deadline, 1 otherwise (the Kubernetes probes run it)."""

from __future__ import annotations

import argparse
import logging
import sys

import grpc

from . import worker_pb2 as pb
from . import worker_pb2_grpc as pb_grpc

logger = logging.getLogger(__name__)


def probe(address: str, timeout_s: float) -> pb.HealthReply:
    """The worker's health reply; ``grpc.RpcError`` if it does not answer within ``timeout_s``."""
    with grpc.insecure_channel(address) as channel:
        return pb_grpc.WorkerStub(channel).Health(pb.Empty(), timeout=timeout_s)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="lightvllm worker-health", description=__doc__)
    parser.add_argument("--address", required=True, help="HOST:PORT of the worker service")
    parser.add_argument("--timeout", type=float, default=3.0, help="deadline, seconds")
    args = parser.parse_args(argv)
    try:
        reply = probe(args.address, args.timeout)
    except grpc.RpcError as error:
        print(f"{args.address}: no answer within {args.timeout:g} s ({error.code().name})",
              file=sys.stderr)
        raise SystemExit(1)
    print(f"{args.address}: rank {reply.rank}/{reply.world_size} {reply.state}")
    raise SystemExit(0 if reply.ok else 1)
