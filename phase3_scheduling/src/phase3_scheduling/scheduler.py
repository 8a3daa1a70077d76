"""The continuous-batching scheduler (vLLM v1 style, no prefill/decode phases).

Each step has a token budget (``max_num_batched_tokens``) and a sequence cap
(``max_num_seqs``). Running requests are served first, in arrival order, each with as many of its
remaining tokens as fit (1 for a decode; a chunk for a long prompt); then waiting requests are
admitted first-come-first-served while the budget, the cap and the free KV blocks allow, after
looking up their prompt in the prefix cache. When a running request cannot get a block, the most
recently admitted running request is preempted: its blocks are freed and it goes back to the
front of the queue to be recomputed later (its generated tokens are kept).

With pipeline parallelism several steps are in flight at once (one per stage). A request in a
step whose output has not come back is *in flight*: it is neither scheduled again nor preempted
until ``update_from_output`` has seen that step, so the next micro-batch is built from the
other requests. With ``micro_batches`` = P > 1 a step takes at most 1/P of the unfinished
requests, so that P steps of about equal size keep the P stages busy.
"""

from __future__ import annotations

import logging
import time
from collections import deque

from phase2_attention import KVCacheManager
from phase2_attention.block_pool import KVCacheBlock, OutOfKVBlocksError

from .config import SchedulerConfig
from .core_messages import EngineCoreOutput, SchedulerStats, TokenLogprobs
from .protocol import CachedRequestData, ModelRunnerOutput, NewRequestData, SchedulerOutput
from .request import Request, RequestStatus

logger = logging.getLogger(__name__)


