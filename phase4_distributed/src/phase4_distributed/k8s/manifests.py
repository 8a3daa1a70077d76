"""The Kubernetes objects of one deployment, built from a ``DeploymentSpec``: the ConfigMap, the
workers' headless Service and StatefulSet, and the driver's Service and Deployment.

The operator applies exactly these objects; ``write_manifests`` writes them as YAML for
``kubectl apply``. Workers run ``lightvllm worker --rank R --world-size N --master ADDR --port P``
with ``R`` the pod's hostname ordinal; the driver runs ``lightvllm serve`` with the gRPC executor
pointed at the workers' stable DNS names."""

from __future__ import annotations

import hashlib
import json
import logging
from typing import Any

from .discovery import WorkerTopology
from .spec import DeploymentSpec, WorkerPlacement

logger = logging.getLogger(__name__)

Manifest = dict[str, Any]
GPU_RESOURCE = "nvidia.com/gpu"
CONFIG_HASH_ANNOTATION = "lightvllm.io/config-hash"
WORKER_HEALTH = ["lightvllm", "worker-health", "--address"]


def labels(spec: DeploymentSpec, component: str) -> dict[str, str]:
    return {"app.kubernetes.io/name": "lightvllm", "app.kubernetes.io/instance": spec.name,
            "app.kubernetes.io/component": component}


def topology(spec: DeploymentSpec) -> WorkerTopology:
    return WorkerTopology(statefulset=spec.worker_statefulset, service=spec.worker_service,
                          namespace=spec.namespace, replicas=spec.world_size,
                          cluster_domain=spec.cluster_domain, port=spec.worker_port)


def _metadata(spec: DeploymentSpec, name: str, component: str) -> dict[str, Any]:
    return {"name": name, "namespace": spec.namespace, "labels": labels(spec, component)}


def config_map(spec: DeploymentSpec) -> Manifest:
    """What every pod of the deployment reads as environment variables."""
    workers = topology(spec)
    data = {
        "MODEL": spec.model,
        "WORLD_SIZE": str(spec.world_size),
        "TENSOR_PARALLEL_SIZE": str(spec.tensor_parallel_size),
        "PIPELINE_PARALLEL_SIZE": str(spec.pipeline_parallel_size),
        "MASTER_ADDR": workers.master(),
        "MASTER_PORT": str(spec.master_port),
        "WORKER_PORT": str(spec.worker_port),
        "WORKER_ADDRESSES": ",".join(workers.addresses()),
    }
    return {"apiVersion": "v1", "kind": "ConfigMap",
            "metadata": _metadata(spec, spec.config_map, "config"), "data": data}


def config_hash(config: Manifest) -> str:
    """Changes when the ConfigMap does, so that pods restart on a new world size or model."""
    return hashlib.sha256(json.dumps(config["data"], sort_keys=True).encode()).hexdigest()[:16]


def worker_service(spec: DeploymentSpec) -> Manifest:
    """Headless: one DNS record per worker pod, published before the pod is ready (the workers
    must find rank 0 to become ready at all)."""
    return {"apiVersion": "v1", "kind": "Service",
            "metadata": _metadata(spec, spec.worker_service, "worker"),
            "spec": {"clusterIP": "None", "publishNotReadyAddresses": True,
                     "selector": labels(spec, "worker"),
                     "ports": [{"name": "grpc", "port": spec.worker_port, "protocol": "TCP"},
                               {"name": "dist", "port": spec.master_port, "protocol": "TCP"}]}}


def worker_affinity(spec: DeploymentSpec) -> dict[str, Any]:
    """podAntiAffinity spreading the workers, podAffinity keeping them in one domain."""
    placement: WorkerPlacement = spec.placement
    selector = {"matchLabels": labels(spec, "worker")}
    affinity: dict[str, Any] = {}
    spread_term = {"labelSelector": selector, "topologyKey": placement.spread_topology_key}
    if placement.spread == "required":
        affinity["podAntiAffinity"] = {"requiredDuringSchedulingIgnoredDuringExecution": [spread_term]}
    elif placement.spread == "preferred":
        affinity["podAntiAffinity"] = {"preferredDuringSchedulingIgnoredDuringExecution": [
            {"weight": 100, "podAffinityTerm": spread_term}]}
    if placement.colocate_topology_key:
        affinity["podAffinity"] = {"requiredDuringSchedulingIgnoredDuringExecution": [
            {"labelSelector": selector, "topologyKey": placement.colocate_topology_key}]}
    return affinity


def _health_probe(port: int, period_s: int, failures: int) -> dict[str, Any]:
    """``lightvllm worker-health`` calls the worker's Health RPC; exit 0 means healthy."""
    return {"exec": {"command": [*WORKER_HEALTH, f"127.0.0.1:{port}"]},
            "periodSeconds": period_s, "timeoutSeconds": 5, "failureThreshold": failures}


