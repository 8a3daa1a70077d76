"""What the control plane says about a deployment's workers, condensed into the
``LightvLLMDeployment`` status: how many worker pods exist, are scheduled, unschedulable, ready."""

from __future__ import annotations

import logging
from typing import Any

from .manifests import labels
from .spec import DeploymentSpec

logger = logging.getLogger(__name__)


def _scheduled_condition(pod: dict[str, Any]) -> dict[str, Any] | None:
    for condition in (pod.get("status") or {}).get("conditions") or []:
        if condition.get("type") == "PodScheduled":
            return condition
    return None


def summarize(world_size: int, pods: list[dict[str, Any]], ready_workers: int,
              driver_ready: bool) -> dict[str, Any]:
    """The status fields from the worker pods (as dicts) and the workload controllers' counts."""
    live = [pod for pod in pods if not pod["metadata"].get("deletionTimestamp")]
    conditions = [_scheduled_condition(pod) for pod in live]
    scheduled = sum(1 for c in conditions if c and c.get("status") == "True")
    blocked = [c for c in conditions if c and c.get("status") == "False"
               and c.get("reason") == "Unschedulable"]
    if ready_workers >= world_size and driver_ready:
        phase, message = "Ready", f"{world_size} workers ready"
    elif blocked:
        phase, message = "Unschedulable", blocked[0].get("message", "")
    elif scheduled >= world_size:
        phase, message = "Starting", f"{scheduled} of {world_size} workers scheduled"
    else:
        phase, message = "Pending", f"{scheduled} of {world_size} workers scheduled"
    return {"phase": phase, "message": message, "workers": world_size,
            "scheduledWorkers": scheduled, "unschedulableWorkers": len(blocked),
            "readyWorkers": ready_workers, "driverReady": driver_ready}


def observe(client: Any, spec: DeploymentSpec) -> dict[str, Any]:
    """Read the worker pods, the StatefulSet and the driver Deployment through ``client``."""
    pods = client.resources.get(api_version="v1", kind="Pod")
    selector = ",".join(f"{k}={v}" for k, v in labels(spec, "worker").items())
    items = pods.get(namespace=spec.namespace, label_selector=selector).to_dict()["items"]
    return summarize(spec.world_size, items,
                     _count(client, "StatefulSet", spec.worker_statefulset, spec, "readyReplicas"),
                     _count(client, "Deployment", spec.driver_name, spec, "availableReplicas") > 0)


def _count(client: Any, kind: str, name: str, spec: DeploymentSpec, field: str) -> int:
    resource = client.resources.get(api_version="apps/v1", kind=kind)
    try:
        obj = resource.get(name=name, namespace=spec.namespace).to_dict()
    except Exception as exc:  # noqa: BLE001 - not created yet counts as zero
        logger.debug("%s %s not readable: %s", kind, name, exc)
        return 0
    return int((obj.get("status") or {}).get(field) or 0)
