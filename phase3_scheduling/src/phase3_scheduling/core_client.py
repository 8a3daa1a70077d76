"""``AsyncMPClient``: the API process's side of an engine core that runs in its own process.

It has ``AsyncLLMEngine``'s interface (``generate``/``abort``/``stats``/``errored``), so the server
does not care which one it holds. Here live the tokenizer, the input checks, detokenization and
stop strings (``InputProcessor``/``OutputProcessor``); the core process only sees token ids.
Each request has one output slot: if its consumer lags, newer (cumulative) outputs replace the
unread one instead of queueing. A watcher thread notices the core process dying: ``errored``
is set and every open request gets ``EngineDeadError`` at once.
"""

from __future__ import annotations

import asyncio
import logging
import subprocess
import threading
import time
from typing import AsyncGenerator, Sequence

import msgspec
import zmq
import zmq.asyncio

from .async_engine import EngineDeadError, EngineStepError
from .config import EngineArgs
from .core_messages import EngineCoreOutputs, SchedulerStats
from .engine_core_proc import ABORT, ADD, FATAL, OUTPUTS, SHUTDOWN, FatalInfo
from .engine_start import EngineNotConnectedError, EngineStart, EngineStartupError, send_nowait
from .input_processor import InputProcessor
from .llm_engine import model_limits
from .output_processor import OutputProcessor
from .outputs import EngineStats, RequestOutput
from .sampling_params import SamplingParams
from .step_timeline import StepCounters
from .startup_timeline import format_phases

logger = logging.getLogger(__name__)
__all__ = ["AsyncMPClient", "EngineStartupError", "RequestOutputCollector"]
_OUTPUTS_DECODER = msgspec.msgpack.Decoder(EngineCoreOutputs)
_ENCODER = msgspec.msgpack.Encoder()


class RequestOutputCollector:
    """One slot per request: the newest output (cumulative, so nothing is lost) or an error."""

    def __init__(self) -> None:
        self._item: RequestOutput | BaseException | None = None
        self._ready = asyncio.Event()

    def put(self, item: RequestOutput | BaseException) -> None:
        if isinstance(self._item, BaseException):
            return  # an error already ends this request
        self._item = item
        self._ready.set()

    async def get(self) -> RequestOutput:
        await self._ready.wait()
        item, self._item = self._item, None
        self._ready.clear()
        if isinstance(item, BaseException):
            raise item
        assert item is not None  # put() set it before setting _ready
        return item


