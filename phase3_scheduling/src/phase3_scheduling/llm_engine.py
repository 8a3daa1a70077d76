"""``LLMEngine``: requests in, outputs out, one ``step()`` at a time.

    add_request -> [scheduler.schedule -> executor.execute_model -> scheduler.update_from_output]*
                -> RequestOutput

The engine owns the tokenizer, the scheduler and the KV-cache manager (block bookkeeping); the
executor owns the model and the cache memory. ``n > 1`` fans out into child requests that share
the prompt's cached blocks and are gathered back into one ``RequestOutput``.
"""

from __future__ import annotations

import itertools
import time
from pathlib import Path
from collections import defaultdict
from dataclasses import dataclass
from typing import Sequence

from phase2_attention import KVCacheManager
from shared.tokenizer import Tokenizer

from .config import EngineArgs
from .detokenizer import IncrementalDetokenizer
from .executor import Executor, UniProcExecutor
from .outputs import CompletionOutput, RequestOutput
from .request import Request, RequestStatus
from .sampling_params import SamplingParams
from .scheduler import Scheduler
from .validation import (PromptTooLongError, RequestLimits, RequestValidationError, check_prompt_ids,
                         check_text, validate_request)

__all__ = ["EngineStats", "LLMEngine", "PromptTooLongError"]


@dataclass
class EngineStats:
    num_running: int
    num_waiting: int
    kv_cache_usage: float
    num_preemptions: int
    prompt_tokens: int
    generation_tokens: int
    prefix_cache_hits: int
    prefix_cache_queries: int


