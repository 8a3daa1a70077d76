"""``mp``: one subprocess per rank on this host, driven over ZMQ with msgpack bytes.

Each message is encoded once and published once on an XPUB socket that every worker subscribes
to (start-up waits until all subscriptions have arrived, so nothing is lost to a slow joiner);
workers answer on one PULL socket. Only the output rank (TP rank 0 of the last PP stage) sends a
step's output; every rank answers a ``collective_rpc``. With PP > 1 up to PP steps are in
flight: ``submit_step`` publishes a step and returns at once, so stage 0 starts the next
micro-batch while the last stage finishes the previous one; outputs come back in order and one
that arrives while the engine waits for something else is kept until asked for. While the engine waits it checks its
workers' processes, so a worker that exits fails the engine with ``WorkerDiedError`` within a
poll interval instead of leaving it waiting forever.
"""

from __future__ import annotations

import functools
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import time
import weakref
from typing import Any

import msgspec
import zmq

from phase1_kernels.cpu_threads import restore_process_affinity
from phase3_scheduling import protocol
from phase3_scheduling.engine_config import EngineConfig, encode_config
from phase3_scheduling.executor import DeferredStep, WorkerDiedError
from phase3_scheduling.protocol import ModelRunnerOutput, RpcReply, RpcRequest, SchedulerOutput

from . import messages as m
from .base import RankedExecutor
from .errors import RpcTimeoutError, results_in_rank_order
from .processes import cpu_worker_env, describe_exit, free_port, stop_processes
from .worker_host import DEFAULT_BUILDER

logger = logging.getLogger(__name__)
_REPLY_DECODER = msgspec.msgpack.Decoder(RpcReply)


class _Resources:
    """What must be released even if the executor is never shut down (see ``weakref.finalize``)."""

    def __init__(self) -> None:
        self.procs: list[subprocess.Popen] = []
        self.ctx = zmq.Context()
        self.ipc_dir = tempfile.mkdtemp(prefix="lightvllm-mp-")

    def release(self) -> None:
        stop_processes(self.procs)
        self.ctx.destroy(linger=0)
        shutil.rmtree(self.ipc_dir, ignore_errors=True)


