"""The continuous-batching scheduler (vLLM v1 style, no prefill/decode phases).

Each step has a token budget (``max_num_batched_tokens``) and a sequence cap
(``max_num_seqs``). Running requests are served first, in arrival order, each with as many of its
remaining tokens as fit (1 for a decode; a chunk for a long prompt); then waiting requests are
admitted first-come-first-served while the budget, the cap and the free KV blocks allow, after
looking up their prompt in the prefix cache. When a running request cannot get a block, the most
recently admitted running request is preempted: its blocks are freed and it goes back to the
front of the queue to be recomputed later (its generated tokens are kept).
"""

from __future__ import annotations

import logging
import time
from collections import deque
from dataclasses import dataclass, field

from phase2_attention import KVCacheManager
from phase2_attention.block_pool import OutOfKVBlocksError

from .config import SchedulerConfig
from .request import Request, RequestStatus

logger = logging.getLogger(__name__)


@dataclass
class ScheduledRequest:
    """One request's share of a step: plain data, so it can cross a process boundary."""

    request_id: str
    token_ids: list[int]  # the tokens to run now
    start_position: int  # = num_computed_tokens before this step
    new_block_ids: list[int]  # blocks the worker has not seen yet, from index block_offset
    block_offset: int
    sample: bool  # the step reaches the end of the known tokens: a new token is sampled
    params: object  # SamplingParams
    prompt_token_ids: list[int]
    output_token_ids: list[int]
    eos_token_ids: list[int]

    @property
    def num_tokens(self) -> int:
        return len(self.token_ids)


@dataclass
class SchedulerOutput:
    scheduled: list[ScheduledRequest] = field(default_factory=list)  # decodes first
    preempted_ids: list[str] = field(default_factory=list)
    finished_ids: list[str] = field(default_factory=list)  # since the last step (workers drop state)

    @property
    def num_tokens(self) -> int:
        return sum(s.num_tokens for s in self.scheduled)

    @property
    def is_empty(self) -> bool:
        return not self.scheduled


