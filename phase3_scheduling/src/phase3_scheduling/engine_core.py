"""``EngineCore``: the scheduler, the KV-cache bookkeeping and the executor — tokens in, tokens out.

    add_request(EngineCoreRequest) -> [schedule -> executor.execute_model -> update_from_output]*
                                   -> EngineCoreOutputs (one per step)

It knows nothing of text: tokenization, detokenization, stop strings and the fan-out of ``n``
samples live in the front end (``InputProcessor``/``OutputProcessor``), in-process (``LLMEngine``)
or in another process (``EngineCoreProc`` + ``AsyncMPClient``). One request's bad luck never ends
the engine: an error inside a step fails the requests of that step and the rest go on; only a
dead worker or a device error (the process state can no longer be trusted) propagates.

With a pipelined executor (``max_concurrent_batches`` > 1, e.g. PP=2 on ``mp``) a step is
submitted and its output collected later: ``step`` keeps a queue of up to that many steps in
flight, submitting a new micro-batch while there is room and work that is not already in
flight, and otherwise waiting for the oldest. Async scheduling uses the same queue with two
places: step N+1 is scheduled and launched before step N's output is read, so the host's
scheduling, input preparation and output handling overlap the device's work.
"""

from __future__ import annotations

import logging
import time
from collections import defaultdict, deque

import torch

from phase2_attention import KVCacheManager
from phase2_attention.kv_cache_manager import cdiv

from .core_messages import EngineCoreOutput, EngineCoreOutputs, EngineCoreRequest
from .engine_config import EngineConfig
from .executor import Executor, PendingStep, WorkerDiedError
from .executor_registry import get_executor_class
from .request import Request, RequestStatus
from .scheduler import Scheduler
from .schedule_lead import LeadTimer
from .step_timeline import StepClock, prompt_tokens
from .protocol import ModelRunnerOutput, SchedulerOutput
from .validation import RequestTooLargeError

logger = logging.getLogger(__name__)


class DuplicateRequestError(ValueError):
    pass


def _fatal_error_types() -> tuple[type[BaseException], ...]:
    """Errors after which the device state cannot be trusted (the process should exit)."""
    fatal: list[type[BaseException]] = [WorkerDiedError]
    accelerator_error = getattr(torch, "AcceleratorError", None)
    if accelerator_error is not None:
        fatal.append(accelerator_error)
    return tuple(fatal)


FATAL_ERRORS = _fatal_error_types()


