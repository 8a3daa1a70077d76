"""What the engine returns (vLLM's ``RequestOutput`` / ``CompletionOutput``)."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from .step_timeline import StepCounters

logger = logging.getLogger(__name__)


@dataclass
class Logprob:
    logprob: float
    rank: int
    decoded_token: str | None = None


@dataclass
class CompletionOutput:
    index: int
    text: str
    token_ids: list[int]
    cumulative_logprob: float | None = None
    logprobs: list[dict[int, Logprob]] | None = None  # per generated token: id -> Logprob
    finish_reason: str | None = None  # "stop" | "length" | "abort"
    stop_reason: int | str | None = None  # the stop token id or stop string that ended it

    def finished(self) -> bool:
        return self.finish_reason is not None


@dataclass
class RequestMetrics:
    arrival_time: float
    first_scheduled_time: float | None = None
    first_token_time: float | None = None
    last_token_time: float | None = None
    finished_time: float | None = None
    num_preemptions: int = 0
    num_cached_tokens: int = 0


@dataclass
class RequestOutput:
    request_id: str
    prompt: str | None
    prompt_token_ids: list[int]
    outputs: list[CompletionOutput]
    finished: bool
    metrics: RequestMetrics | None = None
    num_cached_tokens: int = 0
    prompt_logprobs: None = None
    error: str | None = None  # the engine step that ran this request failed
    extra: dict = field(default_factory=dict)


@dataclass
class EngineStats:
    """What ``/metrics`` reads: the core's scheduler gauges plus the front end's token counters."""

    num_running: int
    num_waiting: int
    kv_cache_usage: float
    num_preemptions: int
    prompt_tokens: int
    generation_tokens: int
    prefix_cache_hits: int
    prefix_cache_queries: int
    steps: StepCounters | None = None  # the core's decode/mixed step times, as last reported

    @classmethod
    def build(cls, sched, prompt_tokens: int, generation_tokens: int,
              steps: StepCounters | None = None) -> "EngineStats":
        if sched is None:
            return cls(0, 0, 0.0, 0, prompt_tokens, generation_tokens, 0, 0, steps)
        return cls(sched.num_running, sched.num_waiting, sched.kv_cache_usage,
                   sched.num_preemptions, prompt_tokens, generation_tokens,
                   sched.prefix_cache_hits, sched.prefix_cache_queries, steps)
