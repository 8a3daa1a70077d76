"""The API process's side of an engine-core process's start-up, until its READY message.

``EngineStart(args, log_level, launch)`` adopts a process started earlier (``EngineLaunch``) or
starts one, binds the two sockets, resolves the config and loads the tokenizer while that
process imports, and sends it the config; ``wait_ready()`` returns its ``ReadyInfo``. A failure
before the wait (a bad model directory) is kept and raised by ``wait_ready``: ``lightvllm serve``
begins the start-up as soon as its arguments are parsed, before it imports its web stack, and
still reports a failure where it always did (the server's model loader, one paragraph).
"""

from __future__ import annotations

import logging
import time

import msgspec
import zmq

from shared.engine_launch import EngineLaunch
from shared.tokenizer import Tokenizer

from .config import EngineArgs
from .engine_config import EngineConfig, encode_config, resolve_engine_config
from .engine_core_proc import CONFIG, FATAL, READY, FatalInfo, ReadyInfo
from .llm_engine import load_tokenizer
from .startup_timeline import StartupTimeline, process_age

logger = logging.getLogger(__name__)
STARTUP_TIMEOUT_S = 600.0
POLL_MS = 200


def make_inbox(ctx: zmq.Context, addr: str) -> zmq.Socket:
    """The API process's PUSH socket to the engine core, bound at ``addr``, with no high-water
    mark: sends queue however far the core is behind, so ``send_nowait`` is refused only when no
    core is connected."""
    sock = ctx.socket(zmq.PUSH)
    sock.setsockopt(zmq.SNDHWM, 0)
    sock.bind(addr)
    return sock


def send_nowait(sock: zmq.Socket, frames: list[bytes]) -> None:
    """Send without ever blocking; raises ``EngineNotConnectedError`` if no core is connected (a
    blocking PUSH send would wait for one forever: a core gone but not yet exited, stuck in its
    teardown, would hang the server)."""
    try:
        sock.send_multipart(frames, flags=zmq.NOBLOCK, copy=False)
    except zmq.Again as exc:
        raise EngineNotConnectedError("the engine process is not connected") from exc


class EngineNotConnectedError(RuntimeError):
    """A message for the engine core found no core connected to take it."""


class EngineStartupError(RuntimeError):
    """The engine-core process failed to start (its error is in the message)."""


class EngineStart:
    def __init__(self, args: EngineArgs, log_level: str = "WARNING",
                 launch: EngineLaunch | None = None):
        self.started = time.perf_counter()
        self.api_before = process_age()  # this process's age (imports) when it asked
        self.timeline = StartupTimeline()
        if launch is not None:
            self.timeline.add("api_launched_early", time.monotonic() - launch.started)
        with self.timeline.phase("api_spawn"):  # first: its imports overlap our work below
            self.launch = launch or EngineLaunch.start(log_level)
        self.ctx = zmq.Context()
        self.inbox = make_inbox(self.ctx, self.launch.input_addr)  # the config, later requests
        self._ready_sock = self.ctx.socket(zmq.PULL)
        self._ready_sock.bind(self.launch.output_addr)
        self.config: EngineConfig | None = None
        self.tokenizer: Tokenizer | None = None
        self.error: Exception | None = None
        try:
            self._configure(args)
        except BaseException as error:
            self.launch.kill()
            if not isinstance(error, Exception):
                raise
            self.error = error

    @property
    def proc(self):
        return self.launch.proc

    def _configure(self, args: EngineArgs) -> None:
        with self.timeline.phase("api_config"):
            config = self.config = resolve_engine_config(args)
        with self.timeline.phase("api_tokenizer"):
            self.tokenizer = load_tokenizer(config)
        with self.timeline.phase("api_send_config"):  # waits for the process to connect
            self._wait_connected()
            self.inbox.send_multipart([CONFIG, encode_config(config)])

    def _wait_connected(self) -> None:
        """Until the engine process has connected (a PUSH send blocks until then), or died."""
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        while not self.inbox.poll(POLL_MS, zmq.POLLOUT):
            self._check_alive()
            if time.monotonic() > deadline:
                raise EngineStartupError(f"the engine process did not connect within "
                                         f"{STARTUP_TIMEOUT_S:.0f} s")

    def _check_alive(self) -> None:
        if self.proc.poll() is not None:
            raise EngineStartupError(
                f"the engine process exited with code {self.proc.returncode} during start-up")

    def wait_ready(self) -> ReadyInfo:
        """The engine's READY message; raises what failed earlier, or its start-up error."""
        if self.error is not None:
            raise self.error
        with self.timeline.phase("api_wait_ready"):
            return self._receive_ready()

    def _receive_ready(self) -> ReadyInfo:
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        while time.monotonic() < deadline:
            if self._ready_sock.poll(POLL_MS):
                kind, payload = self._ready_sock.recv_multipart()
                if kind == READY:
                    self._ready_sock.close(linger=0)  # the event loop binds its own socket
                    return msgspec.msgpack.decode(payload, type=ReadyInfo)
                if kind == FATAL:
                    info = msgspec.msgpack.decode(payload, type=FatalInfo)
                    raise EngineStartupError(f"the engine failed to start: {info.error_type}: "
                                             f"{info.message}")
            else:
                self._check_alive()
        raise EngineStartupError(f"the engine did not start within {STARTUP_TIMEOUT_S:.0f} s")

    def phases(self, ready: ReadyInfo, total: float) -> dict[str, float]:
        """One timeline: the API process's age when it asked for the engine, the engine
        process's phases (they ran meanwhile), the API's own, and ``total`` (asking to ready)."""
        phases = {} if self.api_before is None else {"api_before_engine": self.api_before}
        phases.update(ready.phases)
        phases.update(self.timeline.phases)
        phases["total"] = total
        return phases

    def kill(self) -> None:
        self.launch.kill()
