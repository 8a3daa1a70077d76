"""The kopf operator against the real control plane: a LightvLLMDeployment becomes a ConfigMap,
two Services, a StatefulSet and a driver Deployment owned by it; a spec change re-scales; the
status follows the scheduler; deleting the resource lets the garbage collector remove it all."""

from __future__ import annotations

import pytest
from kubernetes.dynamic.exceptions import NotFoundError
from phase4_distributed.k8s.crd import GROUP, KIND, VERSION
from phase4_distributed.k8s.testing import wait_for

pytestmark = pytest.mark.k8s
POOL_LABEL = "lightvllm.io/test-pool"
OWNED = [("v1", "ConfigMap", "llama-config"), ("v1", "Service", "llama-workers"),
         ("v1", "Service", "llama-driver"), ("apps/v1", "StatefulSet", "llama-worker"),
         ("apps/v1", "Deployment", "llama-driver")]


def create(lvd, namespace: str, pool: str, **spec) -> dict:
    body = {"apiVersion": f"{GROUP}/{VERSION}", "kind": KIND,
            "metadata": {"name": "llama", "namespace": namespace},
            "spec": {"model": "/models/llama", "placement": {"nodeSelector": {POOL_LABEL: pool}},
                     **spec}}
    return lvd.create(body=body, namespace=namespace).to_dict()


def get(kube, api_version: str, kind: str, name: str, namespace: str) -> dict | None:
    try:
        return kube.resources.get(api_version=api_version, kind=kind).get(
            name=name, namespace=namespace).to_dict()
    except NotFoundError:
        return None


def status_is(lvd, namespace: str, **expected):
    status = lvd.get(name="llama", namespace=namespace).to_dict().get("status") or {}
    return status if all(status.get(k) == v for k, v in expected.items()) else None


def worker_pods(kube, namespace: str) -> list[dict]:
    pods = kube.resources.get(api_version="v1", kind="Pod").get(
        namespace=namespace, label_selector="app.kubernetes.io/component=worker").to_dict()
    return sorted(pods["items"], key=lambda pod: pod["metadata"]["name"])


def test_operator_creates_owned_objects_and_reports_status(kube, lvd, operator, namespace,
                                                           node_pool):
    pool, nodes = node_pool([(1, {}), (1, {})])
    owner = create(lvd, namespace, pool, tensorParallelSize=2)
    objects = wait_for(lambda: all(o := [get(kube, *ref, namespace) for ref in OWNED]) and o,
                       60, "the operator's objects")
    for obj in objects:
        (ref,) = obj["metadata"]["ownerReferences"]
        assert (ref["kind"], ref["name"], ref["uid"]) == (KIND, "llama", owner["metadata"]["uid"])
        assert ref["controller"] is True and ref["blockOwnerDeletion"] is True
    assert objects[3]["spec"]["replicas"] == 2
    status = wait_for(lambda: status_is(lvd, namespace, phase="Starting", scheduledWorkers=2),
                      60, "status Starting with 2 scheduled workers")
    assert status["workers"] == 2 and status["readyWorkers"] == 0
    pods = worker_pods(kube, namespace)
    assert [pod["spec"]["hostname"] for pod in pods] == ["llama-worker-0", "llama-worker-1"]
    assert sorted(pod["spec"]["nodeName"] for pod in pods) == sorted(nodes)
    assert all(pod["metadata"]["ownerReferences"][0]["kind"] == "StatefulSet" for pod in pods)


def test_status_says_unschedulable_when_gpus_are_short(kube, lvd, operator, namespace, node_pool):
    pool, _ = node_pool([(1, {})])
    create(lvd, namespace, pool, tensorParallelSize=2, placement={
        "spread": "none", "nodeSelector": {POOL_LABEL: pool}})
    status = wait_for(lambda: status_is(lvd, namespace, phase="Unschedulable"), 60,
                      "status Unschedulable")
    assert (status["scheduledWorkers"], status["unschedulableWorkers"]) == (1, 1)
    assert "Insufficient nvidia.com/gpu" in status["message"]


def test_spec_change_rescales_the_workers(kube, lvd, operator, namespace, node_pool):
    pool, _ = node_pool([(1, {}), (1, {}), (1, {}), (1, {})])
    create(lvd, namespace, pool, tensorParallelSize=2)
    wait_for(lambda: status_is(lvd, namespace, scheduledWorkers=2), 60, "2 workers scheduled")
    lvd.patch(name="llama", namespace=namespace, content_type="application/merge-patch+json",
              body={"spec": {"tensorParallelSize": 2, "pipelineParallelSize": 2}})
    wait_for(lambda: (get(kube, "apps/v1", "StatefulSet", "llama-worker", namespace) or {})
             .get("spec", {}).get("replicas") == 4, 60, "StatefulSet scaled to 4")
    config = get(kube, "v1", "ConfigMap", "llama-config", namespace)["data"]
    assert config["WORLD_SIZE"] == "4" and config["PIPELINE_PARALLEL_SIZE"] == "2"
    assert len(config["WORKER_ADDRESSES"].split(",")) == 4
    wait_for(lambda: status_is(lvd, namespace, workers=4), 60, "status.workers 4")
    names = wait_for(lambda: {p["metadata"]["name"] for p in worker_pods(kube, namespace)}
                     >= {f"llama-worker-{i}" for i in range(4)}, 60, "pods 2 and 3 created")
    assert names
    lvd.patch(name="llama", namespace=namespace, content_type="application/merge-patch+json",
              body={"spec": {"pipelineParallelSize": 1, "tensorParallelSize": 1}})
    wait_for(lambda: get(kube, "apps/v1", "StatefulSet", "llama-worker", namespace)["spec"][
        "replicas"] == 1, 60, "StatefulSet scaled to 1")

    def surplus_going():
        pods = {p["metadata"]["name"]: p for p in worker_pods(kube, namespace)}
        return all(name not in pods or pods[name]["metadata"].get("deletionTimestamp")
                   for name in ("llama-worker-1", "llama-worker-2", "llama-worker-3"))

    wait_for(surplus_going, 60, "workers 1-3 deleted or terminating (no kubelet finishes it)")


def test_invalid_world_size_fails_with_a_status_message(lvd, operator, namespace, node_pool):
    """64 x 32 passes the schema's per-field limits but exceeds the 1024-worker limit."""
    pool, _ = node_pool([])
    create(lvd, namespace, pool, tensorParallelSize=64, pipelineParallelSize=32)
    status = wait_for(lambda: status_is(lvd, namespace, phase="Failed"), 60, "status Failed")
    assert "world size 2048 exceeds the limit of 1024 workers" in status["message"]


def test_deleting_the_resource_garbage_collects_everything(kube, lvd, operator, namespace,
                                                           node_pool):
    pool, _ = node_pool([(1, {}), (1, {})])
    create(lvd, namespace, pool, tensorParallelSize=2)
    wait_for(lambda: status_is(lvd, namespace, scheduledWorkers=2), 60, "2 workers scheduled")
    lvd.delete(name="llama", namespace=namespace)
    wait_for(lambda: all(get(kube, *ref, namespace) is None for ref in OWNED), 60,
             "every owned object collected")
    replicasets = kube.resources.get(api_version="apps/v1", kind="ReplicaSet")
    wait_for(lambda: not replicasets.get(namespace=namespace).to_dict()["items"], 60,
             "the driver's ReplicaSet collected")
    # Bound pods wait for their (absent) kubelet to confirm; the GC has marked them for deletion.
    wait_for(lambda: all(p["metadata"].get("deletionTimestamp")
                         for p in worker_pods(kube, namespace)), 60, "worker pods terminating")
