"""Executors hide where the model runs. The engine talks to one through two calls:
``execute_model(scheduler_output)`` and ``collective_rpc(method, args)`` (run a method on every
worker, gather the results). Phase 1-3 run in-process; phase 4 adds executors whose workers are
subprocesses, Ray actors or gRPC services, without touching the engine."""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any

from .config import EngineArgs
from .executor_registry import register_executor
from .model_runner import ModelRunner, ModelRunnerOutput
from .scheduler import SchedulerOutput


class Executor(ABC):
    def __init__(self, args: EngineArgs):
        self.args = args

    @abstractmethod
    def execute_model(self, scheduler_output: SchedulerOutput) -> ModelRunnerOutput: ...

    @abstractmethod
    def collective_rpc(self, method: str, args: tuple = (), kwargs: dict | None = None) -> list[Any]: ...

    def shutdown(self) -> None:
        return None


class UniProcExecutor(Executor):
    """One worker, in this process: the model runner is called directly."""

    def __init__(self, args: EngineArgs):
        super().__init__(args)
        self.worker = ModelRunner(args)

    def execute_model(self, scheduler_output: SchedulerOutput) -> ModelRunnerOutput:
        return self.worker.execute_model(scheduler_output)

    def collective_rpc(self, method: str, args: tuple = (), kwargs: dict | None = None) -> list[Any]:
        return [getattr(self.worker, method)(*args, **(kwargs or {}))]


register_executor("uni", UniProcExecutor)
