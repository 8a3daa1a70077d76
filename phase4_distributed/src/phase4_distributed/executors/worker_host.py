"""One rank's ``Worker`` behind bytes: a step in, the encoded output out (output rank only), and
worker methods called by name. The ``mp`` worker process and the Ray actor both serve through it,
so the two executors cannot differ in what a message means."""

from __future__ import annotations

import importlib
import logging

from phase3_scheduling import protocol
from phase3_scheduling.engine_config import EngineConfig
from phase3_scheduling.protocol import RpcReply, RpcRequest
from phase3_scheduling.worker import Worker
from phase3_scheduling.worker.worker import ModelBuilder

from ..worker_builder import build_rank_model, init_rank_distributed, output_rank

logger = logging.getLogger(__name__)
DEFAULT_BUILDER = "phase4_distributed.worker_builder:build_rank_model"
_RPC_DECODER = protocol.msgspec.msgpack.Decoder(RpcRequest)


def resolve_builder(spec: str) -> ModelBuilder:
    """``"module:function"`` -> the function (the model builder a worker uses)."""
    if spec == DEFAULT_BUILDER:
        return build_rank_model
    module, _, name = spec.partition(":")
    return getattr(importlib.import_module(module), name)


class WorkerHost:
    def __init__(self, config: EngineConfig, rank: int, local_rank: int,
                 builder: ModelBuilder):
        self.config = config
        self.rank = rank
        parallel = config.parallel_config
        self.is_output_rank = rank == output_rank(parallel.tensor_parallel_size,
                                                  parallel.pipeline_parallel_size)
        self.worker = Worker(config, rank, local_rank, builder)
        self.last_method: str | None = None

    @classmethod
    def start(cls, config: EngineConfig, rank: int, local_rank: int, master_addr: str,
              master_port: int, builder: str = DEFAULT_BUILDER) -> "WorkerHost":
        """Join the distributed world, then create the worker (its model loads on ``load_model``)."""
        init_rank_distributed(config, rank, local_rank, master_addr, master_port)
        return cls(config, rank, local_rank, resolve_builder(builder))

    def execute(self, step_bytes: bytes) -> bytes | None:
        """Run one step; the encoded ``ModelRunnerOutput`` on the output rank, else ``None``."""
        output = self.worker.execute_model(protocol.decode_step(step_bytes))
        return protocol.encode(output) if self.is_output_rank else None

    def call(self, request_bytes: bytes) -> bytes:
        """Run ``worker.<method>(*args, **kwargs)``; errors come back inside the reply."""
        request = _RPC_DECODER.decode(request_bytes)
        self.last_method = request.method
        try:
            if request.method.startswith("_") or not hasattr(self.worker, request.method):
                raise AttributeError(f"Worker has no public method {request.method!r}")
            result = getattr(self.worker, request.method)(*request.args, **request.kwargs)
            return protocol.encode(RpcReply(result=result))
        except Exception as error:
            logger.exception("rank %d: %s failed", self.rank, request.method)
            return error_reply(error)


def error_reply(error: BaseException) -> bytes:
    return protocol.encode(RpcReply(error=str(error), error_type=type(error).__name__))
