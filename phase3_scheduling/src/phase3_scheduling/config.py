"""Engine configuration: ``EngineArgs`` (what a user passes) and the validated configs it yields."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from phase2_attention import CacheConfig

logger = logging.getLogger(__name__)

# async scheduling in the engine process: how long before the running step ends the next one is
# queued (docs/phase3.md; H100, B4 at 4 and 16 req/s: TTFT p50 -3.5 and -2.6 ms, TPOT unchanged)
DEFAULT_SCHEDULE_LEAD_MS = 2.0

# Most sequences in one step when not given: 256, and 1024 on a GPU of at least 70 GiB (vLLM
# 0.26's rule). B4's unlimited run sends 500 requests at once; 256 left half of them waiting
# until the first half finished (docs/benchmarks.md, thirteenth session).
DEFAULT_MAX_NUM_SEQS = 256
LARGE_GPU_MAX_NUM_SEQS = 1024
LARGE_GPU_GIB = 70.0


def default_max_num_seqs(device_type: str, device_memory_gib: float = 0.0) -> int:
    """The ``max_num_seqs`` a user gets without asking: more on a large GPU."""
    if device_type == "cuda" and device_memory_gib >= LARGE_GPU_GIB:
        return LARGE_GPU_MAX_NUM_SEQS
    return DEFAULT_MAX_NUM_SEQS


@dataclass
class SchedulerConfig:
    max_num_seqs: int = 256
    max_num_batched_tokens: int = 8192
    max_model_len: int = 4096
    enable_chunked_prefill: bool = True
    async_scheduling: bool = False  # schedule step N+1 while step N runs (one-worker GPU default)
    max_prefill_tokens_while_decoding: int = 0  # prompt tokens per step while decodes run (0: all)
    # async scheduling in the engine process: schedule the next step this long before the step in
    # flight is expected to end, so that requests arriving meanwhile join it (0: at once)
    schedule_lead_ms: float = 0.0

    def __post_init__(self) -> None:
        if self.schedule_lead_ms < 0:
            raise ValueError(f"schedule_lead_ms must be >= 0 (0: off), got {self.schedule_lead_ms}")
        if self.max_num_seqs < 1:
            raise ValueError(f"max_num_seqs must be >= 1, got {self.max_num_seqs}")
        if self.max_prefill_tokens_while_decoding < 0:
            raise ValueError(f"max_prefill_tokens_while_decoding must be >= 0 (0: no cap), got "
                             f"{self.max_prefill_tokens_while_decoding}")
        if self.max_num_batched_tokens < 1:
            raise ValueError(f"max_num_batched_tokens must be >= 1, got {self.max_num_batched_tokens}")
        if not self.enable_chunked_prefill and self.max_num_batched_tokens < self.max_model_len:
            raise ValueError(
                f"without chunked prefill max_num_batched_tokens ({self.max_num_batched_tokens}) "
                f"must be >= max_model_len ({self.max_model_len}) so every prompt fits one step"
            )


def parse_addresses(value: str | list[str]) -> list[str]:
    """``"a:1,b:2"`` or ``["a:1", "b:2"]`` -> ``["a:1", "b:2"]`` (the grpc executor's workers)."""
    parts = value.split(",") if isinstance(value, str) else list(value)
    return [part.strip() for part in parts if part.strip()]


@dataclass
class ParallelConfig:
    """How the model is split across workers (vLLM's names). ``world_size = tp * pp``."""

    tensor_parallel_size: int = 1
    pipeline_parallel_size: int = 1
    distributed_executor_backend: str | None = None  # "uni" | "mp" | "ray" | "grpc"
    worker_addresses: list[str] = field(default_factory=list)  # grpc: rank i's "host:port"

    def __post_init__(self) -> None:
        for name in ("tensor_parallel_size", "pipeline_parallel_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")

    @property
    def world_size(self) -> int:
        return self.tensor_parallel_size * self.pipeline_parallel_size

    @property
    def executor_name(self) -> str:
        """The executor to use: as asked, else ``uni`` for one worker and ``mp`` for several."""
        if self.distributed_executor_backend:
            return self.distributed_executor_backend
        return "uni" if self.world_size == 1 else "mp"


@dataclass
class EngineArgs:
    """Everything that configures an engine; names follow vLLM's ``EngineArgs``."""

    model: str | None = None  # built-in name or local HF directory (default: embedded SmolLM2)
    dtype: str = "auto"
    device: str | None = None
    load_format: str = "auto"  # "dummy": random weights, shape from model or hf_config
    hf_config: dict | None = None  # config.json-style dict for load_format="dummy" without files
    seed: int = 0
    max_model_len: int | None = None  # default: the model's, capped at 4096
    max_num_seqs: int | None = None  # default: default_max_num_seqs(device)
    max_num_batched_tokens: int | None = None
    enable_chunked_prefill: bool = True
    block_size: int = 16
    gpu_memory_utilization: float = 0.9
    kv_cache_gib: float = 1.0  # CPU KV cache size
    num_gpu_blocks_override: int | None = None
    enable_prefix_caching: bool = True
    enforce_eager: bool = False  # True: no CUDA graphs
    # decode batch sizes to capture (None: 1, 2, 4, 8, then every 16 up to max_num_seqs)
    cuda_graph_sizes: list[int] | None = None
    # mixed prefill+decode steps up to this many tokens replay piecewise graphs (0: eager)
    mixed_cuda_graph_max_tokens: int = 1024
    attention_backend: str | None = None  # default: best paged backend for the device
    kernel_impl: str | None = None
    tokenizer: str | None = None  # directory with tokenizer.json (default: the model's)
    tensor_parallel_size: int = 1
    pipeline_parallel_size: int = 1
    distributed_executor_backend: str | None = None  # "uni" | "mp" | "ray" | "grpc" (phase 4)
    async_scheduling: bool | None = None  # default: on for one worker on a GPU
    max_prefill_tokens_while_decoding: int = 0  # 0: no cap (measured: docs/benchmarks.md, B4)
    # None: DEFAULT_SCHEDULE_LEAD_MS with async scheduling, else 0 (off: schedule at once)
    schedule_lead_ms: float | None = None
    extra: dict = field(default_factory=dict)

    def parallel_config(self) -> ParallelConfig:
        return ParallelConfig(self.tensor_parallel_size, self.pipeline_parallel_size,
                              self.distributed_executor_backend,
                              parse_addresses(self.extra.get("worker_addresses", [])))

    def cache_config(self) -> CacheConfig:
        return CacheConfig(block_size=self.block_size, gpu_memory_utilization=self.gpu_memory_utilization,
                           cpu_kv_cache_gib=self.kv_cache_gib, num_blocks=self.num_gpu_blocks_override,
                           enable_prefix_caching=self.enable_prefix_caching)

    def scheduler_config(self, model_max_len: int, device_type: str = "cpu",
                         device_memory_gib: float = 0.0) -> SchedulerConfig:
        """Limits for the scheduler. The default token budget is 2048 on the CPU (a step's
        latency grows with it) and 8192 on a GPU, where a step of 8k tokens still costs little
        more than a decode step's weight reads (vLLM's default on large GPUs too); the default
        ``max_num_seqs`` is 256, 1024 on a GPU of 70 GiB or more."""
        max_len = self.max_model_len or min(model_max_len, 4096)
        if max_len > model_max_len:
            raise ValueError(f"max_model_len {max_len} exceeds the model's limit {model_max_len}")
        default_budget = 8192 if device_type == "cuda" else 2048
        batched = self.max_num_batched_tokens or (default_budget if self.enable_chunked_prefill
                                                  else max(max_len, default_budget))
        async_scheduling = self._async_scheduling(device_type)
        max_num_seqs = (default_max_num_seqs(device_type, device_memory_gib)
                        if self.max_num_seqs is None else self.max_num_seqs)
        return SchedulerConfig(max_num_seqs, batched, max_len, self.enable_chunked_prefill,
                               async_scheduling, self.max_prefill_tokens_while_decoding,
                               self._schedule_lead_ms(async_scheduling))

    def _schedule_lead_ms(self, async_scheduling: bool) -> float:
        """The lead by default wherever there is a step in flight to time it against (async
        scheduling); asked for without one, an error."""
        if self.schedule_lead_ms is None:
            return DEFAULT_SCHEDULE_LEAD_MS if async_scheduling else 0.0
        if self.schedule_lead_ms > 0 and not async_scheduling:
            raise ValueError("schedule_lead_ms times the next step against the one in flight: it "
                             "needs async scheduling (on by default for one worker on a GPU; "
                             "--async-scheduling elsewhere)")
        return self.schedule_lead_ms

    def _async_scheduling(self, device_type: str) -> bool:
        """Overlap the host's scheduling with the device's step: on by default for one worker on
        a GPU (on the CPU the step runs in the scheduling thread, so nothing overlaps); the
        multi-worker executors run one step at a time (or pipeline micro-batches instead)."""
        one_worker = self.parallel_config().executor_name == "uni"
        if self.async_scheduling is None:
            return device_type == "cuda" and one_worker
        if self.async_scheduling and not one_worker:
            raise ValueError("async_scheduling needs the in-process executor (one worker, "
                             f"distributed_executor_backend 'uni'), not "
                             f"{self.parallel_config().executor_name!r}")
        return self.async_scheduling
