"""Executors hide where the workers run. The engine core talks to one through
``execute_model(step)`` and ``collective_rpc(method, args)`` (run a worker method on every rank,
gather the results), and lets it run the start-up protocol (``initialize_from_config``): every
worker loads the model and reports its free KV memory, the minimum wins, all allocate that many
blocks, then warm up. Phase 3 runs one worker in-process (``uni``); phase 4 registers executors
whose workers are subprocesses, Ray actors or gRPC services (``mp``, ``ray``, ``grpc``)."""

from __future__ import annotations

import logging
import time
from abc import ABC, abstractmethod
from typing import Any, Callable, Protocol

from phase2_attention.kv_cache import num_blocks_for

from .engine_config import EngineConfig
from .executor_registry import register_executor
from .protocol import ModelRunnerOutput, SchedulerOutput
from .startup_timeline import StartupTimeline
from .worker import Worker

logger = logging.getLogger(__name__)


class WorkerDiedError(RuntimeError):
    """A worker process/actor/service is gone: the engine cannot continue."""


class PendingStep(Protocol):
    """A step handed to the workers whose output may not be there yet."""

    def result(self) -> ModelRunnerOutput: ...


class DeferredStep:
    """A step handed to the workers; ``result()`` calls ``wait`` (the executor's way to wait
    for that step's output)."""

    def __init__(self, wait: Callable[[], ModelRunnerOutput]):
        self.wait = wait

    def result(self) -> ModelRunnerOutput:
        return self.wait()


class DoneStep:
    """A step that already ran (executors that run one step at a time)."""

    def __init__(self, output: ModelRunnerOutput):
        self.output = output

    def result(self) -> ModelRunnerOutput:
        return self.output


class Executor(ABC):
    def __init__(self, config: EngineConfig):
        self.config = config
        self.graph_sizes: list[int] = []
        self._created = time.perf_counter()
        # start-up phases as the engine saw them (each the slowest rank's, RPCs included)
        self.timeline = StartupTimeline()

    def initialize_from_config(self) -> int:
        """The start-up protocol; returns the number of KV blocks every worker allocated."""
        timeline = self.timeline
        timeline.add("executor_init", time.perf_counter() - self._created)  # workers started
        with timeline.phase("load_model"):
            self.collective_rpc("load_model")
        with timeline.phase("memory_profile"):
            num_blocks = self._decide_num_blocks()
        with timeline.phase("kv_cache_alloc"):
            self.collective_rpc("initialize_cache", (num_blocks,))
        start = time.perf_counter()
        self.graph_sizes = self.collective_rpc("compile_or_warm_up_model")[0]
        self._add_warm_up_phases(time.perf_counter() - start)
        return num_blocks

    def _decide_num_blocks(self) -> int:
        """The configured block count, else the minimum every worker can hold."""
        num_blocks = self.config.cache_config.num_blocks
        if num_blocks is not None:
            return num_blocks
        available = self.collective_rpc("determine_available_memory")
        per_block = self.collective_rpc("kv_cache_bytes_per_block")
        num_blocks = min(num_blocks_for(a, p) for a, p in zip(available, per_block))
        logger.info("KV cache: %d blocks (workers reported %s bytes free)", num_blocks, available)
        return num_blocks

    def _add_warm_up_phases(self, seconds: float) -> None:
        """Split ``compile_or_warm_up_model``'s seconds into the Triton compile-ahead pass,
        warm-up, the small-batch GEMM tuning and graph capture as the slowest rank reported
        them (the rest is RPC and bookkeeping, under warm_up)."""
        reports = self.collective_rpc("startup_timings")
        ahead = max((r.get("compile_ahead", 0.0) for r in reports), default=0.0)
        capture = max((r.get("graph_capture", 0.0) for r in reports), default=0.0)
        tuning = max((r.get("gemm_tuning", 0.0) for r in reports), default=0.0)
        self.timeline.add("compile_ahead", ahead)
        self.timeline.add("warm_up", seconds - ahead - capture - tuning)
        self.timeline.add("gemm_tuning", tuning)
        self.timeline.add("graph_capture", capture)

    @property
    def startup_phases(self) -> dict[str, float]:
        """Seconds of each start-up phase, in the order they ran."""
        return dict(self.timeline.phases)

    @property
    def max_concurrent_batches(self) -> int:
        """How many steps may be in flight at once: 1, or the pipeline depth for executors
        whose stages run different micro-batches at the same time."""
        return 1

    @property
    def supports_async_output(self) -> bool:
        """Whether ``submit_step`` returns before the step's output is on the host, so that the
        engine may schedule and launch the next step meanwhile (async scheduling)."""
        return False

    @abstractmethod
    def execute_model(self, step: SchedulerOutput) -> ModelRunnerOutput: ...

    def submit_step(self, step: SchedulerOutput) -> PendingStep:
        """Hand a step to the workers without waiting for its output (pipelined executors
        override this; the others run it now)."""
        return DoneStep(self.execute_model(step))

    @abstractmethod
    def collective_rpc(self, method: str, args: tuple = (), kwargs: dict | None = None) -> list[Any]: ...

    def check_health(self) -> None:
        """Raise ``WorkerDiedError`` if a worker is gone (in-process workers never are)."""

    def shutdown(self) -> None:
        return None


class UniProcExecutor(Executor):
    """One worker, in this process: its methods are called directly, messages are not encoded."""

    def __init__(self, config: EngineConfig):
        super().__init__(config)
        self.worker = Worker(config)

    @property
    def supports_async_output(self) -> bool:
        return True

    def execute_model(self, step: SchedulerOutput) -> ModelRunnerOutput:
        return self.worker.execute_model(step)

    def submit_step(self, step: SchedulerOutput) -> PendingStep:
        if self.config.scheduler_config.async_scheduling:
            return self.worker.submit_step(step)  # launched; the output is read later
        return super().submit_step(step)

    def collective_rpc(self, method: str, args: tuple = (), kwargs: dict | None = None) -> list[Any]:
        return [getattr(self.worker, method)(*args, **(kwargs or {}))]

    def shutdown(self) -> None:
        self.worker.shutdown()


register_executor("uni", UniProcExecutor)
