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

from .core_messages import EngineCoreRequest

logger = logging.getLogger(__name__)


class RequestStatus(enum.Enum):
    WAITING = "waiting"
    RUNNING = "running"
    PREEMPTED = "preempted"
    FINISHED_STOPPED = "finished_stopped"
    FINISHED_LENGTH = "finished_length"
    FINISHED_ABORTED = "finished_aborted"
    FINISHED_ERROR = "finished_error"

    @property
    def finished(self) -> bool:
        return self.name.startswith("FINISHED")

    @property
    def finish_reason(self) -> str | None:
        return {"FINISHED_STOPPED": "stop", "FINISHED_LENGTH": "length",
                "FINISHED_ABORTED": "abort", "FINISHED_ERROR": "error"}.get(self.name)


class Request:
    """The engine core's view of one sequence: its tokens, how many are computed, when it stops.
    Text, stop strings and logprob objects live in the front end (``OutputProcessor``)."""

    def __init__(self, core: EngineCoreRequest, max_model_len: int):
        self.request_id = core.request_id
        self.prompt_token_ids = list(core.prompt_token_ids)
        self.output_token_ids: list[int] = []
        self.core = core
        self.sampling = core.sampling
        self.eos_token_ids = [] if core.ignore_eos else list(core.eos_token_ids)
        self.stop_token_ids = core.stop_token_ids
        self.min_tokens = core.min_tokens
        limit = max_model_len - len(self.prompt_token_ids)
        self.max_tokens = limit if core.max_tokens is None else min(core.max_tokens, limit)
        self.status = RequestStatus.WAITING
        self.num_computed_tokens = 0
        self.num_cached_blocks = 0  # full blocks already published to the prefix cache
        self.num_blocks_sent = 0  # block ids the workers hold for it
        self.num_tokens_sent = 0  # token ids the workers hold for it (0: not sent yet)
        # async scheduling: tokens scheduled in steps whose output is not back yet, and how
        # many of those steps will sample a token (its id is known only on the device so far)
        self.num_in_flight_tokens = 0
        self.num_output_placeholders = 0
        self.stop_reason: int | None = None
        self.arrival_time = core.arrival_time or time.monotonic()
        self.first_scheduled_time: float | None = None
        self.num_preemptions = 0
        self.num_cached_tokens = 0

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
    def needs_own_outputs_to_sample(self) -> bool:
        """Sampling reads this request's previous outputs on the host (penalties, min_tokens),
        so a step cannot be scheduled before the last one's token is back."""
        s = self.sampling
        return (self.min_tokens > 0 or s.repetition_penalty != 1 or s.presence_penalty != 0
                or s.frequency_penalty != 0)

    @property
    def scheduled_end(self) -> int:
        """Tokens computed or in steps in flight: where the next scheduled token starts."""
        return self.num_computed_tokens + self.num_in_flight_tokens

    def forget_in_flight(self) -> None:
        """Preempted or restarted: the steps in flight no longer count for it."""
        self.num_in_flight_tokens = 0
        self.num_output_placeholders = 0

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
        if n >= self.min_tokens:
            if token_id in self.eos_token_ids:
                self.status = RequestStatus.FINISHED_STOPPED
                return
            if token_id in self.stop_token_ids:
                self.stop_reason, self.status = token_id, RequestStatus.FINISHED_STOPPED
                return
        if n >= self.max_tokens:
            self.status = RequestStatus.FINISHED_LENGTH