class AsyncMPClient:
    """``start``: an engine start-up begun earlier (``lightvllm serve`` begins it before it
    imports its web stack); by default one begins here."""

    def __init__(self, args: EngineArgs, log_level: str = "WARNING",
                 start: EngineStart | None = None):
        start = start or EngineStart(args, log_level)
        self._start = start
        self.proc = start.proc
        self._output_addr = start.launch.output_addr
        self._sync_ctx = start.ctx
        self._inbox = start.inbox  # to the core
        self.errored: BaseException | None = None
        self._collectors: dict[str, RequestOutputCollector] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stats: SchedulerStats | None = None
        self._steps = StepCounters()  # the core's step times, as last sent (none run yet)
        self.prompt_tokens = self.generation_tokens = 0
        self._closing = False
        try:
            ready = start.wait_ready()
        except BaseException:
            self._kill()
            raise
        assert start.config is not None  # wait_ready raised otherwise
        self.config, self.tokenizer = start.config, start.tokenizer
        self.num_blocks = ready.num_blocks
        self.graph_sizes = ready.graph_sizes
        self.limits = model_limits(self.config, self.tokenizer, ready.num_blocks)
        self.inputs = InputProcessor(self.tokenizer, self.limits)
        self.outputs = OutputProcessor(self.tokenizer)
        self.startup_seconds = time.perf_counter() - start.started
        self.startup_phases = start.phases(ready, self.startup_seconds)
        threading.Thread(target=self._watch_process, name="lightvllm-core-watch", daemon=True).start()
        logger.info("engine core pid %d ready in %.1f s (%s)", self.proc.pid, self.startup_seconds,
                    format_phases(self.startup_phases))

    # ---- what the server reads -----------------------------------------------------------------
    @property
    def max_model_len(self) -> int:
        return self.config.max_model_len

    @property
    def vocab_size(self) -> int:
        return self.config.model_config.vocab_size

    @property
    def engine_pid(self) -> int:
        return self.proc.pid

    @property
    def request_limits(self):
        return self.limits.request_limits

    def validate_prompt(self, ids: list[int]) -> None:
        self.inputs.validate_prompt(ids)

    def stats(self) -> EngineStats:
        return EngineStats.build(self._stats, self.prompt_tokens, self.generation_tokens,
                                 self._steps)

    def free_kv_blocks(self) -> tuple[int, int]:
        """(free KV blocks, all allocatable blocks), as of the core's last message."""
        s = self._stats
        return (self.num_blocks - 1, self.num_blocks - 1) if s is None else (s.num_free_blocks,
                                                                             s.num_blocks - 1)

    def fail_request(self, request_id: str, error: BaseException) -> None:
        collector = self._collectors.get(request_id)
        if collector is not None:
            collector.put(error)

    def is_idle(self) -> bool:
        s = self._stats
        return (not self.outputs.has_unfinished_requests() and not self._collectors
                and (s is None or (s.num_running == 0 and s.num_waiting == 0
                                   and s.num_free_blocks == s.num_blocks - 1)))

    # ---- requests ------------------------------------------------------------------------------
    async def generate(self, prompt: str | Sequence[int], params: SamplingParams,
                       request_id: str) -> AsyncGenerator[RequestOutput, None]:
        if self.errored is not None:
            raise EngineDeadError(f"the engine stopped: {self.errored}")
        self._ensure_output_task()
        text, ids = self.inputs.tokenize_prompt(prompt)
        core_requests = self.inputs.core_requests(request_id, ids, params)
        collector = RequestOutputCollector()
        self.outputs.add_request(request_id, text, ids, params,
                                 [r.request_id for r in core_requests],
                                 core_requests[0].arrival_time)
        self._collectors[request_id] = collector
        finished = False
        try:
            for request in core_requests:
                self._send(ADD, _ENCODER.encode(request))
            self.prompt_tokens += len(ids)
            while True:
                out = await collector.get()
                yield out
                if out.finished:
                    finished = True
                    return
        finally:
            self._collectors.pop(request_id, None)
            if not finished:
                self._abort_now(request_id)

    async def abort(self, request_id: str) -> None:
        self._abort_now(request_id)

    def _abort_now(self, request_id: str) -> None:
        core_ids = self.outputs.abort_request(request_id)
        if core_ids and self.errored is None:
            try:
                self._send(ABORT, _ENCODER.encode(core_ids))
            except EngineDeadError:
                pass  # marked dead: every open request gets the error, nothing to abort

    def _send(self, kind: bytes, payload: bytes) -> None:
        """Never blocks (``send_nowait``): no core connected means the engine is dead."""
        try:
            send_nowait(self._inbox, [kind, payload])
        except EngineNotConnectedError as exc:
            error = EngineDeadError(f"the engine process (pid {self.proc.pid}) is not connected")
            if not self._closing:
                self._mark_dead(error)
            raise error from exc

    def _mark_dead(self, error: EngineDeadError) -> None:
        if self.errored is None:
            logger.error("%s", error)
            self.errored = error
        if self._loop is not None and not self._loop.is_closed():
            self._loop.call_soon_threadsafe(self._fail_all, error)

    # ---- outputs -------------------------------------------------------------------------------
    def _ensure_output_task(self) -> None:
        loop = asyncio.get_running_loop()
        if self._loop is loop:
            return
        if self._loop is not None:
            raise RuntimeError("AsyncMPClient serves one event loop")
        self._loop = loop
        self._async_ctx = zmq.asyncio.Context()
        self._outbox = self._async_ctx.socket(zmq.PULL)
        self._outbox.bind(self._output_addr)
        self._output_task = loop.create_task(self._process_outputs_loop())

    async def _process_outputs_loop(self) -> None:
        while True:
            kind, payload = await self._outbox.recv_multipart()
            if kind == FATAL:
                info = msgspec.msgpack.decode(payload, type=FatalInfo)
                self._fail_all(EngineDeadError(f"engine error: {info.error_type}: {info.message}"))
                return
            if kind != OUTPUTS:
                continue
            self._handle_outputs(_OUTPUTS_DECODER.decode(payload))

    def _handle_outputs(self, outputs: EngineCoreOutputs) -> None:
        if outputs.stats is not None:
            self._stats = outputs.stats
        if outputs.steps is not None:
            self._steps = outputs.steps
        self.generation_tokens += sum(len(o.new_token_ids) for o in outputs.outputs)
        processed = self.outputs.process_outputs(outputs.outputs)
        if processed.abort_ids:
            try:
                self._send(ABORT, _ENCODER.encode(processed.abort_ids))
            except EngineDeadError:
                return  # marked dead: the open requests are failed
        for out in processed.request_outputs:
            collector = self._collectors.get(out.request_id)
            if collector is not None:
                collector.put(EngineStepError(out.error) if out.error else out)

    # ---- failure and shutdown ------------------------------------------------------------------
    def _watch_process(self) -> None:
        code = self.proc.wait()
        if self._closing:
            return
        self._mark_dead(EngineDeadError(f"the engine process (pid {self.proc.pid}) exited with "
                                        f"code {code}"))

    def _fail_all(self, error: BaseException) -> None:
        self.errored = self.errored or error
        for rid, collector in list(self._collectors.items()):
            collector.put(error)
            self.outputs.abort_request(rid)

    def shutdown(self, timeout: float = 5.0) -> None:
        """Ask the core to stop, wait, then terminate/kill it by its PID."""
        self._closing = True
        if self.proc.poll() is None:
            try:
                self._send(SHUTDOWN, b"")
                self.proc.wait(timeout)
            except (subprocess.TimeoutExpired, zmq.ZMQError, EngineDeadError):
                self._kill()
        if self._loop is not None and hasattr(self, "_output_task"):
            self._loop.call_soon_threadsafe(self._output_task.cancel)
        self._inbox.close(linger=0)
        self._start.launch.directory.cleanup()

    def _kill(self) -> None:
        self._start.kill()
