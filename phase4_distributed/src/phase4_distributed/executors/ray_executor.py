"""``ray``: one Ray actor per rank, placed by a placement group with one bundle per rank (CPU
bundles on the CPU, GPU bundles on GPUs), each wrapping the same ``WorkerHost`` as ``mp``.

Only bytes cross to the actors: the config and every step are msgpack-encoded before
``.remote``; a large step is ``ray.put`` once and the same object reference goes to every rank. A dead
actor (``RayActorError``) fails the engine with ``WorkerDiedError``. Ray is the optional extra
``phase4-distributed[ray]``; tests start it bound to 127.0.0.1 without the dashboard.
"""

from __future__ import annotations

import functools
import logging
import os
import time
from typing import Any

import msgspec
import ray
from ray.exceptions import GetTimeoutError, RayActorError, RayTaskError
from ray.util.placement_group import placement_group, remove_placement_group
from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

from phase1_kernels.cpu_threads import BIND_ENV, parse_cpu_list
from phase3_scheduling import protocol
from phase3_scheduling.engine_config import EngineConfig, decode_config, encode_config
from phase3_scheduling.executor import DeferredStep, WorkerDiedError
from phase3_scheduling.protocol import ModelRunnerOutput, RpcReply, RpcRequest, SchedulerOutput

from .base import RankedExecutor
from .errors import RpcTimeoutError, results_in_rank_order
from .processes import cpu_worker_env, free_port
from .worker_host import DEFAULT_BUILDER, WorkerHost

logger = logging.getLogger(__name__)
_REPLY_DECODER = msgspec.msgpack.Decoder(RpcReply)
INLINE_STEP_BYTES = 64 * 1024


class RayWorkerHost:
    """The actor: bytes in, bytes out, around one rank's ``WorkerHost``."""

    def __init__(self, config_bytes: bytes, rank: int, builder: str):
        self.config = decode_config(config_bytes)
        self.rank = rank
        self.builder = builder
        self.host: WorkerHost | None = None

    def rendezvous_address(self) -> tuple[str, int]:
        """This node's address and a free port (asked of rank 0, for torch.distributed)."""
        address = ray.util.get_node_ip_address()
        return address, free_port(address)

    def node_id(self) -> str:
        return ray.get_runtime_context().get_node_id()

    def start(self, master_addr: str, master_port: int, cpu_env: dict[str, str]) -> int:
        """Join the distributed world and create the worker; returns this actor's PID. On the
        CPU, ``cpu_env`` gives this rank its share of the node's cores (the driver computed it:
        a raylet started after the driver pinned its threads would give actors only core 0)."""
        if cpu_env:
            os.environ.update(cpu_env)
            os.sched_setaffinity(0, parse_cpu_list(cpu_env[BIND_ENV]))
        # Ray makes only this actor's GPU visible, so it is cuda:0 here
        self.host = WorkerHost.start(self.config, self.rank, 0, master_addr, master_port,
                                     self.builder)
        return os.getpid()

    def execute(self, step_bytes: bytes) -> bytes | None:
        assert self.host is not None, "start() first"
        return self.host.execute(step_bytes)

    def call(self, request_bytes: bytes) -> bytes:
        assert self.host is not None, "start() first"
        return self.host.call(request_bytes)


