"""Helpers for tests and demos against the local control plane: fake GPU nodes (Node objects
that no kubelet backs, untainted, with ``nvidia.com/gpu`` capacity), the kopf operator as a
subprocess, and polling until the control plane has acted."""

from __future__ import annotations

import logging
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from .manifests import GPU_RESOURCE
from ..executors.processes import free_port
from .processes import start, stop, wait_until

logger = logging.getLogger(__name__)
T = TypeVar("T")


class ConditionNotMet(AssertionError):
    """The control plane did not reach the awaited state in time."""


def wait_for(probe: Callable[[], T | None], timeout_s: float, what: str,
             interval_s: float = 0.25) -> T:
    """Poll ``probe`` until it returns something truthy, and return that."""
    deadline = time.monotonic() + timeout_s
    last: T | None = None
    while time.monotonic() < deadline:
        last = probe()
        if last:
            return last
        time.sleep(interval_s)
    raise ConditionNotMet(f"{what}: not within {timeout_s:.0f} s (last: {last!r})")


def fake_node(name: str, gpus: int, labels: dict[str, str] | None = None) -> dict[str, Any]:
    """A Ready, untainted Node with ``gpus`` GPUs; nodes may be created with their status."""
    capacity = {"cpu": "32", "memory": "256Gi", "pods": "110", GPU_RESOURCE: str(gpus)}
    return {
        "apiVersion": "v1", "kind": "Node",
        "metadata": {"name": name,
                     "labels": {"kubernetes.io/hostname": name, "kubernetes.io/os": "linux",
                                **(labels or {})}},
        "spec": {},
        "status": {"capacity": capacity, "allocatable": capacity,
                   "conditions": [{"type": "Ready", "status": "True", "reason": "FakeNode",
                                   "message": "no kubelet: registered by the tests"}]},
    }


def register_fake_nodes(client: Any, nodes: list[dict[str, Any]]) -> list[str]:
    """Create the nodes, then drop the ``node.kubernetes.io/not-ready`` taint that admission
    (TaintNodesByCondition) puts on every new node and that only a kubelet would lift."""
    resource = client.resources.get(api_version="v1", kind="Node")
    for node in nodes:
        resource.create(body=node)
        resource.patch(name=node["metadata"]["name"], body={"spec": {"taints": None}},
                       content_type="application/merge-patch+json")
    return [node["metadata"]["name"] for node in nodes]


def delete_nodes(client: Any, names: list[str]) -> None:
    resource = client.resources.get(api_version="v1", kind="Node")
    for name in names:
        resource.delete(name=name)


class OperatorProcess:
    """``kopf run --standalone --all-namespaces -m phase4_distributed.k8s.operator``."""

    def __init__(self, kubeconfig: Path, log_dir: Path) -> None:
        self.kubeconfig = kubeconfig
        self.log_dir = log_dir
        self._proc: subprocess.Popen | None = None

    def start(self) -> OperatorProcess:
        port = free_port()
        argv = [sys.executable, "-m", "kopf", "run", "--standalone", "--all-namespaces",
                "--liveness", f"http://127.0.0.1:{port}/healthz",
                "-m", "phase4_distributed.k8s.operator"]
        self._proc = start("operator", argv, self.log_dir, env={"KUBECONFIG": str(self.kubeconfig)})
        url = f"http://127.0.0.1:{port}/healthz"
        wait_until(lambda: urllib.request.urlopen(url, timeout=2).status == 200, self._proc,
                   "operator", self.log_dir, timeout_s=60)
        return self

    def stop(self) -> None:
        if self._proc is not None:
            stop(self._proc, "operator")
            self._proc = None