class LLMEngine:
    def __init__(self, args: EngineArgs, executor_class: type[Executor] = UniProcExecutor):
        self.args = args
        self.executor = executor_class(args)
        info = self.executor.collective_rpc("describe")[0]
        self.info = info
        self.model_config = info["model_config"]
        self.scheduler_config = info["scheduler_config"]
        self.max_model_len = self.scheduler_config.max_model_len
        self.tokenizer = None
        if args.tokenizer:
            self.tokenizer = Tokenizer(args.tokenizer)
        elif info["model_dir"] and (Path(info["model_dir"]) / "tokenizer.json").is_file():
            self.tokenizer = Tokenizer(info["model_dir"])
        eos = self.tokenizer.eos_token_ids if self.tokenizer else []
        self.eos_token_ids = eos or self.model_config.eos_token_ids
        self.kv_manager = KVCacheManager(info["num_blocks"], info["block_size"],
                                         args.enable_prefix_caching)
        self.scheduler = Scheduler(self.scheduler_config, self.kv_manager)
        self.limits = RequestLimits(self.model_config.vocab_size, self.max_model_len,
                                    (info["num_blocks"] - 1) * info["block_size"])
        self._children: dict[str, list[Request]] = {}
        self._stream: dict[str, bool] = {}
        self._counter = itertools.count()
        self.prompt_tokens = 0
        self.generation_tokens = 0
        self.timings: dict[str, float] = defaultdict(float)

    # ---- requests ------------------------------------------------------------------------------
    def tokenize_prompt(self, prompt: str | Sequence[int]) -> tuple[str | None, list[int]]:
        if isinstance(prompt, str):
            if self.tokenizer is None:
                raise RequestValidationError("this engine has no tokenizer: pass prompt token ids",
                                             "prompt")
            check_text(prompt, "prompt")
            return prompt, self.tokenizer.encode(prompt)
        ids = list(prompt)
        check_prompt_ids(ids, self.limits)
        return None, ids

    def validate_prompt(self, ids: list[int]) -> None:
        check_prompt_ids(ids, self.limits)

    def add_request(self, request_id: str | None, prompt: str | Sequence[int],
                    params: SamplingParams | None = None, arrival_time: float | None = None,
                    stream: bool = True) -> str:
        """Queue a request (``n`` child sequences for ``params.n > 1``); returns its id.
        ``stream=False``: ``step`` reports it only once finished (no per-token output objects)."""
        params = params or SamplingParams()
        request_id = request_id or f"req-{next(self._counter)}"
        if request_id in self._children:
            raise ValueError(f"request id {request_id!r} is already in use")
        text, ids = self.tokenize_prompt(prompt)
        validate_request(ids, params, self.limits)
        arrival = arrival_time or time.monotonic()
        children = []
        for i in range(params.n):
            child_params = params if params.n == 1 else params.child(i)
            child_id = request_id if params.n == 1 else f"{request_id}#{i}"
            detok = None
            if self.tokenizer is not None:
                detok = IncrementalDetokenizer(self.tokenizer, ids, child_params.stop_strings,
                                               child_params.skip_special_tokens)
            children.append(Request(child_id, ids, child_params, self.eos_token_ids, self.max_model_len,
                                    detok, text, arrival, parent_id=request_id, index=i))
        self._children[request_id] = children
        self._stream[request_id] = stream
        for child in children:
            self.scheduler.add_request(child)
        self.prompt_tokens += len(ids)
        return request_id

    def abort_request(self, request_ids: str | Sequence[str]) -> None:
        for rid in [request_ids] if isinstance(request_ids, str) else request_ids:
            self._stream.pop(rid, None)
            for child in self._children.pop(rid, []):
                self.scheduler.finish_request(child.request_id, RequestStatus.FINISHED_ABORTED)

    def has_unfinished_requests(self) -> bool:
        return bool(self._children)

    def get_num_unfinished_requests(self) -> int:
        return len(self._children)

    # ---- the loop ------------------------------------------------------------------------------
    def step(self) -> list[RequestOutput]:
        t0 = time.perf_counter()
        sched = self.scheduler.schedule()
        if sched.is_empty:
            if self.scheduler.waiting and not self.scheduler.running:
                head = self.scheduler.waiting[0]
                self.abort_request(head.parent_id)
                raise RuntimeError(
                    f"request {head.parent_id!r} needs {head.num_tokens} tokens of KV cache, more "
                    f"than the whole cache ({self.kv_manager.pool.num_blocks - 1} blocks of "
                    f"{self.kv_manager.block_size}); it was aborted")
            return []
        t1 = time.perf_counter()
        result = self.executor.execute_model(sched)
        t2 = time.perf_counter()
        touched = self.scheduler.update_from_output(sched, result.sampled, result.logprobs)
        self.generation_tokens += len(result.sampled)
        parents = dict.fromkeys(r.parent_id for r in touched)
        outputs = [self._output(pid) for pid in parents if pid in self._children
                   and (self._stream[pid] or all(c.is_finished for c in self._children[pid]))]
        self.timings["schedule"] += t1 - t0
        self.timings["execute"] += t2 - t1
        self.timings["update"] += time.perf_counter() - t2
        self.timings["steps"] += 1
        return outputs

    def _output(self, parent_id: str) -> RequestOutput:
        children = self._children[parent_id]
        finished = all(c.is_finished for c in children)
        outputs = []
        for c in children:
            text = c.detokenizer.visible_text(c.is_finished) if c.detokenizer else ""
            outputs.append(CompletionOutput(
                index=c.index, text=text, token_ids=list(c.output_token_ids),
                cumulative_logprob=c.cumulative_logprob if c.params.logprobs is not None else None,
                logprobs=c.logprobs, finish_reason=c.status.finish_reason, stop_reason=c.stop_reason))
        first = children[0]
        out = RequestOutput(parent_id, first.prompt, first.prompt_token_ids, outputs, finished,
                            metrics=first.metrics, num_cached_tokens=first.metrics.num_cached_tokens)
        if finished:
            del self._children[parent_id]
            del self._stream[parent_id]
        return out

    def get_stats(self) -> EngineStats:
        pool = self.kv_manager.pool
        return EngineStats(len(self.scheduler.running), len(self.scheduler.waiting), pool.usage,
                           self.scheduler.num_preemptions, self.prompt_tokens, self.generation_tokens,
                           pool.stats["hits"], pool.stats["queries"])

    def shutdown(self) -> None:
        self.executor.shutdown()
