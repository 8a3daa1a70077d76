"""A request's lifecycle inside the engine.

Every request carries ``num_computed_tokens``: how many of its tokens (prompt, then generated)
already have K/V in the cache. The scheduler only ever asks "how many more tokens of this
request run this step?", which makes prefill, chunked prefill, decode, prefix-cache hits and
recompute after preemption one code path.
"""

from __future__ import annotations

import logging
import enum
import time

from .detokenizer import IncrementalDetokenizer
from .outputs import Logprob, RequestMetrics
from .sampling_params import SamplingParams

logger = logging.getLogger(__name__)


class RequestStatus(enum.Enum):
    WAITING = "waiting"
    RUNNING = "running"
    PREEMPTED = "preempted"
    FINISHED_STOPPED = "finished_stopped"
    FINISHED_LENGTH = "finished_length"
    FINISHED_ABORTED = "finished_aborted"

    @property
    def finished(self) -> bool:
        return self.name.startswith("FINISHED")

    @property
    def finish_reason(self) -> str | None:
        return {"FINISHED_STOPPED": "stop", "FINISHED_LENGTH": "length",
                "FINISHED_ABORTED": "abort"}.get(self.name)


class Request:
    def __init__(self, request_id: str, prompt_token_ids: list[int], params: SamplingParams,
                 eos_token_ids: list[int], max_model_len: int,
                 detokenizer: IncrementalDetokenizer | None = None,
                 prompt: str | None = None, arrival_time: float | None = None,
                 parent_id: str | None = None, index: int = 0):
        self.request_id = request_id
        self.parent_id = parent_id or request_id
        self.index = index
        self.prompt = prompt
        self.prompt_token_ids = list(prompt_token_ids)
        self.output_token_ids: list[int] = []
        self.params = params
        self.eos_token_ids = [] if params.ignore_eos else list(eos_token_ids)
        limit = max_model_len - len(self.prompt_token_ids)
        self.max_tokens = limit if params.max_tokens is None else min(params.max_tokens, limit)
        self.detokenizer = detokenizer
        self.status = RequestStatus.WAITING
        self.num_computed_tokens = 0
        self.num_cached_blocks = 0  # full blocks already published to the prefix cache
        self.num_blocks_sent = 0  # block ids already sent to the workers
        self.stop_reason: int | str | None = None
        self.logprobs: list[dict[int, Logprob]] | None = [] if params.logprobs is not None else None
        self.cumulative_logprob = 0.0
        self.metrics = RequestMetrics(arrival_time=arrival_time or time.monotonic())

    @property
    def all_token_ids(self) -> list[int]:
        return self.prompt_token_ids + self.output_token_ids

    def token_slice(self, start: int, end: int) -> list[int]:
        """``all_token_ids[start:end]`` without building the whole list."""
        n = len(self.prompt_token_ids)
        if end <= n:
            return self.prompt_token_ids[start:end]
        if start >= n:
            return self.output_token_ids[start - n : end - n]
        return self.prompt_token_ids[start:] + self.output_token_ids[: end - n]

    @property
    def num_tokens(self) -> int:
        return len(self.prompt_token_ids) + len(self.output_token_ids)

    @property
    def is_finished(self) -> bool:
        return self.status.finished

    def append_token(self, token_id: int) -> None:
        """Record a sampled token and decide whether the request is done."""
        self.output_token_ids.append(token_id)
        n = len(self.output_token_ids)
        if self.detokenizer is not None:
            stop = self.detokenizer.add_token(token_id, check_stop=n >= self.params.min_tokens)
            if stop is not None:
                self.stop_reason, self.status = stop, RequestStatus.FINISHED_STOPPED
                return
        if n >= self.params.min_tokens:
            if token_id in self.eos_token_ids:
                self.status = RequestStatus.FINISHED_STOPPED
                return
            if token_id in self.params.stop_token_ids:
                self.stop_reason, self.status = token_id, RequestStatus.FINISHED_STOPPED
                return
        if n >= self.max_tokens:
            self.status = RequestStatus.FINISHED_LENGTH
