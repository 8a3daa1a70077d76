"""The manifest builder: what it puts in the objects, the shipped YAML being in sync with it,
and every built-in object passing ``kubernetes-validate --strict`` offline."""

from __future__ import annotations

import copy
import subprocess
import sys

import kubernetes_validate
import pytest
import yaml
from phase4_distributed.k8s.manifests import GPU_RESOURCE, build_manifests, config_hash
from phase4_distributed.k8s.spec import DeploymentSpec, InvalidDeploymentSpec, WorkerPlacement
from phase4_distributed.k8s.write_manifests import DEFAULT_DIR, render_all, stale_files

# The oldest and newest schemas the validator ships (the local apiserver is 1.20).
VALIDATE_VERSIONS = ["1.25.0", "1.37.0"]


def by_kind(objects):
    return {(obj["kind"], obj["metadata"]["name"]): obj for obj in objects}


@pytest.fixture()
def spec():
    return DeploymentSpec(name="llama", namespace="serving", model="/models/llama",
                          tensor_parallel_size=2, pipeline_parallel_size=3, gpus_per_worker=2,
                          placement=WorkerPlacement(spread="required",
                                                    colocate_topology_key="rack"))


def test_statefulset_has_one_pod_per_rank_with_gpus(spec):
    objects = by_kind(build_manifests(spec))
    sts = objects[("StatefulSet", "llama-worker")]["spec"]
    assert sts["replicas"] == 6 and sts["serviceName"] == "llama-workers"
    assert sts["podManagementPolicy"] == "Parallel"
    container = sts["template"]["spec"]["containers"][0]
    assert container["resources"]["limits"] == {GPU_RESOURCE: 2}
    command = container["command"][-1]
    assert command.startswith('exec lightvllm worker --rank "${HOSTNAME##*-}" --world-size')
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert container[probe]["exec"]["command"] == [
            "lightvllm", "worker-health", "--address", "127.0.0.1:50051"]


def test_the_rank_expression_is_the_hostname_ordinal():
    """The shell in the worker pod turns its hostname into the same rank as discovery does."""
    from phase4_distributed.k8s.discovery import rank_from_hostname

    for hostname in ("llama-worker-0", "llama-worker-11"):
        out = subprocess.run(["sh", "-c", 'echo "${HOSTNAME##*-}"'], capture_output=True,
                             text=True, env={"HOSTNAME": hostname}, check=True).stdout
        assert int(out) == rank_from_hostname(hostname)[1]


def test_affinity_options(spec):
    pod = by_kind(build_manifests(spec))[("StatefulSet", "llama-worker")]["spec"]["template"]["spec"]
    anti = pod["affinity"]["podAntiAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
    assert anti[0]["topologyKey"] == "kubernetes.io/hostname"
    assert anti[0]["labelSelector"]["matchLabels"]["app.kubernetes.io/instance"] == "llama"
    assert pod["affinity"]["podAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"][0][
        "topologyKey"] == "rack"
    loose = DeploymentSpec(name="llama", placement=WorkerPlacement(spread="preferred"))
    pod = by_kind(build_manifests(loose))[("StatefulSet", "llama-worker")]["spec"]["template"]["spec"]
    assert set(pod["affinity"]) == {"podAntiAffinity"}
    assert "preferredDuringSchedulingIgnoredDuringExecution" in pod["affinity"]["podAntiAffinity"]
    free = DeploymentSpec(name="llama", placement=WorkerPlacement(spread="none"))
    assert "affinity" not in by_kind(build_manifests(free))[
        ("StatefulSet", "llama-worker")]["spec"]["template"]["spec"]


def test_headless_service_and_driver(spec):
    objects = by_kind(build_manifests(spec))
    service = objects[("Service", "llama-workers")]["spec"]
    assert service["clusterIP"] == "None" and service["publishNotReadyAddresses"] is True
    config = objects[("ConfigMap", "llama-config")]["data"]
    assert config["WORKER_ADDRESSES"].split(",")[5] == (
        "llama-worker-5.llama-workers.serving.svc.cluster.local:50051")
    assert config["MASTER_ADDR"] == "llama-worker-0.llama-workers.serving.svc.cluster.local"
    driver = objects[("Deployment", "llama-driver")]["spec"]["template"]["spec"]["containers"][0]
    assert driver["args"][:2] == ["serve", "$(MODEL)"]
    joined = " ".join(driver["args"])
    assert "--distributed-executor-backend grpc --worker-addresses $(WORKER_ADDRESSES)" in joined
    assert "resources" not in driver


def test_config_change_changes_the_pod_template_hash(spec):
    bigger = DeploymentSpec(name="llama", namespace="serving", model="/models/llama",
                            tensor_parallel_size=4)
    assert config_hash(build_manifests(spec)[0]) != config_hash(build_manifests(bigger)[0])


@pytest.mark.parametrize("kwargs, message", [
    ({"tensor_parallel_size": 0}, "tensor_parallel_size is 0, the minimum is 1"),
    ({"gpus_per_worker": -1}, "gpus_per_worker is -1, the minimum is 0"),
    ({"name": "Bad_Name"}, "DNS label"),
    ({"tensor_parallel_size": 64, "pipeline_parallel_size": 32}, "exceeds the limit of 1024"),
])
def test_invalid_specs_are_refused(kwargs, message):
    with pytest.raises(InvalidDeploymentSpec, match=message):
        DeploymentSpec(**{"name": "llama", **kwargs})


def test_shipped_yaml_is_in_sync_with_the_builders():
    assert stale_files(DEFAULT_DIR) == [], "run scripts/k8s/write_manifests.sh"


def test_check_mode_reports_a_stale_file(tmp_path):
    for name, text in render_all().items():
        (tmp_path / name).write_text(text)
    (tmp_path / "crd.yaml").write_text("# edited by hand\n")
    result = subprocess.run([sys.executable, "-m", "phase4_distributed.k8s.write_manifests",
                             "--check", str(tmp_path)], capture_output=True, text=True,
                            check=False)
    assert result.returncode == 1 and "crd.yaml" in result.stderr


def builtin_objects():
    """Every shipped object except custom resources (the validator knows only built-in kinds;
    the example resource is checked by the real API server in test_crd.py)."""
    for name in sorted(render_all()):
        for obj in yaml.safe_load_all((DEFAULT_DIR / name).read_text()):
            if obj["apiVersion"].split("/")[0] != "lightvllm.io":
                yield pytest.param(obj, id=f"{name}:{obj['kind']}/{obj['metadata']['name']}")


@pytest.mark.parametrize("version", VALIDATE_VERSIONS)
@pytest.mark.parametrize("obj", builtin_objects())
def test_manifests_validate_strictly(obj, version):
    kubernetes_validate.validate(obj, version, strict=True)


def test_strict_validation_catches_a_misspelt_field():
    sts = copy.deepcopy(by_kind(build_manifests(DeploymentSpec(name="x")))[("StatefulSet", "x-worker")])
    sts["spec"]["template"]["spec"]["containers"][0]["readinesProbe"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(sts, VALIDATE_VERSIONS[-1], strict=True)


def test_validator_cli_accepts_the_shipped_files():
    """The same check as `kubernetes-validate --strict` on the command line."""
    files = [str(DEFAULT_DIR / name) for name in ("crd.yaml", "operator.yaml", "example-plain.yaml")]
    result = subprocess.run([sys.executable, "-m", "kubernetes_validate", "--strict", "--quiet",
                             *files], capture_output=True, text=True, timeout=120,
                            check=False)
    assert result.returncode == 0, result.stdout + result.stderr
