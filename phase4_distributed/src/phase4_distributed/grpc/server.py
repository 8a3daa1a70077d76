"""``lightvllm worker``: one rank's ``WorkerHost`` served over gRPC.

The worker starts with only its rank, the world size and the torch.distributed master; its
``EngineConfig`` arrives with the first ``Call`` (``init``), which joins the process group (gloo on
CPU, NCCL on GPU, through ``worker_builder``) and creates the worker. Calls are served one at a
time (a lock), ``Health`` answers meanwhile. The process exits after a ``shutdown`` RPC or SIGTERM.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import threading
from concurrent import futures

import grpc

from phase3_scheduling import protocol
from phase3_scheduling.engine_config import EngineConfig, decode_config
from phase3_scheduling.protocol import RpcReply

from ..executors.worker_host import DEFAULT_BUILDER, WorkerHost, error_reply
from . import CALL_INIT, CALL_RPC, CALL_STEP, CHANNEL_OPTIONS, REPLY_ERROR
from . import worker_pb2 as pb
from . import worker_pb2_grpc as pb_grpc

logger = logging.getLogger(__name__)


class WorkerConfigError(ValueError):
    """The engine's config does not fit the world this worker was started for."""


class WorkerService(pb_grpc.WorkerServicer):
    def __init__(self, args: argparse.Namespace, stop: threading.Event):
        self.args = args
        self.stop = stop
        self.host: WorkerHost | None = None
        self.state = "waiting_for_init"
        self._lock = threading.Lock()

    def Health(self, request: pb.Empty, context) -> pb.HealthReply:
        return pb.HealthReply(ok=self.state in ("waiting_for_init", "ready"), rank=self.args.rank,
                              world_size=self.args.world_size, state=self.state)

    def Call(self, request: pb.RpcBytes, context) -> pb.RpcBytes:
        with self._lock:
            if request.method == CALL_INIT:
                return pb.RpcBytes(method=CALL_INIT, payload=self._init(request.payload))
            host = self.host
            if host is None:  # abort() raises; the returns are for the type checker
                return context.abort(grpc.StatusCode.FAILED_PRECONDITION,
                                     f"rank {self.args.rank}: {request.method!r} before init")
            if request.method == CALL_STEP:
                return self._step(host, request.payload)
            if request.method == CALL_RPC:
                reply = host.call(request.payload)
                if host.last_method == "shutdown":
                    self.state = "stopping"
                    self.stop.set()
                return pb.RpcBytes(method=CALL_RPC, payload=reply)
            return context.abort(grpc.StatusCode.UNIMPLEMENTED, f"unknown call {request.method!r}")

    def _init(self, config_bytes: bytes) -> bytes:
        try:
            config = decode_config(config_bytes)
            self._check_world(config)
            self.host = WorkerHost.start(config, self.args.rank, self.args.local_rank,
                                         self.args.master, self.args.master_port,
                                         self.args.model_builder)
        except Exception as error:
            logger.exception("rank %d: init failed", self.args.rank)
            self.state = "failed"
            return error_reply(error)
        self.state = "ready"
        return protocol.encode(RpcReply(result={"rank": self.args.rank, "pid": os.getpid()}))

    def _check_world(self, config: EngineConfig) -> None:
        world = config.parallel_config.world_size
        if world != self.args.world_size:
            raise WorkerConfigError(f"the engine's world size is {world} (tp x pp) but this worker "
                                    f"was started with --world-size {self.args.world_size}")

    def _step(self, host: WorkerHost, step_bytes: bytes) -> pb.RpcBytes:
        try:
            output = host.execute(step_bytes)
        except Exception as error:  # the engine decides whether this is fatal
            logger.exception("rank %d: step failed", self.args.rank)
            return pb.RpcBytes(method=REPLY_ERROR, payload=error_reply(error))
        return pb.RpcBytes(method=CALL_STEP, payload=output or b"")


def add_worker_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--rank", type=int, required=True)
    parser.add_argument("--world-size", type=int, required=True)
    parser.add_argument("--local-rank", type=int, default=None, help="device index (default: 0)")
    parser.add_argument("--master", default=os.environ.get("MASTER_ADDR", "127.0.0.1"),
                        help="torch.distributed master (rank 0's address)")
    parser.add_argument("--master-port", type=int,
                        default=int(os.environ.get("MASTER_PORT", "29500")))
    parser.add_argument("--host", default="0.0.0.0", help="address the gRPC service binds")
    parser.add_argument("--port", type=int, default=50051)
    parser.add_argument("--model-builder", default=DEFAULT_BUILDER, help="module:function")


def serve(args: argparse.Namespace) -> None:
    """Serve until a ``shutdown`` RPC or SIGTERM/SIGINT."""
    if not 0 <= args.rank < args.world_size:
        raise SystemExit(f"--rank {args.rank} is outside the world of {args.world_size} ranks")
    args.local_rank = 0 if args.local_rank is None else args.local_rank
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4), options=CHANNEL_OPTIONS)
    service = WorkerService(args, stop)
    pb_grpc.add_WorkerServicer_to_server(service, server)
    address = f"{args.host}:{args.port}"
    if server.add_insecure_port(address) == 0:
        raise SystemExit(f"cannot bind the worker service to {address}")
    server.start()
    logger.warning("worker rank %d/%d serving on %s (pid %d)", args.rank, args.world_size,
                   address, os.getpid())
    stop.wait()
    busy = not service._lock.acquire(timeout=2.0)  # a step stuck on a dead peer never returns
    server.stop(grace=1.0).wait()
    logger.warning("worker rank %d stopped", args.rank)
    if busy:
        os._exit(0)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="lightvllm worker", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_worker_args(parser)
    args = parser.parse_args(argv)
    logging.basicConfig(level=os.environ.get("LIGHTVLLM_LOG_LEVEL", "WARNING"),
                        format=f"[worker {args.rank}] %(levelname)s %(name)s: %(message)s")
    serve(args)
