"""The LightvLLMDeployment operator (kopf). Run it with

    kopf run --standalone --all-namespaces -m phase4_distributed.k8s.operator

On create, resume and every spec change it applies the deployment's objects (``build_manifests``)
with owner references to the resource, so deleting the resource lets the garbage collector remove
them all and a new world size re-scales the StatefulSet. A timer writes the status: phase,
scheduled/unschedulable/ready workers."""

from __future__ import annotations

import logging
import os
from typing import Any

import kopf

from .apply import apply_all, dynamic_client
from .crd import GROUP, PLURAL, VERSION
from .manifests import build_manifests
from .spec import DeploymentSpec, InvalidDeploymentSpec
from .status import observe

logger = logging.getLogger(__name__)

STATUS_INTERVAL_S = float(os.environ.get("LIGHTVLLM_OPERATOR_STATUS_INTERVAL", "2"))


@kopf.on.startup()
def configure(settings: kopf.OperatorSettings, memo: kopf.Memo, **_: Any) -> None:
    settings.posting.level = logging.WARNING
    settings.watching.server_timeout = 120
    memo.client = dynamic_client(os.environ.get("KUBECONFIG"))


def deployment_spec(name: str, namespace: str, spec: kopf.Spec,
                    patch: kopf.Patch | None = None) -> DeploymentSpec:
    """The typed spec; one the schema allows but the builder cannot express (e.g. more than
    1024 workers) fails permanently, with the reason in the status when ``patch`` is given."""
    try:
        return DeploymentSpec.from_resource(name, namespace, dict(spec))
    except InvalidDeploymentSpec as exc:
        if patch is not None:
            patch.status["phase"] = "Failed"
            patch.status["message"] = str(exc)
        raise kopf.PermanentError(str(exc)) from exc


@kopf.on.resume(GROUP, VERSION, PLURAL)
@kopf.on.create(GROUP, VERSION, PLURAL)
@kopf.on.update(GROUP, VERSION, PLURAL, field="spec")
def reconcile(name: str, namespace: str | None, spec: kopf.Spec, body: kopf.Body,
              memo: kopf.Memo, patch: kopf.Patch, **_: Any) -> None:
    """Apply every object of the deployment, owned by the resource."""
    assert namespace is not None  # the resource is namespaced (crd.py)
    desired = deployment_spec(name, namespace, spec, patch)
    manifests = build_manifests(desired)
    for manifest in manifests:
        kopf.append_owner_reference(manifest, owner=body)
    apply_all(memo.client, manifests)
    patch.status["workers"] = desired.world_size
    patch.status["observedGeneration"] = body.metadata.get("generation")
    logger.info("%s/%s: applied %d objects for %d workers", namespace, name, len(manifests),
                desired.world_size)


@kopf.timer(GROUP, VERSION, PLURAL, interval=STATUS_INTERVAL_S)
def report_status(name: str, namespace: str | None, spec: kopf.Spec, status: kopf.Status,
                  memo: kopf.Memo, patch: kopf.Patch, **_: Any) -> None:
    """Copy what the control plane reports into the status, writing only what changed."""
    assert namespace is not None  # the resource is namespaced (crd.py)
    observed = observe(memo.client, deployment_spec(name, namespace, spec))
    for key, value in observed.items():
        if status.get(key) != value:
            patch.status[key] = value