class EngineCore:
    def __init__(self, config: EngineConfig, executor_class: type[Executor] | None = None):
        start = time.perf_counter()
        self.config = config
        executor_class = executor_class or get_executor_class(config.parallel_config.executor_name)
        self.executor = executor_class(config)
        self.num_blocks = self.executor.initialize_from_config()
        self.block_size = config.cache_config.block_size
        self.kv_manager = KVCacheManager(self.num_blocks, self.block_size,
                                         config.cache_config.enable_prefix_caching)
        self.scheduler = Scheduler(config.scheduler_config, self.kv_manager)
        self.scheduler.micro_batches = self.executor.max_concurrent_batches
        self.max_batches = queue_depth(config, self.executor)
        # (step, its pending result, when it was submitted)
        self.batch_queue: deque[tuple[SchedulerOutput, PendingStep, float]] = deque()
        self.peak_in_flight = 0  # the most steps that were out at once
        self.fatal_error: BaseException | None = None  # set once a worker or the device failed
        self.timings: dict[str, float] = defaultdict(float)  # seconds per step phase
        self.step_clock = StepClock()  # wall time of decode vs mixed steps (step_timeline.py)
        self._head_started_at: float | None = None  # when the oldest step in flight began to run
        self.lead_timer = LeadTimer(config.scheduler_config.schedule_lead_ms / 1e3)
        self.startup_seconds = time.perf_counter() - start
        logger.info("engine core ready in %.1f s: %d KV blocks, graphs %s", self.startup_seconds,
                    self.num_blocks, self.executor.graph_sizes)

    # ---- requests ------------------------------------------------------------------------------
    def add_request(self, request: EngineCoreRequest) -> None:
        if request.request_id in self.scheduler.requests:
            raise DuplicateRequestError(f"request id {request.request_id!r} is already running")
        check_fits_cache(len(request.prompt_token_ids), request.max_tokens, self.num_blocks,
                         self.block_size, self.config.max_model_len)
        self.scheduler.add_request(Request(request, self.config.max_model_len))

    def abort_requests(self, request_ids: list[str]) -> None:
        for rid in request_ids:
            self.scheduler.finish_request(rid, RequestStatus.FINISHED_ABORTED)

    def has_unfinished_requests(self) -> bool:
        """Requests to run, or steps in flight whose outputs must still be collected."""
        return self.scheduler.num_unfinished > 0 or bool(self.batch_queue)

    # ---- the loop ------------------------------------------------------------------------------
    def step(self) -> EngineCoreOutputs:
        """Schedule and run one step (pipelined: submit one, or collect the oldest)."""
        if self.fatal_error is not None:  # the engine cannot continue: say so on every call
            raise self.fatal_error
        if self.max_batches > 1:
            return self._step_with_batch_queue()
        t0 = time.perf_counter()
        step = self.scheduler.schedule()
        self.timings["schedule"] += time.perf_counter() - t0
        if step.is_empty:
            return self._outputs(self._fail_unschedulable())
        t1 = time.perf_counter()
        try:
            pending = self._submit_or_die(step)  # runs it, for a one-at-a-time executor
        except FATAL_ERRORS:
            raise
        except Exception as error:  # one step's data broke the forward: fail only its requests
            return self._outputs(self._fail_step(step, error))
        self.peak_in_flight = 1
        return self._collect(step, pending, t1, t1)

    def _step_with_batch_queue(self) -> EngineCoreOutputs:
        queue = self.batch_queue
        if len(queue) < self.max_batches:
            t0 = time.perf_counter()
            step = self.scheduler.schedule()
            self.timings["schedule"] += time.perf_counter() - t0
            if not step.is_empty:
                try:
                    queue.append((step, self._submit_or_die(step), time.perf_counter()))
                    if len(queue) > 1 and self.lead_timer.on:  # queued behind one in flight
                        self.lead_timer.queued(queue[-1][2] - t0)
                except FATAL_ERRORS:
                    raise
                except Exception as error:  # this step's data broke the launch
                    return self._outputs(self._fail_step(step, error))
                if len(queue) == 1:  # an idle device starts it at once
                    self._head_started_at = queue[0][2]
                self.peak_in_flight = max(self.peak_in_flight, len(queue))
                if len(queue) < self.max_batches:
                    return self._outputs([])  # room for another micro-batch
        if not queue:
            return self._outputs(self._fail_unschedulable())
        step, pending, submitted_at = queue.popleft()
        started_at = self._head_started_at
        outputs = self._collect(step, pending, submitted_at, time.perf_counter(), started_at)
        # the next step in flight ran on as soon as this one ended (async scheduling)
        self._head_started_at = time.perf_counter() if queue else None
        return outputs

    def schedule_delay(self) -> float:
        """Seconds the caller may wait for new requests before the next ``step()``, so that they
        join the step it schedules (``schedule_lead_ms``, ``schedule_lead.py``): with one decode
        step in flight and nothing waiting, the next step is due so that it is queued
        ``schedule_lead_ms`` before the running one ends. 0 when the lead is off, without async
        scheduling, before a decode step was timed, or when the next step should be scheduled
        now."""
        if (self.max_batches != 2 or len(self.batch_queue) != 1 or self._head_started_at is None
                or self.scheduler.waiting):
            return 0.0
        head = self.batch_queue[0][0]
        return self.lead_timer.delay(time.perf_counter(), self._head_started_at,
                                     prompt_tokens(head) == 0)

    def _collect(self, step: SchedulerOutput, pending: PendingStep, submitted_at: float,
                 t1: float, started_at: float | None = None) -> EngineCoreOutputs:
        """Wait for a step's output and apply it to the scheduler (``t1``: when the engine
        began to wait for it; pipelined steps count only the wait; ``started_at``: when it began
        to run, for the lead timer, if it ran behind another step)."""
        try:
            result: ModelRunnerOutput = pending.result()
        except FATAL_ERRORS as error:
            self.fatal_error = error
            raise
        except Exception as error:
            return self._outputs(self._fail_step(step, error))
        t2 = time.perf_counter()
        self.step_clock.record(step, submitted_at, t2)
        if started_at is not None and self.lead_timer.on:
            self.lead_timer.collected(started_at, t1, t2, prompt_tokens(step) == 0)
        outputs = self.scheduler.update_from_output(step, result)
        timings = self.timings
        timings["execute"] += t2 - t1
        timings["update"] += time.perf_counter() - t2
        timings["steps"] += 1
        return self._outputs(outputs)

    def _submit_or_die(self, step: SchedulerOutput) -> PendingStep:
        try:
            return self.executor.submit_step(step)
        except FATAL_ERRORS as error:
            self.fatal_error = error
            raise

    def _fail_step(self, step: SchedulerOutput, error: Exception) -> list[EngineCoreOutput]:
        """One step's data broke the forward: fail only its requests."""
        logger.exception("step of %d requests failed; they end with an error", len(step.req_ids))
        return self.scheduler.fail_requests(step.req_ids, f"the engine step failed: {error}")

    def _outputs(self, outputs: list[EngineCoreOutput]) -> EngineCoreOutputs:
        return EngineCoreOutputs(outputs, self.scheduler.stats(), time.monotonic(),
                                 steps=self.step_clock.counters)

    def _fail_unschedulable(self) -> list[EngineCoreOutput]:
        """A waiting request that cannot be admitted into an idle engine never will be."""
        sched = self.scheduler
        if not sched.waiting or sched.running:
            return []
        head = sched.waiting[0]
        message = (f"request needs {head.num_tokens} tokens of KV cache, more than the whole "
                   f"cache ({self.num_blocks - 1} blocks of {self.block_size})")
        return sched.fail_requests([head.request_id], message)

    def shutdown(self) -> None:
        self.executor.shutdown()


def queue_depth(config: EngineConfig, executor: Executor) -> int:
    """Steps the core keeps in flight: the pipeline depth, or 2 with async scheduling."""
    if not config.scheduler_config.async_scheduling:
        return executor.max_concurrent_batches
    if not executor.supports_async_output:
        raise ValueError(f"async scheduling needs an executor that returns a step's output "
                         f"later; {type(executor).__name__} runs one step at a time")
    return 2


def check_fits_cache(prompt_len: int, max_tokens: int | None, num_blocks: int, block_size: int,
                     max_model_len: int) -> None:
    """Raise ``RequestTooLargeError`` if prompt + max_tokens can never be held by the cache
    (without ``max_tokens`` the request runs until the cache or the context is full)."""
    tokens = min(prompt_len + (max_tokens or 1), max_model_len)
    needed, usable = cdiv(tokens, block_size), num_blocks - 1  # block 0 is the null block
    if needed > usable:
        raise RequestTooLargeError(
            f"the request needs up to {tokens} tokens ({needed} KV blocks of {block_size}); the "
            f"whole KV cache holds {usable} blocks ({usable * block_size} tokens)", "max_tokens")
