"""``AsyncLLMEngine``: the engine behind an asyncio API (what the server uses).

The engine loop runs in its own thread, so model steps never block the event loop and HTTP
work never stalls the engine. Commands (add, abort) cross into the thread through a queue;
outputs come back to each request's ``asyncio.Queue`` via ``call_soon_threadsafe``.
``generate`` is an async generator of ``RequestOutput``; closing or cancelling it aborts the
request, which frees its KV blocks.
"""

from __future__ import annotations

import asyncio
import queue
import threading
from typing import AsyncIterator, Sequence

from .config import EngineArgs
from .llm_engine import LLMEngine
from .outputs import RequestOutput
from .sampling_params import SamplingParams


class EngineDeadError(RuntimeError):
    pass


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

    # ---- asyncio side ------------------------------------------------------------------------
    async def generate(self, prompt: str | Sequence[int], params: SamplingParams,
                       request_id: str) -> AsyncIterator[RequestOutput]:
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
            except Exception as error:  # a request the cache can never hold, or a device error
                if isinstance(error, RuntimeError) and "was aborted" in str(error):
                    self._fail_aborted(error)
                    continue
                self.errored = error
                for rid in list(self._streams):
                    self._deliver(rid, EngineDeadError(f"engine error: {error}"))
                return
            self._deliver_many([(out.request_id, out) for out in outputs])

    def _fail_aborted(self, error: Exception) -> None:
        for rid in list(self._streams):
            if rid not in self.engine._children:
                self._deliver(rid, ValueError(str(error)))

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
