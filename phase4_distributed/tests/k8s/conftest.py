"""Fixtures for the Kubernetes tests: the local control plane (one per session), the CRD, the
operator, and per-test namespaces and fake GPU node pools.

The control-plane binaries come from scripts/k8s/build.sh (run by `make test`). Without them
these tests FAIL, so that CI cannot pass without running them; set LIGHTVLLM_SKIP_K8S=1 to skip
them instead (e.g. on a machine without root/apt)."""

from __future__ import annotations

import os
import uuid
from pathlib import Path

import pytest
from phase4_distributed.k8s.apply import apply, dynamic_client
from phase4_distributed.k8s.control_plane import LocalControlPlane, missing_binaries
from phase4_distributed.k8s.crd import GROUP, KIND, VERSION, custom_resource_definition
from phase4_distributed.k8s.testing import (
    OperatorProcess,
    delete_nodes,
    fake_node,
    register_fake_nodes,
    wait_for,
)

SKIP_ENV = "LIGHTVLLM_SKIP_K8S"
POOL_LABEL = "lightvllm.io/test-pool"
HERE = Path(__file__).parent
_RUNNING: list = []  # the control plane and operator, in start order, while k8s tests remain


@pytest.hookimpl(trylast=True)  # after the last test's own fixtures are torn down
def pytest_runtest_teardown(item, nextitem):
    """Stop the session's control plane and operator after the last k8s test, not at the end of
    the whole run: they would take CPU from every later test."""
    if _RUNNING and (nextitem is None or HERE not in Path(nextitem.path).parents):
        while _RUNNING:
            _RUNNING.pop().stop()


def require(reason: str) -> None:
    """Skip when LIGHTVLLM_SKIP_K8S=1, else fail: a missing control plane is a broken set-up."""
    if os.environ.get(SKIP_ENV) == "1":
        pytest.skip(f"{reason} ({SKIP_ENV}=1)")
    pytest.fail(f"{reason}; run scripts/k8s/build.sh, or set {SKIP_ENV}=1 to skip", pytrace=False)


@pytest.fixture(scope="session")
def k8s_required():
    return require


@pytest.fixture(scope="session")
def control_plane(tmp_path_factory):
    if missing := missing_binaries():
        require(f"control-plane binaries missing: {', '.join(missing)}")
    plane = LocalControlPlane(tmp_path_factory.mktemp("k8s")).start()
    _RUNNING.append(plane)
    yield plane
    plane.stop()


@pytest.fixture(scope="session")
def kube(control_plane):
    return dynamic_client(str(control_plane.kubeconfig))


@pytest.fixture(scope="session")
def lvd(kube):
    """The LightvLLMDeployment resource API, once the CRD is established."""
    crd = custom_resource_definition()
    apply(kube, crd)
    crds = kube.resources.get(api_version="apiextensions.k8s.io/v1",
                              kind="CustomResourceDefinition")

    def established():
        conditions = crds.get(name=crd["metadata"]["name"]).to_dict()["status"].get("conditions")
        return any(c["type"] == "Established" and c["status"] == "True" for c in conditions or [])

    wait_for(established, 30, "CRD established")
    kube.resources.invalidate_cache()
    return wait_for(lambda: _resource(kube), 30, "LightvLLMDeployment API served")


def _resource(kube):
    try:
        return kube.resources.get(api_version=f"{GROUP}/{VERSION}", kind=KIND)
    except Exception:  # noqa: BLE001 - discovery lags the CRD for a moment
        kube.resources.invalidate_cache()
        return None


@pytest.fixture(scope="session")
def operator(control_plane, lvd, tmp_path_factory):
    process = OperatorProcess(control_plane.kubeconfig, tmp_path_factory.mktemp("operator")).start()
    _RUNNING.append(process)
    yield process
    process.stop()


@pytest.fixture()
def namespace(kube, request):
    name = f"t-{uuid.uuid4().hex[:8]}"
    kube.resources.get(api_version="v1", kind="Namespace").create(
        body={"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}})
    yield name
    kube.resources.get(api_version="v1", kind="Namespace").delete(name=name)


@pytest.fixture()
def node_pool(kube):
    """``make(specs)`` registers fake nodes ``[(gpus, labels), ...]`` in a pool of their own and
    returns ``(pool label value, node names)``; the nodes are deleted after the test."""
    created: list[str] = []

    def make(specs: list[tuple[int, dict[str, str]]]) -> tuple[str, list[str]]:
        pool = uuid.uuid4().hex[:8]
        nodes = [fake_node(f"node-{pool}-{i}", gpus, {POOL_LABEL: pool, **labels})
                 for i, (gpus, labels) in enumerate(specs)]
        names = register_fake_nodes(kube, nodes)
        created.extend(names)
        return pool, names

    yield make
    delete_nodes(kube, created)
