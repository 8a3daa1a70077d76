"""The LightvLLMDeployment CRD on the real API server: defaults filled in, invalid specs
refused with 422, the shipped example accepted. Server-side dry runs: nothing is persisted, so
the operator never sees these objects."""

from __future__ import annotations

import pytest
import yaml
from kubernetes.dynamic.exceptions import UnprocessibleEntityError
from phase4_distributed.k8s.crd import GROUP, KIND, VERSION, example_resource
from phase4_distributed.k8s.spec import DEFAULT_IMAGE, DeploymentSpec
from phase4_distributed.k8s.write_manifests import DEFAULT_DIR

pytestmark = pytest.mark.k8s


def resource(name: str, spec: dict, namespace: str) -> dict:
    return {"apiVersion": f"{GROUP}/{VERSION}", "kind": KIND,
            "metadata": {"name": name, "namespace": namespace}, "spec": spec}


def dry_create(lvd, body: dict) -> dict:
    return lvd.create(body=body, namespace=body["metadata"]["namespace"], dry_run="All").to_dict()


def test_the_api_server_fills_the_defaults(lvd, namespace):
    created = dry_create(lvd, resource("minimal", {"model": "/models/tiny"}, namespace))
    assert created["spec"] == {
        "model": "/models/tiny", "image": DEFAULT_IMAGE, "tensorParallelSize": 1,
        "pipelineParallelSize": 1, "gpusPerWorker": 1, "clusterDomain": "cluster.local",
        "placement": {"spread": "required", "spreadTopologyKey": "kubernetes.io/hostname"}}
    spec = DeploymentSpec.from_resource("minimal", namespace, created["spec"])
    assert spec == DeploymentSpec(name="minimal", namespace=namespace, model="/models/tiny")


def test_nested_defaults_apply_inside_a_given_placement(lvd, namespace):
    created = dry_create(lvd, resource("zoned", {
        "model": "m", "tensorParallelSize": 4,
        "placement": {"colocateTopologyKey": "topology.kubernetes.io/zone"}}, namespace))
    assert created["spec"]["tensorParallelSize"] == 4
    assert created["spec"]["placement"] == {
        "spread": "required", "spreadTopologyKey": "kubernetes.io/hostname",
        "colocateTopologyKey": "topology.kubernetes.io/zone"}


@pytest.mark.parametrize("spec, field", [
    ({}, "spec.model"),
    ({"model": ""}, "spec.model"),
    ({"model": "m", "tensorParallelSize": 0}, "spec.tensorParallelSize"),
    ({"model": "m", "pipelineParallelSize": 65}, "spec.pipelineParallelSize"),
    ({"model": "m", "gpusPerWorker": -1}, "spec.gpusPerWorker"),
    ({"model": "m", "tensorParallelSize": "two"}, "spec.tensorParallelSize"),
    ({"model": "m", "placement": {"spread": "sometimes"}}, "spec.placement.spread"),
    ({"model": "m", "placement": {"nodeSelector": {"gpu": 1}}}, "spec.placement.nodeSelector"),
])
def test_invalid_specs_are_rejected_with_422(lvd, namespace, spec, field):
    with pytest.raises(UnprocessibleEntityError) as info:
        dry_create(lvd, resource("bad", spec, namespace))
    assert info.value.status == 422
    body = info.value.body
    assert field in (body.decode() if isinstance(body, bytes) else str(body))


def test_the_shipped_example_is_valid(lvd, namespace):
    example = yaml.safe_load((DEFAULT_DIR / "example-lightvllmdeployment.yaml").read_text())
    assert example == example_resource()
    example["metadata"]["namespace"] = namespace
    created = dry_create(lvd, example)
    assert created["spec"]["tensorParallelSize"] * created["spec"]["pipelineParallelSize"] == 4