class MultiprocExecutor(RankedExecutor):
    poll_interval_s = 0.1  # how often a waiting engine checks that its workers live
    startup_timeout_s = 120.0
    rpc_timeout_s = 600.0  # load_model of a large checkpoint may take minutes

    def __init__(self, config: EngineConfig, model_builder: str = DEFAULT_BUILDER):
        super().__init__(config)
        self._seq = 0
        self._early_outputs: dict[int, bytes] = {}  # step seq -> encoded output not asked for yet
        self._res = _Resources()
        self._finalizer = weakref.finalize(self, self._res.release)
        self._broadcast, self._results = self._bind_sockets()
        start = time.perf_counter()
        self._spawn_workers(model_builder)
        self._wait_for_subscriptions()
        logger.info("mp executor: %d workers (pids %s) subscribed in %.1f s", self.world_size,
                    self.pids, time.perf_counter() - start)

    @property
    def pids(self) -> list[int]:
        return [proc.pid for proc in self._res.procs]

    # ---- start-up ------------------------------------------------------------------------------
    def _bind_sockets(self) -> tuple[zmq.Socket, zmq.Socket]:
        broadcast = self._res.ctx.socket(zmq.XPUB)
        broadcast.setsockopt(zmq.XPUB_VERBOSE, 1)  # one subscription message per worker
        broadcast.bind(f"ipc://{self._res.ipc_dir}/broadcast")
        results = self._res.ctx.socket(zmq.PULL)
        results.bind(f"ipc://{self._res.ipc_dir}/results")
        return broadcast, results

    def _spawn_workers(self, model_builder: str) -> None:
        config_bytes = encode_config(self.config)
        master_port = free_port()
        for rank in range(self.world_size):
            cmd = [sys.executable, "-m", "phase4_distributed.executors.worker_proc",
                   "--rank", str(rank), "--local-rank", str(rank),
                   "--world-size", str(self.world_size), "--master-addr", "127.0.0.1",
                   "--master-port", str(master_port),
                   "--broadcast-addr", f"ipc://{self._res.ipc_dir}/broadcast",
                   "--result-addr", f"ipc://{self._res.ipc_dir}/results",
                   "--parent-pid", str(os.getpid()), "--model-builder", model_builder]
            env = None  # on the CPU every rank gets its own cores: they all run on this host
            if self.config.device == "cpu":
                env = {**os.environ, **cpu_worker_env(rank, self.world_size)}
            proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, env=env,
                                    preexec_fn=restore_process_affinity)
            self._res.procs.append(proc)
            assert proc.stdin is not None  # stdin=PIPE
            proc.stdin.write(config_bytes)
            proc.stdin.close()

    def _wait_for_subscriptions(self) -> None:
        deadline = time.monotonic() + self.startup_timeout_s
        subscribed = 0
        while subscribed < self.world_size:
            if self._broadcast.poll(int(self.poll_interval_s * 1000)):
                subscribed += self._broadcast.recv()[:1] == b"\x01"
                continue
            self.check_health("waited for its workers to start")
            if time.monotonic() > deadline:
                raise RpcTimeoutError(f"only {subscribed} of {self.world_size} workers connected "
                                      f"within {self.startup_timeout_s:.0f} s")

    # ---- messages ------------------------------------------------------------------------------
    def _publish(self, kind: bytes, payload: bytes) -> int:
        self.check_health("sent a message")
        self._seq += 1
        self._broadcast.send_multipart([kind, m.pack_int(self._seq), payload], copy=False)
        return self._seq

    def _receive(self, what: str, deadline: float | None) -> tuple[bytes, int, int, bytes]:
        """The next reply, checking the workers' processes every poll interval."""
        while not self._results.poll(int(self.poll_interval_s * 1000)):
            self.check_health(what)
            if deadline is not None and time.monotonic() > deadline:
                raise RpcTimeoutError(f"no reply to {what} within the deadline")
        kind, seq, rank, payload = self._results.recv_multipart()
        return kind, m.unpack_int(seq), m.unpack_int(rank), payload

    @property
    def max_concurrent_batches(self) -> int:
        return self.config.parallel_config.pipeline_parallel_size

    def execute_model(self, step: SchedulerOutput) -> ModelRunnerOutput:
        return self.submit_step(step).result()

    def submit_step(self, step: SchedulerOutput) -> DeferredStep:
        return DeferredStep(functools.partial(self.wait_for_output,
                                              self._publish(m.STEP, protocol.encode(step))))

    def wait_for_output(self, seq: int) -> ModelRunnerOutput:
        """The output of step ``seq`` (outputs of later steps that arrive first are kept)."""
        while seq not in self._early_outputs:
            kind, reply_seq, rank, payload = self._receive(f"step {seq}", None)
            self._keep_or_fail(kind, reply_seq, rank, payload)
        return protocol.decode_output(self._early_outputs.pop(seq))

    def _keep_or_fail(self, kind: bytes, seq: int, rank: int, payload: bytes) -> None:
        """A reply that is not the one being waited for: a step's output is kept, a failed
        step raises."""
        if kind == m.STEP_ERROR:
            self._step_failed(rank, _REPLY_DECODER.decode(payload))
        elif kind == m.OUTPUT:
            self._early_outputs[seq] = payload

    def _step_failed(self, rank: int, reply: RpcReply) -> None:
        error = self._step_failure(f"rank {rank}: {reply.error_type}: {reply.error}")
        if isinstance(error, WorkerDiedError):
            stop_processes(self._res.procs)
        raise error

    def collective_rpc(self, method: str, args: tuple = (), kwargs: dict | None = None,
                       timeout_s: float | None = None) -> list[Any]:
        timeout_s = self.rpc_timeout_s if timeout_s is None else timeout_s
        seq = self._publish(m.RPC, protocol.encode(RpcRequest(method, list(args), kwargs or {})))
        deadline = time.monotonic() + timeout_s
        replies: dict[int, RpcReply] = {}
        while len(replies) < self.world_size:
            kind, reply_seq, rank, payload = self._receive(f"collective_rpc({method!r})", deadline)
            if kind == m.RPC_REPLY:
                if reply_seq == seq:
                    replies[rank] = _REPLY_DECODER.decode(payload)
            else:
                self._keep_or_fail(kind, reply_seq, rank, payload)
        return results_in_rank_order(method, replies)

    # ---- health and shutdown -------------------------------------------------------------------
    def check_health(self, what: str = "checked its workers") -> None:
        if self._dead is not None:
            raise self._dead
        for rank, proc in enumerate(self._res.procs):
            returncode = proc.poll()
            if returncode is not None and not self._closed:
                self._fail(WorkerDiedError(
                    f"worker rank {rank} (pid {proc.pid}) died ({describe_exit(returncode)}) "
                    f"while the engine {what}; the engine cannot continue"))

    def _fail(self, error: WorkerDiedError) -> None:
        logger.error("%s", error)
        self._dead = error
        stop_processes(self._res.procs)
        raise error

    def shutdown(self) -> None:
        if self._closed:
            return
        if self._dead is None:
            try:
                self.collective_rpc("shutdown", timeout_s=5.0)
            except Exception as error:  # stopping anyway: the processes are ended below
                logger.warning("workers did not shut down cleanly: %s", error)
        self._closed = True
        self._finalizer()