class Scheduler:
    def __init__(self, config: SchedulerConfig, kv_manager: KVCacheManager):
        self.config = config
        self.kv = kv_manager
        self.waiting: deque[Request] = deque()
        self.running: list[Request] = []
        self.requests: dict[str, Request] = {}
        self._finished_ids: list[str] = []
        self.in_flight: set[str] = set()  # scheduled, output not back yet
        self.micro_batches = 1  # steps in flight at once (the engine sets the pipeline depth)
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
        self.in_flight.discard(request_id)  # a step still out for it is ignored on return
        if request in self.running:
            self.running.remove(request)
        elif request in self.waiting:
            self.waiting.remove(request)
        self.kv.free(request_id)
        self._finished_ids.append(request_id)
        return request

    @property
    def num_unfinished(self) -> int:
        return len(self.waiting) + len(self.running)

    # ---- one step ------------------------------------------------------------------------------
    def schedule(self) -> SchedulerOutput:
        budget = self.config.max_num_batched_tokens
        out = SchedulerOutput()
        plan: list[tuple[Request, int]] = []
        max_requests = -(-self.num_unfinished // self.micro_batches)

        index = 0
        while index < len(self.running) and budget > 0 and len(plan) < max_requests:
            request = self.running[index]
            n = 0 if request.request_id in self.in_flight else self._tokens_for(request, budget)
            if n == 0:
                index += 1
                continue
            while True:
                try:
                    self.kv.allocate_slots(request.request_id, request.num_computed_tokens + n)
                    break
                except OutOfKVBlocksError:
                    victim = self._preemption_victim()
                    self._preempt(victim)
                    out.preempted_req_ids.append(victim.request_id)
                    if victim is request:
                        break
            if request.status is not RequestStatus.RUNNING:
                break  # preempted itself: nothing smaller to give up
            plan.append((request, n))
            budget -= n
            index += 1

        while (self.waiting and budget > 0 and not out.preempted_req_ids
               and len(self.running) < self.config.max_num_seqs and len(plan) < max_requests):
            request = self.waiting[0]
            hits: list[KVCacheBlock] = []
            cached = 0
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
            request.num_cached_tokens = cached
            if request.first_scheduled_time is None:
                request.first_scheduled_time = time.monotonic()
            self.running.append(request)
            plan.append((request, n))
            budget -= n

        plan.sort(key=lambda item: not (item[1] == 1 and item[0].num_computed_tokens > 0))
        for request, n in plan:
            self._emit(out, request, n)
        if out.req_ids:  # an empty step is not sent: its finished ids wait for the next one
            out.finished_req_ids, self._finished_ids = self._finished_ids, []
        return out

    def _preemption_victim(self) -> Request:
        """The most recently admitted running request that is not in flight (the request being
        scheduled is never in flight, so there always is one)."""
        return next(r for r in reversed(self.running) if r.request_id not in self.in_flight)

    def _emit(self, out: SchedulerOutput, request: Request, n: int) -> None:
        """Add one request's share of the step: all of it if the workers don't know it yet,
        else only what changed since it last ran."""
        rid, start = request.request_id, request.num_computed_tokens
        blocks = self.kv.block_ids(rid, request.num_blocks_sent)
        if request.num_tokens_sent == 0:
            out.new_requests.append(NewRequestData(
                rid, request.prompt_token_ids, list(request.output_token_ids), request.sampling,
                blocks, start))
        else:
            out.cached_requests.append(CachedRequestData(
                rid, request.token_slice(request.num_tokens_sent, request.num_tokens), blocks, start))
        request.num_blocks_sent += len(blocks)
        request.num_tokens_sent = request.num_tokens
        out.req_ids.append(rid)
        out.num_scheduled_tokens.append(n)
        self.in_flight.add(rid)

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
        request.num_tokens_sent = 0
        request.num_preemptions += 1
        self.num_preemptions += 1
        logger.debug("preempted %s (%d tokens; %d preemptions so far): the KV cache is full",
                     request.request_id, request.num_tokens, self.num_preemptions)
        self.waiting.appendleft(request)

    # ---- results -------------------------------------------------------------------------------
    def update_from_output(self, output: SchedulerOutput,
                           result: ModelRunnerOutput) -> list[EngineCoreOutput]:
        """Advance computed counts, append sampled tokens, finish requests; returns one output
        per request that made visible progress (a new token, or finished)."""
        outputs = []
        sampled = result.sampled
        rows = {rid: i for i, rid in enumerate(result.req_ids)} if result.logprobs else {}
        for rid, n in zip(output.req_ids, output.num_scheduled_tokens):
            self.in_flight.discard(rid)
            request = self.requests.get(rid)
            if request is None or request.status is not RequestStatus.RUNNING:
                continue  # aborted meanwhile
            request.num_computed_tokens += n
            self._publish_full_blocks(request)
            token = sampled.get(rid)
            if token is None:
                continue  # a mid-prompt chunk
            request.append_token(token)
            if not request.is_finished and request.num_tokens >= self.config.max_model_len:
                request.status = RequestStatus.FINISHED_LENGTH
            logprobs = _token_logprobs(result, rows[rid]) if rid in rows else None
            outputs.append(self._core_output(request, [token], logprobs))
            if request.is_finished:
                self.finish_request(rid, request.status)
        return outputs

    def fail_requests(self, request_ids: list[str], error: str) -> list[EngineCoreOutput]:
        """End requests whose step raised: they get an error, the others keep running."""
        outputs = []
        for rid in request_ids:
            self.in_flight.discard(rid)
            request = self.finish_request(rid, RequestStatus.FINISHED_ERROR)
            if request is not None:
                out = self._core_output(request, [])
                out.error = error
                outputs.append(out)
        return outputs

    def _publish_full_blocks(self, request: Request) -> None:
        if request.num_computed_tokens // self.kv.block_size > request.num_cached_blocks:
            self.kv.cache_blocks(request.request_id, request.all_token_ids,
                                 request.num_computed_tokens)
            request.num_cached_blocks = request.num_computed_tokens // self.kv.block_size

    @staticmethod
    def _core_output(request: Request, tokens: list[int],
                     logprobs: TokenLogprobs | None = None) -> EngineCoreOutput:
        return EngineCoreOutput(
            request.request_id, tokens, request.status.finish_reason, request.stop_reason,
            None if logprobs is None else [logprobs], request.num_cached_tokens,
            request.first_scheduled_time, request.num_preemptions)

    def stats(self) -> SchedulerStats:
        pool = self.kv.pool
        return SchedulerStats(len(self.running), len(self.waiting), pool.usage,
                              self.num_preemptions, pool.stats["hits"], pool.stats["queries"],
                              self.kv.num_free_blocks, pool.num_blocks)


def _token_logprobs(result: ModelRunnerOutput, row: int) -> TokenLogprobs:
    lp = result.logprobs
    assert lp is not None  # the caller has rows only when the step returned logprobs
    return TokenLogprobs(lp.chosen[row], lp.ranks[row], lp.top_ids[row], lp.top_logprobs[row])