class Scheduler:
    def __init__(self, config: SchedulerConfig, kv_manager: KVCacheManager):
        self.config = config
        self.kv = kv_manager
        self.waiting: deque[Request] = deque()
        self.running: list[Request] = []
        self.requests: dict[str, Request] = {}
        self._finished_ids: list[str] = []
        self.num_preemptions = 0

    # ---- queue management ------------------------------------------------------------------
    def add_request(self, request: Request) -> None:
        self.requests[request.request_id] = request
        self.waiting.append(request)

    def finish_request(self, request_id: str, status: RequestStatus) -> Request | None:
        """Abort or complete: free its blocks and forget it."""
        request = self.requests.pop(request_id, None)
        if request is None:
            return None
        request.status = status
        if request in self.running:
            self.running.remove(request)
        elif request in self.waiting:
            self.waiting.remove(request)
        self.kv.free(request_id)
        self._finished_ids.append(request_id)
        request.metrics.finished_time = time.monotonic()
        return request

    @property
    def num_unfinished(self) -> int:
        return len(self.waiting) + len(self.running)

    # ---- one step ------------------------------------------------------------------------------
    def schedule(self) -> SchedulerOutput:
        budget = self.config.max_num_batched_tokens
        out = SchedulerOutput()
        plan: list[tuple[Request, int]] = []

        index = 0
        while index < len(self.running) and budget > 0:
            request = self.running[index]
            n = self._tokens_for(request, budget)
            if n == 0:
                index += 1
                continue
            while True:
                try:
                    self.kv.allocate_slots(request.request_id, request.num_computed_tokens + n)
                    break
                except OutOfKVBlocksError:
                    victim = self.running[-1]
                    self._preempt(victim)
                    out.preempted_ids.append(victim.request_id)
                    if victim is request:
                        break
            if request.status is not RequestStatus.RUNNING:
                break  # preempted itself: nothing smaller to give up
            plan.append((request, n))
            budget -= n
            index += 1

        while (self.waiting and budget > 0 and not out.preempted_ids
               and len(self.running) < self.config.max_num_seqs):
            request = self.waiting[0]
            hits, cached = [], 0
            if request.num_computed_tokens == 0:
                hits, cached = self.kv.get_computed_blocks(request.all_token_ids)
            request.num_computed_tokens = cached
            request.num_cached_blocks = len(hits)
            n = self._tokens_for(request, budget)
            if n == 0 or not self.kv.can_allocate(request.request_id, cached + n, hits):
                request.num_computed_tokens = 0
                break
            self.kv.allocate_slots(request.request_id, cached + n, hits)
            self.waiting.popleft()
            request.status = RequestStatus.RUNNING
            request.metrics.num_cached_tokens = cached
            if request.metrics.first_scheduled_time is None:
                request.metrics.first_scheduled_time = time.monotonic()
            self.running.append(request)
            plan.append((request, n))
            budget -= n

        plan.sort(key=lambda item: not (item[1] == 1 and item[0].num_computed_tokens > 0))
        for request, n in plan:
            start = request.num_computed_tokens
            sent = request.num_blocks_sent
            new_blocks = self.kv.block_ids(request.request_id, sent)
            request.num_blocks_sent = sent + len(new_blocks)
            out.scheduled.append(ScheduledRequest(
                request_id=request.request_id, token_ids=request.token_slice(start, start + n),
                start_position=start, new_block_ids=new_blocks, block_offset=sent,
                sample=start + n == request.num_tokens, params=request.params,
                prompt_token_ids=request.prompt_token_ids,
                output_token_ids=request.output_token_ids,  # shared, read-only for the runner
                eos_token_ids=request.eos_token_ids,
            ))
        out.finished_ids, self._finished_ids = self._finished_ids, []
        return out

    def _tokens_for(self, request: Request, budget: int) -> int:
        remaining = request.num_tokens - request.num_computed_tokens
        if remaining <= budget:
            return remaining
        return budget if self.config.enable_chunked_prefill else 0

    def _preempt(self, request: Request) -> None:
        self.running.remove(request)
        self.kv.free(request.request_id)
        request.status = RequestStatus.PREEMPTED
        request.num_computed_tokens = 0
        request.num_cached_blocks = 0
        request.num_blocks_sent = 0
        request.metrics.num_preemptions += 1
        self.num_preemptions += 1
        logger.debug("preempted %s (%d tokens; %d preemptions so far): the KV cache is full",
                     request.request_id, request.num_tokens, self.num_preemptions)
        self.waiting.appendleft(request)

    # ---- results -------------------------------------------------------------------------------
    def update_from_output(self, output: SchedulerOutput, sampled: dict[str, int],
                           logprobs: dict[str, tuple] | None = None) -> list[Request]:
        """Advance computed counts, append sampled tokens, finish requests; returns the requests
        that made progress visible to users (a new token or finished)."""
        touched = []
        now = time.monotonic()
        for item in output.scheduled:
            request = self.requests.get(item.request_id)
            if request is None or request.status is not RequestStatus.RUNNING:
                continue  # aborted meanwhile
            request.num_computed_tokens += item.num_tokens
            if request.num_computed_tokens // self.kv.block_size > request.num_cached_blocks:
                self.kv.cache_blocks(request.request_id, request.all_token_ids,
                                     request.num_computed_tokens)
                request.num_cached_blocks = request.num_computed_tokens // self.kv.block_size
            if not item.sample:
                continue
            token = sampled[item.request_id]
            if request.metrics.first_token_time is None:
                request.metrics.first_token_time = now
            request.metrics.last_token_time = now
            if logprobs and item.request_id in logprobs:
                _record_logprobs(request, token, *logprobs[item.request_id])
            request.append_token(token)
            if not request.is_finished and request.num_tokens >= self.config.max_model_len:
                request.status = RequestStatus.FINISHED_LENGTH
            if request.is_finished:
                self.finish_request(request.request_id, request.status)
            touched.append(request)
        return touched


def _record_logprobs(request: Request, token: int, chosen: float, rank: int,
                     top: list[tuple[int, float]]) -> None:
    from .outputs import Logprob

    request.cumulative_logprob += chosen
    if request.logprobs is None:
        return
    entry = {tid: Logprob(lp, rank + 1) for rank, (tid, lp) in enumerate(top)}
    entry.setdefault(token, Logprob(chosen, rank))
    request.logprobs.append(entry)
