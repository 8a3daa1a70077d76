"""``LLMEngine``: the engine core and its front end in one process, one ``step()`` at a time.

    add_request: InputProcessor (tokenize, validate, fan out n) -> EngineCore.add_request
    step:        EngineCore.step -> OutputProcessor (detokenize, stop strings) -> RequestOutput

The same ``EngineCore`` runs in its own process behind ``AsyncMPClient`` for the server; this
class is the offline path (``LLM``) and the reference the multiprocess path is tested against.
"""

from __future__ import annotations

import itertools
import logging
import time
from collections import defaultdict
from pathlib import Path
from typing import Sequence

from shared.tokenizer import Tokenizer

from .config import EngineArgs
from .engine_config import EngineConfig, resolve_engine_config
from .engine_core import EngineCore
from .executor import Executor
from .gc_heap import freeze_heap_for_engine, unfreeze_heap
from .input_processor import InputProcessor, ModelLimits
from .output_processor import OutputProcessor
from .outputs import EngineStats, RequestOutput
from .sampling_params import SamplingParams

logger = logging.getLogger(__name__)


def load_tokenizer(config: EngineConfig) -> Tokenizer | None:
    if config.tokenizer_dir and (Path(config.tokenizer_dir) / "tokenizer.json").is_file():
        return Tokenizer(config.tokenizer_dir)
    return None


def model_limits(config: EngineConfig, tokenizer: Tokenizer | None, num_blocks: int) -> ModelLimits:
    eos = (tokenizer.eos_token_ids if tokenizer else []) or config.model_config.eos_token_ids
    return ModelLimits(config.model_config.vocab_size, config.max_model_len, num_blocks,
                       config.cache_config.block_size, list(eos))


class LLMEngine:
    def __init__(self, args: EngineArgs, executor_class: type[Executor] | None = None):
        self.args = args
        self.config = resolve_engine_config(args)
        self.core = EngineCore(self.config, executor_class)
        self.tokenizer = load_tokenizer(self.config)
        self.limits = model_limits(self.config, self.tokenizer, self.core.num_blocks)
        self.inputs = InputProcessor(self.tokenizer, self.limits)
        self.outputs = OutputProcessor(self.tokenizer)
        self._counter = itertools.count()
        self.prompt_tokens = 0
        self.generation_tokens = 0
        self.timings: dict[str, float] = defaultdict(float)
        # on a GPU the start-up heap stays out of the collector's way until shutdown (gc_heap.py)
        self._gc_threshold = freeze_heap_for_engine(self.config.device)

    # ---- what callers read ---------------------------------------------------------------------
    @property
    def model_config(self):
        return self.config.model_config

    @property
    def max_model_len(self) -> int:
        return self.config.max_model_len

    @property
    def eos_token_ids(self) -> list[int]:
        return self.limits.eos_token_ids

    @property
    def scheduler(self):
        return self.core.scheduler

    @property
    def kv_manager(self):
        return self.core.kv_manager

    @property
    def executor(self) -> Executor:
        return self.core.executor

    @property
    def info(self) -> dict:
        """A summary for benchmarks and demos."""
        c = self.config
        return dict(num_blocks=self.core.num_blocks, block_size=c.cache_config.block_size,
                    model_dir=c.model_dir, device=c.device, dtype=f"torch.{c.dtype}",
                    backend=c.attention_backend, graph_sizes=list(self.executor.graph_sizes),
                    startup_seconds=self.core.startup_seconds)

    # ---- requests ------------------------------------------------------------------------------
    def tokenize_prompt(self, prompt: str | Sequence[int]) -> tuple[str | None, list[int]]:
        return self.inputs.tokenize_prompt(prompt)

    def validate_prompt(self, ids: list[int]) -> None:
        self.inputs.validate_prompt(ids)

    def add_request(self, request_id: str | None, prompt: str | Sequence[int],
                    params: SamplingParams | None = None, arrival_time: float | None = None,
                    stream: bool = True) -> str:
        """Queue a request (``n`` child sequences for ``params.n > 1``); returns its id.
        ``stream=False``: ``step`` reports it only once finished (no per-token output objects)."""
        params = params or SamplingParams()
        request_id = request_id or f"req-{next(self._counter)}"
        if request_id in self.outputs.requests:
            raise ValueError(f"request id {request_id!r} is already in use")
        text, ids = self.inputs.tokenize_prompt(prompt)
        arrival = arrival_time or time.monotonic()
        core_requests = self.inputs.core_requests(request_id, ids, params, arrival)
        self.outputs.add_request(request_id, text, ids, params,
                                 [r.request_id for r in core_requests], arrival, stream)
        for request in core_requests:
            self.core.add_request(request)
        self.prompt_tokens += len(ids)
        return request_id

    def abort_request(self, request_ids: str | Sequence[str]) -> None:
        for rid in [request_ids] if isinstance(request_ids, str) else request_ids:
            self.core.abort_requests(self.outputs.abort_request(rid))

    def has_unfinished_requests(self) -> bool:
        """Requests not done, or steps still in flight (their outputs must be collected)."""
        return self.outputs.has_unfinished_requests() or bool(self.core.batch_queue)

    def get_num_unfinished_requests(self) -> int:
        return self.outputs.get_num_unfinished_requests()

    # ---- the loop ------------------------------------------------------------------------------
    def step(self) -> list[RequestOutput]:
        t0 = time.perf_counter()
        core_outputs = self.core.step()
        t1 = time.perf_counter()
        processed = self.outputs.process_outputs(core_outputs.outputs)
        if processed.abort_ids:
            self.core.abort_requests(processed.abort_ids)
        self.generation_tokens += sum(len(o.new_token_ids) for o in core_outputs.outputs)
        self.timings["core_step"] += t1 - t0
        self.timings["output_processing"] += time.perf_counter() - t1
        self.timings["steps"] += 1
        return processed.request_outputs

    def get_stats(self) -> EngineStats:
        return EngineStats.build(self.core.scheduler.stats(), self.prompt_tokens,
                                 self.generation_tokens, self.core.step_clock.counters.copy())

    def shutdown(self) -> None:
        self.core.shutdown()
        if self._gc_threshold is not None:
            unfreeze_heap(self._gc_threshold)
            self._gc_threshold = None
