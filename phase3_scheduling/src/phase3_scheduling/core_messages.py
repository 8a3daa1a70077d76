"""Messages between the front end (tokenizer, detokenizer, stop strings, outputs per request) and
the engine core (scheduler + executor): requests in, one ``EngineCoreOutputs`` per step out.
msgspec structs, so the same objects serve an in-process core and one in its own process."""

from __future__ import annotations

import msgspec

from .protocol import WireSamplingParams
from .sampling_params import SamplingParams
from .step_timeline import StepCounters


class EngineCoreRequest(msgspec.Struct, array_like=True, frozen=True):
    request_id: str
    prompt_token_ids: list[int]
    sampling: WireSamplingParams
    max_tokens: int | None
    min_tokens: int = 0
    stop_token_ids: list[int] = []
    ignore_eos: bool = False
    eos_token_ids: list[int] = []
    arrival_time: float = 0.0

    @classmethod
    def build(cls, request_id: str, prompt_token_ids: list[int], params: SamplingParams,
              eos_token_ids: list[int], arrival_time: float) -> "EngineCoreRequest":
        eos = [] if params.ignore_eos else eos_token_ids
        return cls(request_id, list(prompt_token_ids), WireSamplingParams.from_params(params, eos),
                   params.max_tokens, params.min_tokens, list(params.stop_token_ids or []),
                   params.ignore_eos, list(eos), arrival_time)


class TokenLogprobs(msgspec.Struct, array_like=True):
    """Logprobs of one generated token: its own and rank, and the top-k ids/logprobs."""

    logprob: float
    rank: int
    top_ids: list[int]
    top_logprobs: list[float]


class EngineCoreOutput(msgspec.Struct, array_like=True, omit_defaults=True):
    request_id: str
    new_token_ids: list[int]
    finish_reason: str | None = None  # "stop" | "length" | "abort" | "error"
    stop_reason: int | None = None
    logprobs: list[TokenLogprobs] | None = None
    num_cached_tokens: int = 0
    first_scheduled_time: float | None = None
    num_preemptions: int = 0
    error: str | None = None


class SchedulerStats(msgspec.Struct, array_like=True):
    num_running: int = 0
    num_waiting: int = 0
    kv_cache_usage: float = 0.0
    num_preemptions: int = 0
    prefix_cache_hits: int = 0
    prefix_cache_queries: int = 0
    num_free_blocks: int = 0
    num_blocks: int = 0


class EngineCoreOutputs(msgspec.Struct, array_like=True):
    outputs: list[EngineCoreOutput] = []
    stats: SchedulerStats | None = None
    timestamp: float = 0.0
    steps: StepCounters | None = None  # cumulative decode/mixed step times (step_timeline.py)
