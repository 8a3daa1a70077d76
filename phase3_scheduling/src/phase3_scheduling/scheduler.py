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

While requests are decoding, ``max_prefill_tokens_while_decoding`` (when set) caps the prompt
tokens of a step (Sarathi-Serve's stall-free batching): a decode step of a large model is bound
by reading the weights, so a few hundred prompt tokens ride along almost for free, whereas a
whole 8k-token budget of prompt makes every running request wait for a compute-bound step.
Without decodes running, or when more than ``BACKLOG`` requests wait (the engine is behind its
arrivals: throughput first, as in an offline batch), prompts get the whole budget.

With async scheduling (``SchedulerConfig.async_scheduling``) the engine schedules step N+1 while
step N runs on the device, so a request in flight *may* be scheduled again: its next token
starts where its scheduled tokens end (``Request.scheduled_end``), and the token step N will
sample is a *placeholder* whose id only the worker knows (it feeds it from the device). A
request whose sampling reads its own outputs on the host (penalties, min_tokens) waits for its
token instead, and one that will reach ``max_tokens`` or the context limit with its placeholder
is not scheduled past it. A request that finishes at step N (EOS, stop) had step N+1 run for
nothing; that output is dropped.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from collections import deque

from phase2_attention import KVCacheManager
from phase2_attention.block_pool import KVCacheBlock, OutOfKVBlocksError

from .config import SchedulerConfig
from .core_messages import EngineCoreOutput, SchedulerStats, TokenLogprobs
from .protocol import CachedRequestData, ModelRunnerOutput, NewRequestData, SchedulerOutput
from .request import Request, RequestStatus

logger = logging.getLogger(__name__)


@dataclass
class StepBudget:
    """What one step may still take: tokens, prompt tokens (the cap while decoding) and
    requests (a 1/P share of them with P pipeline micro-batches)."""

    tokens: int
    prefill: int
    requests: int

    def take(self, n: int) -> None:
        self.tokens -= n
        if n > 1:  # a prompt chunk (a decode is one token)
            self.prefill -= n

BACKLOG = 4  # more waiting requests than this: the prefill cap while decoding is lifted


class Scheduler:
    def __init__(self, config: SchedulerConfig, kv_manager: KVCacheManager):
        self.config = config
        self.kv = kv_manager
        self.waiting: deque[Request] = deque()
        self.running: list[Request] = []
        self.requests: dict[str, Request] = {}
        self._finished_ids: list[str] = []
        self.in_flight: dict[str, int] = {}  # request id -> steps out whose output is not back
        self.async_scheduling = config.async_scheduling
        self.num_scheduled_ahead = 0  # requests scheduled while a step of theirs was out
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
        self.in_flight.pop(request_id, None)  # a step still out for it is ignored on return
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
        """Running requests first, then waiting ones while the budget allows; decodes first."""
        tokens = self.config.max_num_batched_tokens
        budget = StepBudget(tokens, self._prefill_budget(tokens),
                            -(-self.num_unfinished // self.micro_batches))
        out = SchedulerOutput()
        plan: list[tuple[Request, int]] = []
        self._schedule_running(out, plan, budget)
        if not out.preempted_req_ids:  # no admission in a step that had to preempt
            self._admit_waiting(plan, budget)
        plan.sort(key=lambda item: not (item[1] == 1 and item[0].scheduled_end > 0))
        for request, n in plan:
            self._emit(out, request, n)
        if out.req_ids:  # an empty step is not sent: its finished ids wait for the next one
            out.finished_req_ids, self._finished_ids = self._finished_ids, []
        return out

    def _schedule_running(self, out: SchedulerOutput, plan: list[tuple[Request, int]],
                          budget: "StepBudget") -> None:
        """Each running request its next tokens, preempting the newest when blocks run out."""
        index = 0
        while index < len(self.running) and budget.tokens > 0 and len(plan) < budget.requests:
            request = self.running[index]
            n = self._tokens_for(request, budget.tokens, budget.prefill) \
                if self._may_schedule(request) else 0
            if n == 0:
                index += 1
                continue
            if not self._allocate_or_preempt(request, n, out):
                break  # preempted itself: nothing smaller to give up
            plan.append((request, n))
            budget.take(n)
            index += 1

    def _allocate_or_preempt(self, request: Request, n: int, out: SchedulerOutput) -> bool:
        """Blocks for ``n`` more tokens of ``request``, preempting others as needed; False when
        ``request`` itself had to go."""
        while True:
            try:
                self.kv.allocate_slots(request.request_id, request.scheduled_end + n)
                return True
            except OutOfKVBlocksError:
                victim = self._preemption_victim()
                self._preempt(victim)
                out.preempted_req_ids.append(victim.request_id)
                if victim is request:
                    return False

    def _admit_waiting(self, plan: list[tuple[Request, int]], budget: "StepBudget") -> None:
        """Waiting requests, first come first served, after a prefix-cache lookup."""
        while (self.waiting and budget.tokens > 0
               and len(self.running) < self.config.max_num_seqs and len(plan) < budget.requests):
            request = self.waiting[0]
            if request.request_id in self.in_flight:
                break  # preempted with a step still out: resumes once that step is back
            hits: list[KVCacheBlock] = []
            cached = 0
            if request.num_computed_tokens == 0:
                hits, cached = self.kv.get_computed_blocks(request.all_token_ids)
            request.num_computed_tokens = cached
            request.num_cached_blocks = len(hits)
            n = self._tokens_for(request, budget.tokens, budget.prefill)
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
            budget.take(n)

    def _may_schedule(self, request: Request) -> bool:
        """A request with a step in flight runs again only under async scheduling, and only
        when its next tokens do not depend on that step's token on the host."""
        if request.request_id not in self.in_flight:
            return True
        if not self.async_scheduling:
            return False
        if request.num_output_placeholders == 0:
            return True  # a prompt chunk is in flight: the next chunk may follow it
        return (not request.needs_own_outputs_to_sample
                and len(request.output_token_ids) + request.num_output_placeholders
                < request.max_tokens
                and request.num_tokens + request.num_output_placeholders
                < self.config.max_model_len)

    def _preemption_victim(self) -> Request:
        """The most recently admitted running request that is not in flight. Without async
        scheduling the request being scheduled is never in flight, so there always is one;
        with it every running request may have a step out, and the newest one is taken (the
        output of its step in flight is dropped when it comes back)."""
        for request in reversed(self.running):
            if request.request_id not in self.in_flight:
                return request
        return self.running[-1]

    def _emit(self, out: SchedulerOutput, request: Request, n: int) -> None:
        """Add one request's share of the step: all of it if the workers don't know it yet,
        else only what changed since it last ran."""
        rid, start = request.request_id, request.scheduled_end
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
        if start + n >= request.num_tokens + request.num_output_placeholders:
            request.num_output_placeholders += 1  # this step samples its next token
        request.num_in_flight_tokens += n
        if rid in self.in_flight:
            self.num_scheduled_ahead += 1
        self.in_flight[rid] = self.in_flight.get(rid, 0) + 1

    def _prefill_budget(self, budget: int) -> int:
        """Prompt tokens this step may take: the cap while any running request decodes."""
        cap = self.config.max_prefill_tokens_while_decoding
        if (cap and self.config.enable_chunked_prefill and len(self.waiting) <= BACKLOG
                and any(self._remaining(r) <= 1 for r in self.running)):
            return min(cap, budget)
        return budget

    @staticmethod
    def _remaining(request: Request) -> int:
        return request.num_tokens + request.num_output_placeholders - request.scheduled_end

    def _tokens_for(self, request: Request, budget: int, prefill_left: int | None = None) -> int:
        """Tokens to run for ``request``: all it has left if they fit, else a chunk (a prompt
        chunk is also bounded by ``prefill_left``)."""
        remaining = self._remaining(request)
        if remaining > 1 and prefill_left is not None:
            budget = min(budget, prefill_left)
        if remaining <= budget:
            return remaining
        return max(budget, 0) if self.config.enable_chunked_prefill else 0

    def _preempt(self, request: Request) -> None:
        self.running.remove(request)
        self.kv.free(request.request_id)
        request.status = RequestStatus.PREEMPTED
        request.num_computed_tokens = 0
        request.num_cached_blocks = 0
        request.num_blocks_sent = 0
        request.num_tokens_sent = 0
        request.forget_in_flight()
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
            self._step_returned(rid)
            request = self.requests.get(rid)
            if request is None or request.status is not RequestStatus.RUNNING:
                continue  # aborted or preempted meanwhile
            request.num_computed_tokens += n
            request.num_in_flight_tokens -= n
            self._publish_full_blocks(request)
            token = sampled.get(rid)
            if token is None:
                continue  # a mid-prompt chunk
            request.num_output_placeholders -= 1
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
            self.in_flight.pop(rid, None)
            request = self.finish_request(rid, RequestStatus.FINISHED_ERROR)
            if request is not None:
                out = self._core_output(request, [])
                out.error = error
                outputs.append(out)
        return outputs

    def _step_returned(self, request_id: str) -> None:
        left = self.in_flight.get(request_id, 0) - 1
        if left > 0:
            self.in_flight[request_id] = left
        else:
            self.in_flight.pop(request_id, None)

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
