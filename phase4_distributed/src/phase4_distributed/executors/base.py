"""What the out-of-process executors share: the world they drive, which rank answers a step,
and the rule for a failed step (one worker: only that step's requests fail; several: the ranks
may be out of step, so the engine is failed)."""

from __future__ import annotations

import logging
from abc import abstractmethod
from typing import Any

from phase3_scheduling.engine_config import EngineConfig
from phase3_scheduling.executor import Executor, WorkerDiedError

from ..worker_builder import output_rank
from .errors import WorkerStepError

logger = logging.getLogger(__name__)


class RankedExecutor(Executor):
    def __init__(self, config: EngineConfig):
        super().__init__(config)
        parallel = config.parallel_config
        self.world_size = parallel.world_size
        self.output_rank = output_rank(parallel.tensor_parallel_size,
                                       parallel.pipeline_parallel_size)
        self._dead: WorkerDiedError | None = None
        self._closed = False

    @abstractmethod
    def collective_rpc(self, method: str, args: tuple = (), kwargs: dict | None = None,
                       timeout_s: float | None = None) -> list[Any]:
        """``Executor.collective_rpc``, waiting at most ``timeout_s`` (default: the executor's)."""

    def _step_failure(self, message: str) -> Exception:
        """The error to raise for a step that failed on a rank (``message`` names it)."""
        if self.world_size == 1:
            return WorkerStepError(message)
        self._dead = WorkerDiedError(f"a step failed on {message}; the ranks are out of step")
        return self._dead

    def _close_workers(self, timeout_s: float) -> bool:
        """Mark closed and send ``shutdown`` to live workers; False if already closed."""
        if self._closed:
            return False
        self._closed = True
        if self._dead is None:
            try:
                self.collective_rpc("shutdown", timeout_s=timeout_s)
            except Exception as error:  # the caller releases the workers either way
                logger.warning("workers did not shut down cleanly: %s", error)
        return True
