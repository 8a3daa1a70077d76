"""Create-or-update of manifests through the API server (what ``kubectl apply`` does for a
single owner): create, and on 409 merge-patch the whole desired object over the live one."""

from __future__ import annotations

import logging
from typing import Any

from kubernetes import client as k8s_client
from kubernetes import config as k8s_config
from kubernetes.dynamic import DynamicClient
from kubernetes.dynamic.exceptions import ConflictError

logger = logging.getLogger(__name__)

MERGE_PATCH = "application/merge-patch+json"


def dynamic_client(kubeconfig: str | None = None) -> DynamicClient:
    """A client from ``kubeconfig``, else the in-cluster service account, else ~/.kube/config."""
    if kubeconfig:
        api = k8s_config.new_client_from_config(config_file=str(kubeconfig))
    else:
        try:
            k8s_config.load_incluster_config()
        except k8s_config.ConfigException:
            k8s_config.load_kube_config()
        api = k8s_client.ApiClient()
    return DynamicClient(api)


def apply(client: DynamicClient, manifest: dict[str, Any]) -> Any:
    """Make the live object equal ``manifest`` in every field the manifest sets."""
    resource = client.resources.get(api_version=manifest["apiVersion"], kind=manifest["kind"])
    metadata = manifest["metadata"]
    namespace = metadata.get("namespace") if resource.namespaced else None
    try:
        created = resource.create(body=manifest, namespace=namespace)
        logger.info("created %s %s", manifest["kind"], metadata["name"])
        return created
    except ConflictError:
        logger.info("updating %s %s", manifest["kind"], metadata["name"])
        return resource.patch(body=manifest, name=metadata["name"], namespace=namespace,
                              content_type=MERGE_PATCH)


def apply_all(client: DynamicClient, manifests: list[dict[str, Any]]) -> list[Any]:
    return [apply(client, manifest) for manifest in manifests]