class RayExecutor(RankedExecutor):
    poll_interval_s = 0.5
    startup_timeout_s = 300.0
    rpc_timeout_s = 600.0

    def __init__(self, config: EngineConfig, model_builder: str = DEFAULT_BUILDER):
        super().__init__(config)
        self._owns_ray = not ray.is_initialized()
        if self._owns_ray:
            ray.init(_node_ip_address="127.0.0.1", include_dashboard=False,
                     num_cpus=max(self.world_size, os.cpu_count() or 1))
        start = time.perf_counter()
        self.placement_group = self._reserve_bundles()
        self.actors = self._create_actors(model_builder)
        self.pids = self._start_actors()
        logger.info("ray executor: %d actors (pids %s) ready in %.1f s", self.world_size,
                    self.pids, time.perf_counter() - start)

    # ---- start-up ------------------------------------------------------------------------------
    def _reserve_bundles(self):
        bundle = {"CPU": 1, "GPU": 1} if self.config.device == "cuda" else {"CPU": 1}
        group = placement_group([dict(bundle) for _ in range(self.world_size)], strategy="PACK")
        try:
            ray.get(group.ready(), timeout=self.startup_timeout_s)
        except GetTimeoutError:
            remove_placement_group(group)
            raise RpcTimeoutError(
                f"Ray could not reserve {self.world_size} bundles of {bundle} within "
                f"{self.startup_timeout_s:.0f} s (cluster resources: {ray.cluster_resources()})"
            ) from None
        return group

    def _create_actors(self, model_builder: str) -> list:
        gpus = 1 if self.config.device == "cuda" else 0
        actor_class = ray.remote(num_cpus=1, num_gpus=gpus)(RayWorkerHost)
        config_bytes = encode_config(self.config)
        return [actor_class.options(scheduling_strategy=PlacementGroupSchedulingStrategy(
                    self.placement_group, placement_group_bundle_index=rank)
                ).remote(config_bytes, rank, model_builder)
                for rank in range(self.world_size)]

    def _start_actors(self) -> list[int]:
        address, port = self._get([self.actors[0].rendezvous_address.remote()], "start-up",
                                  self.startup_timeout_s)[0]
        nodes = self._get([actor.node_id.remote() for actor in self.actors], "start-up",
                          self.startup_timeout_s)
        cpu = self.config.device == "cpu"
        refs = [actor.start.remote(address, port, cpu_worker_env(nodes[:rank].count(node),
                                                                 nodes.count(node)) if cpu else {})
                for rank, (actor, node) in enumerate(zip(self.actors, nodes))]
        return self._get(refs, "start-up", self.startup_timeout_s)

    # ---- calls ---------------------------------------------------------------------------------
    def _get(self, refs: list, what: str, timeout_s: float | None) -> list:
        """``ray.get`` in poll-sized slices: a dead actor raises ``WorkerDiedError``."""
        if self._dead is not None:
            raise self._dead
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        while True:
            try:
                return ray.get(refs, timeout=self.poll_interval_s)
            except GetTimeoutError:
                if deadline is not None and time.monotonic() > deadline:
                    raise RpcTimeoutError(f"no reply to {what} within {timeout_s:.0f} s") from None
            except RayActorError as error:
                self._dead = WorkerDiedError(
                    f"a Ray worker actor died while the engine waited for {what}; the engine "
                    f"cannot continue ({type(error).__name__}: {str(error).splitlines()[0]})")
                logger.error("%s", self._dead)
                raise self._dead from None

    @property
    def max_concurrent_batches(self) -> int:
        """Actors run their calls in order, so PP stages overlap when steps are submitted
        before the previous output is back."""
        return self.config.parallel_config.pipeline_parallel_size

    def execute_model(self, step: SchedulerOutput) -> ModelRunnerOutput:
        return self.submit_step(step).result()

    def submit_step(self, step: SchedulerOutput) -> DeferredStep:
        data = protocol.encode(step)
        # small steps travel inline in the task (Ray's own copy per actor is cheaper than an
        # object-store round trip, measured in benchmarks/executor_overhead.py); large ones
        # are put once and every actor reads the same object
        arg = data if len(data) < INLINE_STEP_BYTES else ray.put(data)
        refs = [actor.execute.remote(arg) for actor in self.actors]
        return DeferredStep(functools.partial(self.wait_for_output, refs))

    def wait_for_output(self, refs: list) -> ModelRunnerOutput:
        try:
            outputs = self._get(refs, "a step", None)
        except RayTaskError as error:
            raise self._step_failure(f"a rank: {type(error.cause).__name__}: {error.cause}"
                                     ) from None
        return protocol.decode_output(outputs[self.output_rank])

    def collective_rpc(self, method: str, args: tuple = (), kwargs: dict | None = None,
                       timeout_s: float | None = None) -> list[Any]:
        request = protocol.encode(RpcRequest(method, list(args), kwargs or {}))
        refs = [actor.call.remote(request) for actor in self.actors]
        timeout_s = self.rpc_timeout_s if timeout_s is None else timeout_s
        replies = self._get(refs, f"collective_rpc({method!r})", timeout_s)
        return results_in_rank_order(method, {rank: _REPLY_DECODER.decode(reply)
                                              for rank, reply in enumerate(replies)})

    def check_health(self) -> None:
        self.collective_rpc("ping", timeout_s=30.0)

    def shutdown(self) -> None:
        if not self._close_workers(timeout_s=10.0):
            return
        for actor in self.actors:
            ray.kill(actor)
        remove_placement_group(self.placement_group)
        if self._owns_ray:
            ray.shutdown()

