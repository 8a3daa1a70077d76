"""The builder's manifests applied to the real control plane: the StatefulSet controller creates
the worker pods with their stable hostnames, and kube-scheduler places them on fake GPU nodes by
the affinity rules, or leaves them Pending (Unschedulable) when GPUs are short. No kubelet runs,
so pods are bound but never start."""

from __future__ import annotations

import pytest
from phase4_distributed.k8s.apply import apply_all
from phase4_distributed.k8s.manifests import build_manifests, labels
from phase4_distributed.k8s.spec import DeploymentSpec, WorkerPlacement
from phase4_distributed.k8s.status import summarize
from phase4_distributed.k8s.testing import wait_for

pytestmark = pytest.mark.k8s
POOL_LABEL = "lightvllm.io/test-pool"
ZONE = "topology.kubernetes.io/zone"


def deploy(kube, namespace, pool, **kwargs) -> DeploymentSpec:
    placement = WorkerPlacement(**{**kwargs.pop("placement", {}),
                                   "node_selector": {POOL_LABEL: pool}})
    spec = DeploymentSpec(name="llama", namespace=namespace, placement=placement, **kwargs)
    apply_all(kube, build_manifests(spec))
    return spec


def worker_pods(kube, spec: DeploymentSpec) -> list[dict]:
    selector = ",".join(f"{k}={v}" for k, v in labels(spec, "worker").items())
    pods = kube.resources.get(api_version="v1", kind="Pod")
    items = pods.get(namespace=spec.namespace, label_selector=selector).to_dict()["items"]
    return sorted(items, key=lambda pod: pod["metadata"]["name"])


def settled(kube, spec: DeploymentSpec, scheduled: int, unschedulable: int = 0):
    """Pods once the scheduler has decided on every one of them as expected."""
    pods = worker_pods(kube, spec)
    status = summarize(spec.world_size, pods, 0, False)
    if len(pods) == spec.world_size and (status["scheduledWorkers"], status[
            "unschedulableWorkers"]) == (scheduled, unschedulable):
        return pods
    return None


def node_of(pod: dict) -> str | None:
    return pod["spec"].get("nodeName")


def test_pods_get_stable_hostnames_and_spread_one_per_node(kube, namespace, node_pool):
    pool, nodes = node_pool([(4, {}), (4, {}), (4, {})])
    spec = deploy(kube, namespace, pool, tensor_parallel_size=3)
    pods = wait_for(lambda: settled(kube, spec, scheduled=3), 60, "3 workers scheduled")
    assert [pod["metadata"]["name"] for pod in pods] == [f"llama-worker-{i}" for i in range(3)]
    for i, pod in enumerate(pods):
        assert pod["spec"]["hostname"] == f"llama-worker-{i}"
        assert pod["spec"]["subdomain"] == "llama-workers"
        assert pod["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert sorted(node_of(pod) for pod in pods) == sorted(nodes)


def test_without_spread_the_workers_fit_on_one_big_node(kube, namespace, node_pool):
    pool, nodes = node_pool([(4, {})])
    spec = deploy(kube, namespace, pool, tensor_parallel_size=2, pipeline_parallel_size=2,
                  placement={"spread": "none"})
    pods = wait_for(lambda: settled(kube, spec, scheduled=4), 60, "4 workers scheduled")
    assert {node_of(pod) for pod in pods} == {nodes[0]}


def test_required_spread_leaves_extra_workers_unschedulable(kube, namespace, node_pool):
    """Two nodes with plenty of GPUs, three workers that refuse to share a node."""
    pool, _ = node_pool([(8, {}), (8, {})])
    spec = deploy(kube, namespace, pool, tensor_parallel_size=3)
    pods = wait_for(lambda: settled(kube, spec, scheduled=2, unschedulable=1), 60,
                    "2 scheduled, 1 unschedulable")
    pending = [pod for pod in pods if not node_of(pod)]
    assert len(pending) == 1 and pending[0]["status"]["phase"] == "Pending"
    assert len({node_of(pod) for pod in pods if node_of(pod)}) == 2


def test_colocation_keeps_all_workers_in_one_zone(kube, namespace, node_pool):
    """Zone a has 2 one-GPU nodes, zone b has 3: only zone b can hold 3 spread workers, and
    podAffinity must keep them all there even though the scheduler's default scoring spreads
    a StatefulSet's pods over zones."""
    pool, nodes = node_pool([(1, {ZONE: "a"}), (1, {ZONE: "a"}),
                             (1, {ZONE: "b"}), (1, {ZONE: "b"}), (1, {ZONE: "b"})])
    zone_of = dict(zip(nodes, "aabbb"))
    spec = deploy(kube, namespace, pool, tensor_parallel_size=2,
                  placement={"colocate_topology_key": ZONE})
    pods = wait_for(lambda: settled(kube, spec, scheduled=2), 60, "2 workers scheduled")
    zones = {zone_of[node_of(pod)] for pod in pods}
    assert len(zones) == 1
    assert len({node_of(pod) for pod in pods}) == 2


def test_too_few_gpus_leave_workers_pending_with_failed_scheduling(kube, namespace, node_pool):
    pool, nodes = node_pool([(2, {}), (1, {})])
    spec = deploy(kube, namespace, pool, tensor_parallel_size=2, gpus_per_worker=2,
                  placement={"spread": "none"})
    pods = wait_for(lambda: settled(kube, spec, scheduled=1, unschedulable=1), 60,
                    "1 scheduled, 1 unschedulable")
    assert {node_of(pod) for pod in pods if node_of(pod)} == {nodes[0]}
    pending = next(pod for pod in pods if not node_of(pod))
    condition = next(c for c in pending["status"]["conditions"] if c["type"] == "PodScheduled")
    assert condition["reason"] == "Unschedulable"
    assert "Insufficient nvidia.com/gpu" in condition["message"]
    events = kube.resources.get(api_version="v1", kind="Event").get(
        namespace=namespace,
        field_selector=f"involvedObject.name={pending['metadata']['name']}").to_dict()["items"]
    assert any(event["reason"] == "FailedScheduling" for event in events)
