"""Certificates and keys for the local control plane, made with the openssl command line:
a CA, the apiserver's serving certificate (127.0.0.1/localhost), an admin client certificate in
the ``system:masters`` group, and the service-account signing key pair."""

from __future__ import annotations

import logging
import subprocess
from dataclasses import dataclass
from pathlib import Path

logger = logging.getLogger(__name__)
DAYS = "7"


@dataclass(frozen=True)
class ControlPlaneCerts:
    directory: Path

    def path(self, name: str) -> Path:
        return self.directory / name

    @property
    def ca_cert(self) -> Path:
        return self.path("ca.crt")

    @property
    def server_cert(self) -> Path:
        return self.path("apiserver.crt")

    @property
    def server_key(self) -> Path:
        return self.path("apiserver.key")

    @property
    def admin_cert(self) -> Path:
        return self.path("admin.crt")

    @property
    def admin_key(self) -> Path:
        return self.path("admin.key")

    @property
    def sa_key(self) -> Path:
        return self.path("sa.key")

    @property
    def sa_pub(self) -> Path:
        return self.path("sa.pub")


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=60)


def _signed(certs: ControlPlaneCerts, stem: str, subject: str, extensions: str) -> None:
    """A key and a certificate for ``subject`` signed by the CA, with the given v3 extensions."""
    d = certs.directory
    (d / f"{stem}.ext").write_text(extensions)
    _openssl("req", "-new", "-newkey", "rsa:2048", "-nodes", "-keyout", f"{stem}.key",
             "-out", f"{stem}.csr", "-subj", subject, cwd=d)
    _openssl("x509", "-req", "-in", f"{stem}.csr", "-CA", "ca.crt", "-CAkey", "ca.key",
             "-CAcreateserial", "-days", DAYS, "-out", f"{stem}.crt", "-extfile", f"{stem}.ext",
             cwd=d)


def generate_certs(directory: Path) -> ControlPlaneCerts:
    """Write every certificate and key the control plane needs into ``directory``."""
    directory.mkdir(parents=True, exist_ok=True)
    certs = ControlPlaneCerts(directory)
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out",
             "ca.crt", "-days", DAYS, "-subj", "/CN=lightvllm-local-ca", cwd=directory)
    _signed(certs, "apiserver", "/CN=kube-apiserver",
            "subjectAltName=IP:127.0.0.1,DNS:localhost,DNS:kubernetes.default.svc\n"
            "extendedKeyUsage=serverAuth\n")
    _signed(certs, "admin", "/O=system:masters/CN=lightvllm-admin", "extendedKeyUsage=clientAuth\n")
    _openssl("genrsa", "-out", "sa.key", "2048", cwd=directory)
    _openssl("rsa", "-in", "sa.key", "-pubout", "-out", "sa.pub", cwd=directory)
    logger.info("control-plane certificates in %s", directory)
    return certs
