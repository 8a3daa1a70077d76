"""The engine core in its own process: a busy loop that takes requests/aborts from the API
process, steps the ``EngineCore`` and sends one ``EngineCoreOutputs`` message per step.

    API process --PUSH ipc:// (ADD, ABORT, SHUTDOWN)--> core --PUSH ipc:// (READY, OUTPUTS, FATAL)--> API

Started as ``python -m phase3_scheduling.engine_core_proc --input ADDR --output ADDR``; the
``EngineConfig`` arrives as the first input message. Every frame is msgpack (msgspec); nothing is
pickled. Ctrl-C goes to the parent (which shuts this process down); a dead parent ends it.
The READY message carries the start-up timeline: this process's phases in seconds, from its
start (interpreter and imports) to the message.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
import time

import msgspec
import zmq

from .core_messages import EngineCoreOutput, EngineCoreOutputs, EngineCoreRequest
from .engine_config import EngineConfig, decode_config
from .engine_core import EngineCore
from .gc_heap import freeze_heap
from .startup_timeline import StartupTimeline, format_phases, process_age

logger = logging.getLogger(__name__)

# message types: the first frame of every message
ADD, ABORT, SHUTDOWN, CONFIG = b"A", b"X", b"S", b"C"
READY, OUTPUTS, FATAL = b"R", b"O", b"F"
IDLE_POLL_MS = 500  # how often an idle core checks that its parent is alive


class ReadyInfo(msgspec.Struct, array_like=True):
    pid: int
    num_blocks: int
    graph_sizes: list[int]
    startup_seconds: float
    # start-up phases of this process in seconds, in order (process start and imports first)
    phases: dict[str, float] = msgspec.field(default_factory=dict)


class FatalInfo(msgspec.Struct, array_like=True):
    error_type: str
    message: str


_ADD_DECODER = msgspec.msgpack.Decoder(EngineCoreRequest)
_ABORT_DECODER = msgspec.msgpack.Decoder(list[str])
_ENCODER = msgspec.msgpack.Encoder()


class EngineCoreProc:
    def __init__(self, core: EngineCore, inbox: zmq.Socket, outbox: zmq.Socket, parent_pid: int):
        self.core = core
        self.inbox = inbox
        self.outbox = outbox
        self.parent_pid = parent_pid
        self.running = True
        self._changed = False

    def run_busy_loop(self) -> None:
        while self.running:
            self._drain_inbox(block=not self.core.has_unfinished_requests())
            if not self.running:
                break
            if self.core.has_unfinished_requests():
                self._wait_for_requests(self.core.schedule_delay())
                if not self.running:
                    break
                self._send_outputs(self.core.step())
            elif self._changed:  # aborts landed on an idle engine: report the freed blocks
                self._send_outputs(EngineCoreOutputs([], self.core.scheduler.stats(), time.monotonic()))
            self._changed = False

    def _drain_inbox(self, block: bool) -> None:
        """Apply every waiting message; when idle, wait for one (checking the parent)."""
        while True:
            if block:
                if not self.inbox.poll(IDLE_POLL_MS):
                    if os.getppid() != self.parent_pid:
                        logger.warning("the API process is gone: engine core exits")
                        self.running = False
                        return
                    continue
                block = False
            try:
                frames = self.inbox.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return
            self._handle(frames)
            if not self.running:
                return

    def _wait_for_requests(self, seconds: float) -> None:
        """Up to ``seconds`` (``EngineCore.schedule_delay``): return as soon as a message came
        and was applied, so that a new request joins the step scheduled next."""
        if seconds <= 0 or not self.running:
            return
        deadline = time.perf_counter() + seconds
        while (left := deadline - time.perf_counter()) > 0:
            # whole milliseconds asleep (zmq's unit), the last one's rest polled without sleeping
            if self.inbox.poll(int(1e3 * left)):
                self._drain_inbox(block=False)
                return

    def _handle(self, frames: list[bytes]) -> None:
        kind, payload = frames[0], frames[1] if len(frames) > 1 else b""
        self._changed = True
        if kind == ADD:
            request = _ADD_DECODER.decode(payload)
            try:
                self.core.add_request(request)
            except ValueError as error:  # validated by the front end; a duplicate id at worst
                self._send_outputs(EngineCoreOutputs([_error_output(request, error)]))
        elif kind == ABORT:
            self.core.abort_requests(_ABORT_DECODER.decode(payload))
        elif kind == SHUTDOWN:
            self.running = False

    def _send_outputs(self, outputs: EngineCoreOutputs) -> None:
        self.outbox.send_multipart([OUTPUTS, _ENCODER.encode(outputs)], copy=False)


def _error_output(request: EngineCoreRequest, error: Exception) -> EngineCoreOutput:
    return EngineCoreOutput(request.request_id, [], "error", error=str(error))


def _receive_config(inbox: zmq.Socket, parent_pid: int) -> EngineConfig:
    """The first message; a parent that dies before sending it ends this process."""
    while not inbox.poll(IDLE_POLL_MS):
        if os.getppid() != parent_pid:
            raise RuntimeError("the API process exited before it sent the engine config")
    frames = inbox.recv_multipart()
    if frames[0] != CONFIG:
        raise RuntimeError(f"expected the engine config first, got message type {frames[0]!r}")
    return decode_config(frames[1])


def _prefetch_kernels(timeline: StartupTimeline) -> None:
    """Load the C++/CUDA extension and import the Triton kernel modules: work the model build
    does first anyway, done while this process waits for its config (``lightvllm serve``
    starts it before its own imports, so the config comes a while after ours are done)."""
    with timeline.phase("prefetch_kernels"):
        import torch

        from phase1_kernels.ops import extension

        if os.environ.get("LIGHTVLLM_NO_EXTENSION", "") in ("", "0"):  # as extension.py reads it
            extension.load()  # cached build: a ninja check and a dlopen; may fail (native ops)
        if torch.version.cuda is not None:  # GPU builds run the Triton kernels
            import phase1_kernels.ops.triton_ops  # noqa: F401
            import phase2_attention.ops.triton_paged  # noqa: F401


def _receive_config_prefetching(inbox: zmq.Socket, parent_pid: int,
                                timeline: StartupTimeline) -> EngineConfig:
    """The config, with the kernels prefetched meanwhile; the prefetch finishes before this
    returns, so no two threads ever import the same modules."""
    background = StartupTimeline()
    thread = threading.Thread(target=_prefetch_kernels, args=(background,),
                              name="lightvllm-prefetch", daemon=True)
    thread.start()
    with timeline.phase("config_wait"):
        config = _receive_config(inbox, parent_pid)
    with timeline.phase("prefetch_wait"):  # what of the prefetch the config wait did not hide
        thread.join()
    timeline.add("prefetch_kernels_overlapped", background.phases.get("prefetch_kernels", 0.0))
    return config


def _build_core(config: EngineConfig, timeline: StartupTimeline) -> EngineCore:
    """The engine core, its start-up phases added to ``timeline`` (the executor's, then the
    scheduler and KV-block bookkeeping as ``core_init``)."""
    start = time.perf_counter()
    core = EngineCore(config)
    elapsed = time.perf_counter() - start
    executor_phases = core.executor.startup_phases
    timeline.update(executor_phases)
    timeline.add("core_init", elapsed - sum(executor_phases.values()))
    return core


def _freeze_heap(timeline: StartupTimeline) -> None:
    with timeline.phase("gc_freeze"):
        freeze_heap()  # start-up objects never become garbage: keep them out of every collection


def run_engine_core(input_addr: str, output_addr: str, parent_pid: int) -> int:
    timeline = StartupTimeline()
    imports = process_age()  # interpreter start and imports, before any line could time them
    if imports is not None:
        timeline.add("core_imports", imports)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    ctx = zmq.Context()
    inbox = ctx.socket(zmq.PULL)
    inbox.connect(input_addr)
    outbox = ctx.socket(zmq.PUSH)
    outbox.connect(output_addr)
    try:
        config = _receive_config_prefetching(inbox, parent_pid, timeline)
        core = _build_core(config, timeline)
        _freeze_heap(timeline)
        ready = ReadyInfo(os.getpid(), core.num_blocks, list(core.executor.graph_sizes),
                          core.startup_seconds, dict(timeline.phases))
        logger.info("engine core start-up %.2f s: %s", timeline.total(),
                    format_phases(timeline.phases))
        outbox.send_multipart([READY, _ENCODER.encode(ready)])
        EngineCoreProc(core, inbox, outbox, parent_pid).run_busy_loop()
        core.shutdown()
        return 0
    except Exception as error:  # start-up failure or a fatal step error: tell the API, exit 1
        logger.debug("engine core failed", exc_info=True)  # the API process reports it
        fatal = FatalInfo(type(error).__name__, str(error))
        outbox.send_multipart([FATAL, _ENCODER.encode(fatal)])
        return 1
    finally:
        outbox.close(linger=1000)
        inbox.close(linger=0)
        ctx.term()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="LightvLLM engine-core process")
    parser.add_argument("--input", required=True)
    parser.add_argument("--output", required=True)
    parser.add_argument("--parent-pid", type=int, default=os.getppid())
    parser.add_argument("--log-level", default="WARNING")
    args = parser.parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(),
                        format="%(asctime)s engine-core %(levelname)s %(name)s: %(message)s")
    sys.exit(run_engine_core(args.input, args.output, args.parent_pid))


if __name__ == "__main__":
    main()
