"""The operator's own deployment on a real cluster: its namespace, service account, the RBAC
rules it needs (the custom resources, the objects it owns, pods to observe, events) and the
Deployment running kopf in standalone mode (one replica, no peering)."""

from __future__ import annotations

import logging
from typing import Any

from .crd import GROUP, PLURAL
from .spec import DEFAULT_IMAGE

logger = logging.getLogger(__name__)

NAMESPACE = "lightvllm-system"
NAME = "lightvllm-operator"
WRITE = ["get", "list", "watch", "create", "patch", "update", "delete"]
READ = ["get", "list", "watch"]


def cluster_role() -> dict[str, Any]:
    rules = [
        {"apiGroups": [GROUP], "resources": [PLURAL], "verbs": READ + ["patch", "update"]},
        {"apiGroups": [GROUP], "resources": [f"{PLURAL}/status"], "verbs": ["get", "patch", "update"]},
        {"apiGroups": [""], "resources": ["configmaps", "services"], "verbs": WRITE},
        {"apiGroups": ["apps"], "resources": ["statefulsets", "deployments"], "verbs": WRITE},
        {"apiGroups": [""], "resources": ["pods"], "verbs": READ},
        {"apiGroups": [""], "resources": ["events"], "verbs": ["create"]},
        {"apiGroups": [""], "resources": ["namespaces"], "verbs": READ},
        {"apiGroups": ["apiextensions.k8s.io"], "resources": ["customresourcedefinitions"],
         "verbs": READ},
    ]
    return {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
            "metadata": {"name": NAME}, "rules": rules}


def operator_deployment(image: str = DEFAULT_IMAGE) -> dict[str, Any]:
    match = {"app.kubernetes.io/name": NAME}
    container = {
        "name": "operator", "image": image,
        "command": ["kopf", "run", "--standalone", "--all-namespaces", "--liveness",
                    "http://0.0.0.0:8080/healthz", "-m", "phase4_distributed.k8s.operator"],
        "ports": [{"name": "health", "containerPort": 8080, "protocol": "TCP"}],
        "livenessProbe": {"httpGet": {"path": "/healthz", "port": "health"}, "periodSeconds": 10},
        "resources": {"requests": {"cpu": "100m", "memory": "256Mi"}}}
    return {"apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": NAME, "namespace": NAMESPACE, "labels": match},
            "spec": {"replicas": 1, "strategy": {"type": "Recreate"},
                     "selector": {"matchLabels": match},
                     "template": {"metadata": {"labels": match},
                                  "spec": {"serviceAccountName": NAME, "containers": [container]}}}}


def operator_manifests(image: str = DEFAULT_IMAGE) -> list[dict[str, Any]]:
    subject = {"kind": "ServiceAccount", "name": NAME, "namespace": NAMESPACE}
    return [
        {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NAMESPACE}},
        {"apiVersion": "v1", "kind": "ServiceAccount",
         "metadata": {"name": NAME, "namespace": NAMESPACE}},
        cluster_role(),
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
         "metadata": {"name": NAME}, "subjects": [subject],
         "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": NAME}},
        operator_deployment(image),
    ]