def worker_container(spec: DeploymentSpec) -> dict[str, Any]:
    command = ('exec lightvllm worker --rank "${HOSTNAME##*-}" --world-size "$WORLD_SIZE" '
               '--master "$MASTER_ADDR" --port "$WORKER_PORT"')
    container: dict[str, Any] = {
        "name": "worker", "image": spec.image, "command": ["/bin/sh", "-c", command],
        "envFrom": [{"configMapRef": {"name": spec.config_map}}],
        "ports": [{"name": "grpc", "containerPort": spec.worker_port, "protocol": "TCP"},
                  {"name": "dist", "containerPort": spec.master_port, "protocol": "TCP"}],
        # Loading the weights may take minutes: the startup probe allows 20 min, then liveness.
        "startupProbe": _health_probe(spec.worker_port, period_s=10, failures=120),
        "readinessProbe": _health_probe(spec.worker_port, period_s=5, failures=3),
        "livenessProbe": _health_probe(spec.worker_port, period_s=10, failures=6),
        "volumeMounts": [{"name": "dshm", "mountPath": "/dev/shm"}],
    }
    if spec.gpus_per_worker:
        container["resources"] = {"limits": {GPU_RESOURCE: spec.gpus_per_worker}}
    return container


def worker_statefulset(spec: DeploymentSpec, config_digest: str) -> Manifest:
    pod_spec: dict[str, Any] = {
        "automountServiceAccountToken": False,
        "containers": [worker_container(spec)],
        # NCCL and the shared-memory transport need more than the default 64 MiB /dev/shm.
        "volumes": [{"name": "dshm", "emptyDir": {"medium": "Memory"}}],
        "terminationGracePeriodSeconds": 30,
    }
    if affinity := worker_affinity(spec):
        pod_spec["affinity"] = affinity
    if spec.placement.node_selector:
        pod_spec["nodeSelector"] = dict(spec.placement.node_selector)
    return {"apiVersion": "apps/v1", "kind": "StatefulSet",
            "metadata": _metadata(spec, spec.worker_statefulset, "worker"),
            "spec": {
                "serviceName": spec.worker_service, "replicas": spec.world_size,
                # All ranks must start together to form the group: no one-by-one start-up.
                "podManagementPolicy": "Parallel",
                "selector": {"matchLabels": labels(spec, "worker")},
                "template": {"metadata": {"labels": labels(spec, "worker"),
                                          "annotations": {CONFIG_HASH_ANNOTATION: config_digest}},
                             "spec": pod_spec}}}


def driver_service(spec: DeploymentSpec) -> Manifest:
    return {"apiVersion": "v1", "kind": "Service",
            "metadata": _metadata(spec, spec.driver_name, "driver"),
            "spec": {"type": "ClusterIP", "selector": labels(spec, "driver"),
                     "ports": [{"name": "http", "port": spec.driver_port,
                                "targetPort": "http", "protocol": "TCP"}]}}


def driver_container(spec: DeploymentSpec) -> dict[str, Any]:
    args = ["serve", "$(MODEL)", "--host", "0.0.0.0", "--port", str(spec.driver_port),
            "--distributed-executor-backend", "grpc", "--worker-addresses", "$(WORKER_ADDRESSES)",
            "--tensor-parallel-size", "$(TENSOR_PARALLEL_SIZE)",
            "--pipeline-parallel-size", "$(PIPELINE_PARALLEL_SIZE)", *spec.extra_engine_args]
    http_health = {"httpGet": {"path": "/health", "port": "http"}, "timeoutSeconds": 5}
    return {"name": "driver", "image": spec.image, "command": ["lightvllm"], "args": args,
            "envFrom": [{"configMapRef": {"name": spec.config_map}}],
            "ports": [{"name": "http", "containerPort": spec.driver_port, "protocol": "TCP"}],
            "startupProbe": {**http_health, "periodSeconds": 10, "failureThreshold": 120},
            "readinessProbe": {**http_health, "periodSeconds": 5, "failureThreshold": 3},
            "livenessProbe": {**http_health, "periodSeconds": 10, "failureThreshold": 6}}


def driver_deployment(spec: DeploymentSpec, config_digest: str) -> Manifest:
    """The OpenAPI server + engine core; it holds no GPU, the workers do."""
    return {"apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": _metadata(spec, spec.driver_name, "driver"),
            "spec": {"replicas": 1, "strategy": {"type": "Recreate"},
                     "selector": {"matchLabels": labels(spec, "driver")},
                     "template": {"metadata": {"labels": labels(spec, "driver"),
                                               "annotations": {CONFIG_HASH_ANNOTATION: config_digest}},
                                  "spec": {"automountServiceAccountToken": False,
                                           "containers": [driver_container(spec)]}}}}


def build_manifests(spec: DeploymentSpec) -> list[Manifest]:
    """Every object of the deployment, in the order to apply them."""
    config = config_map(spec)
    digest = config_hash(config)
    return [config, worker_service(spec), worker_statefulset(spec, digest),
            driver_service(spec), driver_deployment(spec, digest)]
