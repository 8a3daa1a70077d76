"""``AsyncLLMEngine``: the engine behind an asyncio API (what the server uses).

The engine loop runs in its own thread, so model steps never block the event loop and HTTP
work never stalls the engine. Commands (add, abort) cross into the thread through a queue;
outputs come back to each request's ``asyncio.Queue`` via ``call_soon_threadsafe``.
``generate`` is an async generator of ``RequestOutput``; closing or cancelling it aborts the
request, which frees its KV blocks.
"""

from __future__ import annotations

import asyncio
import os
import queue
import threading
from typing import AsyncGenerator, Sequence

from .config import EngineArgs
from .llm_engine import LLMEngine
from .outputs import RequestOutput
from .sampling_params import SamplingParams


class EngineDeadError(RuntimeError):
    """The engine (its process, a worker, or the device) is gone; no request can be served."""


class EngineStepError(RuntimeError):
    """The engine step that ran this request failed; the engine itself goes on."""


def as_item(out: RequestOutput) -> RequestOutput | EngineStepError:
    """What a request's stream receives: its output, or the error that ended it."""
    return EngineStepError(out.error) if out.error else out


class AsyncLLMEngine:
    def __init__(self, engine: LLMEngine):
        self.engine = engine
        self._commands: queue.Queue = queue.Queue()
        self._streams: dict[str, tuple[asyncio.AbstractEventLoop, asyncio.Queue]] = {}
        self._wake = threading.Event()
        self._stop = False
        self.errored: BaseException | None = None
        self._thread = threading.Thread(target=self._loop, name="lightvllm-engine", daemon=True)
        self._thread.start()

    @classmethod
    def from_engine_args(cls, args: EngineArgs) -> "AsyncLLMEngine":
        return cls(LLMEngine(args))

    @property
    def tokenizer(self):
        return self.engine.tokenizer

    @property
    def max_model_len(self) -> int:
        return self.engine.max_model_len

    @property
    def vocab_size(self) -> int:
        return self.engine.model_config.vocab_size

    @property
    def engine_pid(self) -> int:
        """The process doing the model work (this one)."""
        return os.getpid()

    @property
    def startup_phases(self) -> dict[str, float]:
        """Seconds of each engine start-up phase (the executor's), then ``total``."""
        return {**self.engine.executor.startup_phases, "total": self.engine.core.startup_seconds}

    @property
    def request_limits(self):
        return self.engine.inputs.limits.request_limits

    def validate_prompt(self, ids: list[int]) -> None:
        self.engine.validate_prompt(ids)

    def free_kv_blocks(self) -> tuple[int, int]:
        """(free KV blocks, all allocatable blocks) of the engine's pool."""
        kv = self.engine.kv_manager
        return kv.num_free_blocks, kv.pool.num_blocks - 1

    def fail_request(self, request_id: str, error: BaseException) -> None:
        """End one open request's stream with ``error`` (its generator then aborts it)."""
        self._deliver(request_id, error)

    def is_idle(self) -> bool:
        """No request left and every KV block back in the pool."""
        return (not self.engine.has_unfinished_requests()
                and self.engine.kv_manager.all_blocks_free)

    # ---- asyncio side ------------------------------------------------------------------------
    async def generate(self, prompt: str | Sequence[int], params: SamplingParams,
                       request_id: str) -> AsyncGenerator[RequestOutput, None]:
        if self.errored is not None:
            raise EngineDeadError(f"the engine stopped after an error: {self.errored}")
        loop = asyncio.get_running_loop()
        stream: asyncio.Queue = asyncio.Queue()
        self._streams[request_id] = (loop, stream)
        self._send(("add", request_id, prompt, params))
        finished = False
        try:
            while True:
                item = await stream.get()
                if isinstance(item, BaseException):
                    raise item
                yield item
                if item.finished:
                    finished = True
                    return
        finally:
            self._streams.pop(request_id, None)
            if not finished:
                self._send(("abort", request_id))

    async def abort(self, request_id: str) -> None:
        self._send(("abort", request_id))

    def _send(self, command: tuple) -> None:
        self._commands.put(command)
        self._wake.set()

    def _deliver(self, request_id: str, item) -> None:
        target = self._streams.get(request_id)
        if target is not None:
            loop, stream = target
            loop.call_soon_threadsafe(stream.put_nowait, item)

    def _deliver_many(self, items: list[tuple[str, object]]) -> None:
        """A step's outputs in one hand-over per event loop (one wake-up, not one per request)."""
        by_loop: dict[asyncio.AbstractEventLoop, list] = {}
        for request_id, item in items:
            target = self._streams.get(request_id)
            if target is not None:
                by_loop.setdefault(target[0], []).append((target[1], item))
        for loop, pairs in by_loop.items():
            loop.call_soon_threadsafe(_put_all, pairs)

    # ---- engine thread -------------------------------------------------------------------------
    def _loop(self) -> None:
        while not self._stop:
            self._apply_commands()
            if not self.engine.has_unfinished_requests():
                self._wake.wait(0.05)
                self._wake.clear()
                continue
            try:
                outputs = self.engine.step()
            except Exception as error:  # a dead worker or a device error: nothing can go on
                self.errored = error
                for rid in list(self._streams):
                    self._deliver(rid, EngineDeadError(f"engine error: {error}"))
                return
            self._deliver_many([(out.request_id, as_item(out)) for out in outputs])

    def _apply_commands(self) -> None:
        while True:
            try:
                command = self._commands.get_nowait()
            except queue.Empty:
                return
            if command[0] == "add":
                _, rid, prompt, params = command
                try:
                    self.engine.add_request(rid, prompt, params)
                except Exception as error:
                    self._deliver(rid, error)
            elif command[0] == "abort":
                self.engine.abort_request(command[1])

    def stats(self):
        return self.engine.get_stats()

    def shutdown(self) -> None:
        self._stop = True
        self._wake.set()
        self._thread.join(timeout=5)
        self.engine.shutdown()


def _put_all(pairs: list[tuple[asyncio.Queue, object]]) -> None:
    for stream, item in pairs:
        stream.put_nowait(item)
