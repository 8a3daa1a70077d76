"""``grpc``: workers are ``lightvllm worker`` services at known addresses (a StatefulSet's pods,
or processes started by hand), driven over gRPC with msgpack payloads.

Addresses come from ``EngineArgs.extra["worker_addresses"]`` (``serve --worker-addresses``), the
i-th being rank i. Start-up waits for every worker's ``Health`` (retrying until a deadline), then
sends each its ``init`` (the ``EngineConfig``) at once, since ranks > 1 meet in a process group.
Every step and RPC goes to all workers concurrently as gRPC futures, so a step lasts as long as
its slowest worker. Each call has a deadline; a worker that is gone (connection lost) or misses
its deadline fails the engine with ``WorkerDiedError`` at once.
"""

from __future__ import annotations

import logging
import queue
import time
from typing import Any

import grpc
import msgspec

from phase3_scheduling import protocol
from phase3_scheduling.engine_config import EngineConfig, encode_config
from phase3_scheduling.executor import WorkerDiedError
from phase3_scheduling.protocol import ModelRunnerOutput, RpcReply, RpcRequest, SchedulerOutput

from ..grpc import CALL_INIT, CALL_RPC, CALL_STEP, CHANNEL_OPTIONS, REPLY_ERROR
from ..grpc import worker_pb2 as pb
from ..grpc import worker_pb2_grpc as pb_grpc
from .base import RankedExecutor
from .errors import results_in_rank_order

logger = logging.getLogger(__name__)
_REPLY_DECODER = msgspec.msgpack.Decoder(RpcReply)


class WorkerAddressError(ValueError):
    """The worker addresses do not match the engine's world."""


def worker_addresses(config: EngineConfig) -> list[str]:
    addresses = list(config.parallel_config.worker_addresses)
    world = config.parallel_config.world_size
    if len(addresses) != world:
        raise WorkerAddressError(
            f"the grpc executor needs one worker address per rank: {len(addresses)} given "
            f"({addresses}) for tp x pp = {world} (extra={{'worker_addresses': [...]}} or "
            f"--worker-addresses host:port,...)")
    return addresses


class GrpcExecutor(RankedExecutor):
    startup_timeout_s = 120.0  # workers' Health must answer within this (pods may be starting)
    health_retry_s = 0.5
    rpc_timeout_s = 600.0  # load_model of a large checkpoint may take minutes
    step_timeout_s = 120.0

    def __init__(self, config: EngineConfig):
        super().__init__(config)
        self.addresses = worker_addresses(config)
        self._channels = [grpc.insecure_channel(a, options=CHANNEL_OPTIONS)
                          for a in self.addresses]
        self._stubs = [pb_grpc.WorkerStub(c) for c in self._channels]
        start = time.perf_counter()
        self._wait_for_health()
        self._init_workers()
        logger.info("grpc executor: %d workers %s ready in %.1f s", self.world_size,
                    self.addresses, time.perf_counter() - start)

    # ---- start-up ------------------------------------------------------------------------------
    def _wait_for_health(self) -> None:
        deadline = time.monotonic() + self.startup_timeout_s
        for rank, stub in enumerate(self._stubs):
            while True:
                try:
                    reply = stub.Health(pb.Empty(), timeout=2.0, wait_for_ready=True)
                    break
                except grpc.RpcError as error:
                    if time.monotonic() > deadline:
                        raise WorkerDiedError(
                            f"worker rank {rank} at {self.addresses[rank]} did not answer Health "
                            f"within {self.startup_timeout_s:.0f} s ({error.code().name})")
                    time.sleep(self.health_retry_s)
            self._check_identity(rank, reply)

    def _check_identity(self, rank: int, reply: pb.HealthReply) -> None:
        if (reply.rank, reply.world_size) != (rank, self.world_size) or not reply.ok:
            raise WorkerAddressError(
                f"{self.addresses[rank]} is worker rank {reply.rank}/{reply.world_size} "
                f"({reply.state}), expected rank {rank}/{self.world_size}, ready for init")

    def _init_workers(self) -> None:
        replies = self._fan_out(CALL_INIT, encode_config(self.config), self.rpc_timeout_s)
        results_in_rank_order("init", {rank: _REPLY_DECODER.decode(payload)
                                       for rank, (_, payload) in replies.items()})

    # ---- fan-out -------------------------------------------------------------------------------
    def _fan_out(self, method: str, payload: bytes, timeout_s: float
                 ) -> dict[int, tuple[str, bytes]]:
        """One call to every worker at once; their replies by rank. The first worker that fails
        at the transport level (gone, deadline) fails the engine without waiting for the rest."""
        if self._dead is not None:
            raise self._dead
        request = pb.RpcBytes(method=method, payload=payload)
        done: queue.Queue = queue.Queue()
        calls = []
        for rank, stub in enumerate(self._stubs):
            call = stub.Call.future(request, timeout=timeout_s)
            call.add_done_callback(lambda f, rank=rank: done.put((rank, f)))
            calls.append(call)
        replies: dict[int, tuple[str, bytes]] = {}
        while len(replies) < self.world_size:
            rank, call = done.get()
            try:
                reply = call.result()
            except grpc.RpcError as error:
                for other in calls:
                    other.cancel()
                self._worker_gone(rank, method, error)
            replies[rank] = (reply.method, reply.payload)
        return replies

    def _worker_gone(self, rank: int, method: str, error: grpc.RpcError) -> None:
        code = error.code()
        why = ("missed its deadline" if code == grpc.StatusCode.DEADLINE_EXCEEDED
               else f"failed ({code.name}: {error.details()})")
        self._dead = WorkerDiedError(f"worker rank {rank} at {self.addresses[rank]} {why} during "
                                     f"{method}; the engine cannot continue")
        logger.error("%s", self._dead)
        raise self._dead

    def execute_model(self, step: SchedulerOutput) -> ModelRunnerOutput:
        replies = self._fan_out(CALL_STEP, protocol.encode(step), self.step_timeout_s)
        for rank, (kind, payload) in sorted(replies.items()):
            if kind == REPLY_ERROR:
                reply = _REPLY_DECODER.decode(payload)
                raise self._step_failure(f"rank {rank}: {reply.error_type}: {reply.error}")
        return protocol.decode_output(replies[self.output_rank][1])

    def collective_rpc(self, method: str, args: tuple = (), kwargs: dict | None = None,
                       timeout_s: float | None = None) -> list[Any]:
        timeout_s = self.rpc_timeout_s if timeout_s is None else timeout_s
        request = protocol.encode(RpcRequest(method, list(args), kwargs or {}))
        replies = self._fan_out(CALL_RPC, request, timeout_s)
        return results_in_rank_order(method, {r: _REPLY_DECODER.decode(p)
                                              for r, (_, p) in replies.items()})

    # ---- health and shutdown -------------------------------------------------------------------
    def check_health(self) -> None:
        if self._dead is not None:
            raise self._dead

    def shutdown(self) -> None:
        if not self._close_workers(timeout_s=5.0):
            return
        for channel in self._channels:
            channel.close()
