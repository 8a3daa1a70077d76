"""A local Kubernetes control plane on loopback: etcd, kube-apiserver, kube-controller-manager
(statefulset, deployment, replicaset, garbage-collector and namespace controllers) and
kube-scheduler, built by ``scripts/k8s/build.sh``. There is no kubelet, so pods are created,
scheduled onto (fake) Node objects and garbage-collected, but never run.

    with LocalControlPlane(workdir) as cp:   # free ports, generated certs, a kubeconfig
        print(cp.kubeconfig)
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import ssl
import subprocess
import tempfile
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from ..executors.processes import free_ports
from .certs import ControlPlaneCerts, generate_certs
from .processes import ComponentFailed, log_tail, start, stop, wait_until

logger = logging.getLogger(__name__)

COMPONENTS = ("etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler")
CONTROLLERS = "statefulset,deployment,replicaset,garbagecollector,namespace"
SERVICE_CIDR = "10.96.0.0/24"  # only allocated to Service objects; nothing routes to it


class ControlPlaneMissing(ComponentFailed):
    """The control-plane binaries have not been built."""


def binary_dir() -> Path:
    """Where build.sh puts the binaries: $LIGHTVLLM_K8S_DIR/bin (default ~/.cache/lightvllm/k8s)."""
    root = os.environ.get("LIGHTVLLM_K8S_DIR") or Path.home() / ".cache" / "lightvllm" / "k8s"
    return Path(root) / "bin"


def missing_binaries(directory: Path | None = None) -> list[str]:
    directory = directory or binary_dir()
    return [c for c in COMPONENTS if not os.access(directory / c, os.X_OK)]


@dataclass
class _Ports:
    etcd_client: int
    etcd_peer: int
    apiserver: int
    controller_manager: int
    scheduler: int

    @classmethod
    def pick(cls) -> _Ports:
        return cls(*free_ports(5))


class LocalControlPlane:
    """Starts the four components with their state under ``workdir``; ``stop`` ends them by PID."""

    def __init__(self, workdir: Path, bin_dir: Path | None = None) -> None:
        self.workdir = workdir
        self.bin_dir = bin_dir or binary_dir()
        self.log_dir = workdir / "logs"
        self.kubeconfig = workdir / "kubeconfig"
        self.ports = _Ports.pick()
        self.certs: ControlPlaneCerts | None = None
        self._procs: dict[str, subprocess.Popen] = {}
        self._etcd_data: Path | None = None

    @property
    def _certs(self) -> ControlPlaneCerts:
        assert self.certs is not None, "start() generates the certificates"
        return self.certs

    @property
    def server(self) -> str:
        return f"https://127.0.0.1:{self.ports.apiserver}"

    def start(self) -> LocalControlPlane:
        if missing := missing_binaries(self.bin_dir):
            raise ControlPlaneMissing(
                f"{', '.join(missing)} missing in {self.bin_dir}: run scripts/k8s/build.sh")
        began = time.monotonic()
        self.certs = generate_certs(self.workdir / "pki")
        self._write_kubeconfig()
        try:
            self._start_etcd()
            self._start_apiserver()
            self._start_controller_manager()
            self._start_scheduler()
        except BaseException:
            self.stop()
            raise
        logger.info("control plane ready at %s in %.1f s", self.server, time.monotonic() - began)
        return self

    def stop(self) -> None:
        """Stop the components in reverse order of start, each by the PID this object started."""
        for name in reversed(list(self._procs)):
            stop(self._procs.pop(name), name)
        if self._etcd_data is not None:
            shutil.rmtree(self._etcd_data, ignore_errors=True)
            self._etcd_data = None

    def __enter__(self) -> LocalControlPlane:  # noqa: PYI034
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def running(self) -> bool:
        """Whether every started component is still alive."""
        return bool(self._procs) and all(p.poll() is None for p in self._procs.values())

    def logs(self, name: str, lines: int = 40) -> str:
        return log_tail(self.log_dir, name, lines)

    def _run(self, name: str, argv: list[str]) -> subprocess.Popen:
        binary = str(self.bin_dir / name)
        self._procs[name] = proc = start(name, [binary, *argv], self.log_dir)
        return proc

    def _start_etcd(self) -> None:
        shm = Path("/dev/shm")
        base = shm if shm.is_dir() and os.access(shm, os.W_OK) else self.workdir
        self._etcd_data = data = Path(tempfile.mkdtemp(prefix="lightvllm-etcd.", dir=base))
        client = f"http://127.0.0.1:{self.ports.etcd_client}"
        peer = f"http://127.0.0.1:{self.ports.etcd_peer}"
        proc = self._run("etcd", [
            "--name=lightvllm", f"--data-dir={data}", f"--listen-client-urls={client}",
            f"--advertise-client-urls={client}", f"--listen-peer-urls={peer}",
            f"--initial-advertise-peer-urls={peer}", f"--initial-cluster=lightvllm={peer}",
            "--log-level=warn"])
        wait_until(lambda: b"true" in urllib.request.urlopen(client + "/health", timeout=2).read(),
                   proc, "etcd", self.log_dir, timeout_s=30)

    def _start_apiserver(self) -> None:
        certs = self._certs
        proc = self._run("kube-apiserver", [
            f"--etcd-servers=http://127.0.0.1:{self.ports.etcd_client}",
            "--bind-address=127.0.0.1", "--advertise-address=127.0.0.1",
            f"--secure-port={self.ports.apiserver}", "--insecure-port=0",
            f"--tls-cert-file={certs.server_cert}", f"--tls-private-key-file={certs.server_key}",
            f"--client-ca-file={certs.ca_cert}", "--authorization-mode=RBAC",
            f"--service-account-key-file={certs.sa_pub}",
            f"--service-account-signing-key-file={certs.sa_key}",
            "--service-account-issuer=https://kubernetes.default.svc",
            f"--service-cluster-ip-range={SERVICE_CIDR}",
            # No token controller runs, and loopback cannot be an Endpoints address.
            "--disable-admission-plugins=ServiceAccount", "--endpoint-reconciler-type=none",
            f"--cert-dir={self.workdir / 'apiserver-certs'}", "--profiling=false", "--v=1"])
        wait_until(lambda: self.get("/readyz") == "ok", proc, "kube-apiserver", self.log_dir,
                   timeout_s=90)

    def _start_controller_manager(self) -> None:
        port = self.ports.controller_manager
        proc = self._run("kube-controller-manager", [
            f"--kubeconfig={self.kubeconfig}", f"--controllers={CONTROLLERS}",
            "--leader-elect=false", "--address=127.0.0.1", f"--port={port}", "--secure-port=0",
            "--use-service-account-credentials=false", "--concurrent-statefulset-syncs=2",
            "--profiling=false", "--v=1"])
        wait_until(lambda: _http_ok(f"http://127.0.0.1:{port}/healthz"), proc,
                   "kube-controller-manager", self.log_dir, timeout_s=60)

    def _start_scheduler(self) -> None:
        port = self.ports.scheduler
        proc = self._run("kube-scheduler", [
            f"--kubeconfig={self.kubeconfig}", "--leader-elect=false", "--address=127.0.0.1",
            f"--port={port}", "--secure-port=0", "--profiling=false", "--v=1"])
        wait_until(lambda: _http_ok(f"http://127.0.0.1:{port}/healthz"), proc,
                   "kube-scheduler", self.log_dir, timeout_s=60)

    def _ssl_context(self) -> ssl.SSLContext:
        certs = self._certs
        context = ssl.create_default_context(cafile=str(certs.ca_cert))
        context.load_cert_chain(str(certs.admin_cert), str(certs.admin_key))
        return context

    def get(self, path: str) -> str:
        """GET ``path`` from the apiserver as the admin user."""
        with urllib.request.urlopen(self.server + path, context=self._ssl_context(),
                                    timeout=5) as response:
            return response.read().decode()

    def _write_kubeconfig(self) -> None:
        certs = self._certs
        config = {
            "apiVersion": "v1", "kind": "Config", "current-context": "lightvllm-local",
            "clusters": [{"name": "lightvllm-local", "cluster": {
                "server": self.server, "certificate-authority": str(certs.ca_cert)}}],
            "users": [{"name": "lightvllm-admin", "user": {
                "client-certificate": str(certs.admin_cert), "client-key": str(certs.admin_key)}}],
            "contexts": [{"name": "lightvllm-local", "context": {
                "cluster": "lightvllm-local", "user": "lightvllm-admin"}}],
        }
        self.kubeconfig.write_text(json.dumps(config, indent=2))


def _http_ok(url: str) -> bool:
    with urllib.request.urlopen(url, timeout=2) as response:
        return response.status == 200


def main() -> None:
    """``python -m phase4_distributed.k8s.control_plane [WORKDIR]``: run until Ctrl-C."""
    import signal
    import sys

    # Background shells ignore SIGINT: let SIGTERM and SIGINT both stop the components.
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: sys.exit(0))
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    workdir = Path(sys.argv[1] if len(sys.argv) > 1 else tempfile.mkdtemp(prefix="lightvllm-k8s."))
    with LocalControlPlane(workdir) as plane:
        print(f"export KUBECONFIG={plane.kubeconfig}   # logs in {plane.log_dir}", flush=True)
        while plane.running():
            time.sleep(1)


if __name__ == "__main__":
    main()
