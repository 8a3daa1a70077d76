"""``Worker``: one rank. The executor drives every worker through the same calls, in order:

    load_model -> determine_available_memory -> initialize_cache(num_blocks)
               -> compile_or_warm_up_model -> execute_model(step)*

The engine decides the config (``EngineConfig``) and the number of KV blocks (the minimum the
workers report); a worker only reports and obeys. Every method takes and returns plain data, so
the same calls work in-process, in a subprocess, a Ray actor or a gRPC service.
"""

from __future__ import annotations

import logging
import time
from typing import Callable

import torch

from phase1_kernels.cpu_threads import configure_cpu_threads
from phase1_kernels.loader import build_model
from phase1_kernels.models.llama import LlamaForCausalLM
from phase2_attention.kv_cache import available_kv_cache_bytes, bytes_per_block

from ..engine_config import EngineConfig
from ..protocol import ModelRunnerOutput, SchedulerOutput
from ..startup_timeline import StartupTimeline
from .async_output import StepOutput
from .model_runner import ModelRunner, RunnerModel

logger = logging.getLogger(__name__)

# (config, rank, device) -> model; phase 4 injects a builder of this rank's TP shard / PP stage
ModelBuilder = Callable[[EngineConfig, int, torch.device], RunnerModel]


def build_single_rank_model(config: EngineConfig, rank: int, device: torch.device) -> LlamaForCausalLM:
    """The whole model on one device, through phase 1's ``build_model``."""
    from pathlib import Path

    model_dir = None if config.model_dir is None else Path(config.model_dir)
    return build_model(config.model_config, model_dir, config.load_format, config.dtype, device,
                       config.attention_backend, kernel_impl=config.kernel_impl, seed=config.seed)


class Worker:
    def __init__(self, config: EngineConfig, rank: int = 0, local_rank: int = 0,
                 model_builder: ModelBuilder | None = None):
        self.config = config
        self.rank = rank
        self.device = torch.device(config.device if config.device == "cpu" else f"cuda:{local_rank}")
        if self.device.type == "cuda":
            torch.cuda.set_device(self.device)
        else:
            configure_cpu_threads()  # intra-op threads on the usable cores, pinned, no oversubscription
        self.model_builder = model_builder or build_single_rank_model
        self.model: RunnerModel | None = None
        self.runner: ModelRunner | None = None
        self.load_seconds = 0.0
        self.timeline = StartupTimeline()  # this rank's start-up phases (``startup_timings``)

    @property
    def _model(self) -> RunnerModel:
        assert self.model is not None, "load_model() has not run (or shutdown() has)"
        return self.model

    @property
    def _runner(self) -> ModelRunner:
        assert self.runner is not None, "load_model() has not run (or shutdown() has)"
        return self.runner

    def load_model(self) -> None:
        start = time.perf_counter()
        self.model = self.model_builder(self.config, self.rank, self.device)
        self.runner = ModelRunner(self.config, self.model, self.device)
        self.load_seconds = time.perf_counter() - start
        self.timeline.add("load_model", self.load_seconds)
        logger.info("rank %d loaded the model in %.1f s", self.rank, self.load_seconds)

    def determine_available_memory(self) -> int:
        """Bytes this rank can give its KV cache (on a GPU: after a profiled forward)."""
        sched = self.config.scheduler_config
        with self.timeline.phase("memory_profile"):
            return available_kv_cache_bytes(self._model, self.config.cache_config,
                                            sched.max_num_batched_tokens)

    def kv_cache_bytes_per_block(self) -> int:
        return bytes_per_block(self._model, self.config.cache_config.block_size)

    def initialize_cache(self, num_blocks: int) -> None:
        with self.timeline.phase("kv_cache_alloc"):
            self._runner.initialize_cache(num_blocks)

    def compile_or_warm_up_model(self) -> list[int]:
        """Warm up and capture graphs; returns the captured decode batch sizes."""
        self._runner.warm_up_and_capture()
        self.timeline.update(self._runner.graphs.timings)
        return list(self._runner.graphs.sizes)

    def startup_timings(self) -> dict[str, float]:
        """Seconds of this rank's start-up phases so far, in the order they ran."""
        return dict(self.timeline.phases)

    def execute_model(self, step: SchedulerOutput) -> ModelRunnerOutput:
        return self._runner.execute_model(step)

    def submit_step(self, step: SchedulerOutput) -> StepOutput:
        """Launch a step without waiting for its output (async scheduling, in-process only)."""
        return self._runner.submit(step)

    def get_timings(self) -> dict[str, float]:
        """Seconds spent preparing inputs and running (forward + sampling) per step kind."""
        return dict(self._runner.timings)

    def num_requests(self) -> int:
        return len(self._runner.batch)

    def ping(self) -> int:
        return self.rank

    def shutdown(self) -> None:
        self.runner = None
        self.model = None
