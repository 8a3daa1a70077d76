"""The typed description of one LightvLLM deployment on Kubernetes.

Everything the manifests, the CRD's defaults and the operator need is here, once: the manifest
builder takes a ``DeploymentSpec``, and the operator turns a ``LightvLLMDeployment`` resource's spec
into one with ``DeploymentSpec.from_resource``. Each worker pod is one rank of the
torch.distributed world (``tensor_parallel_size * pipeline_parallel_size`` pods)."""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from typing import Any, Literal

logger = logging.getLogger(__name__)

AffinityMode = Literal["required", "preferred", "none"]
AFFINITY_MODES: tuple[str, ...] = ("required", "preferred", "none")
DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
# The StatefulSet name plus "-NNN" and the controller-revision hash label must stay within 63.
MAX_NAME_LENGTH = 40
MAX_WORKERS = 1024

WORKER_PORT = 50051
MASTER_PORT = 29500
DRIVER_PORT = 8000
DEFAULT_IMAGE = "lightvllm:latest"  # built from the repository and pushed by the user
DEFAULT_MODEL = "smollm2-135m-instruct"


class InvalidDeploymentSpec(ValueError):
    """A deployment spec value outside what the manifests can express."""


@dataclass(frozen=True)
class WorkerPlacement:
    """Where the scheduler may put the worker pods.

    ``spread``: podAntiAffinity among the deployment's workers over ``spread_topology_key``
    (one worker per node by default); ``required`` refuses to co-locate, ``preferred`` only tries.
    ``colocate_topology_key``: podAffinity keeping all workers in one domain of that key (e.g.
    ``topology.kubernetes.io/zone`` or a rack/NVLink-domain label), so the TP all-reduce stays local.
    """

    spread: AffinityMode = "required"
    spread_topology_key: str = "kubernetes.io/hostname"
    colocate_topology_key: str | None = None
    node_selector: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.spread not in AFFINITY_MODES:
            raise InvalidDeploymentSpec(
                f"placement.spread is {self.spread!r}, expected one of {AFFINITY_MODES}")
        if not self.spread_topology_key:
            raise InvalidDeploymentSpec("placement.spread_topology_key is empty")


@dataclass(frozen=True)
class DeploymentSpec:
    """One model served by ``tensor_parallel_size * pipeline_parallel_size`` gRPC worker pods
    (each with ``gpus_per_worker`` GPUs) and one driver pod running ``lightvllm serve``."""

    name: str
    model: str = DEFAULT_MODEL
    namespace: str = "default"
    tensor_parallel_size: int = 1
    pipeline_parallel_size: int = 1
    gpus_per_worker: int = 1
    image: str = DEFAULT_IMAGE
    placement: WorkerPlacement = field(default_factory=WorkerPlacement)
    worker_port: int = WORKER_PORT
    master_port: int = MASTER_PORT
    driver_port: int = DRIVER_PORT
    cluster_domain: str = "cluster.local"
    extra_engine_args: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if len(self.name) > MAX_NAME_LENGTH or not DNS_LABEL.match(self.name):
            raise InvalidDeploymentSpec(
                f"name {self.name!r} must be a DNS label of at most {MAX_NAME_LENGTH} characters")
        if not DNS_LABEL.match(self.namespace):
            raise InvalidDeploymentSpec(f"namespace {self.namespace!r} is not a DNS label")
        for label, value, low in (("tensor_parallel_size", self.tensor_parallel_size, 1),
                                  ("pipeline_parallel_size", self.pipeline_parallel_size, 1),
                                  ("gpus_per_worker", self.gpus_per_worker, 0)):
            if value < low:
                raise InvalidDeploymentSpec(f"{label} is {value}, the minimum is {low}")
        if self.world_size > MAX_WORKERS:
            raise InvalidDeploymentSpec(
                f"world size {self.world_size} exceeds the limit of {MAX_WORKERS} workers")
        if not self.model or not self.image:
            raise InvalidDeploymentSpec("model and image must be non-empty")

    @property
    def world_size(self) -> int:
        """Ranks in the torch.distributed world: one worker pod per rank."""
        return self.tensor_parallel_size * self.pipeline_parallel_size

    @property
    def worker_statefulset(self) -> str:
        return f"{self.name}-worker"

    @property
    def worker_service(self) -> str:
        """The headless Service whose DNS names give each worker a stable address."""
        return f"{self.name}-workers"

    @property
    def driver_name(self) -> str:
        return f"{self.name}-driver"

    @property
    def config_map(self) -> str:
        return f"{self.name}-config"

    @classmethod
    def from_resource(cls, name: str, namespace: str, spec: dict[str, Any]) -> DeploymentSpec:
        """Build from a ``LightvLLMDeployment``'s (already defaulted) camelCase spec."""
        placement = spec.get("placement", {})
        return cls(
            name=name, namespace=namespace, model=spec["model"],
            tensor_parallel_size=int(spec.get("tensorParallelSize", 1)),
            pipeline_parallel_size=int(spec.get("pipelineParallelSize", 1)),
            gpus_per_worker=int(spec.get("gpusPerWorker", 1)),
            image=spec.get("image", DEFAULT_IMAGE),
            placement=WorkerPlacement(
                spread=placement.get("spread", "required"),
                spread_topology_key=placement.get("spreadTopologyKey", "kubernetes.io/hostname"),
                colocate_topology_key=placement.get("colocateTopologyKey"),
                node_selector=dict(placement.get("nodeSelector", {}))),
            cluster_domain=spec.get("clusterDomain", "cluster.local"),
            extra_engine_args=tuple(spec.get("extraEngineArgs", ())),
        )
