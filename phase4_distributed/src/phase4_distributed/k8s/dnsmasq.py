"""A loopback DNS server (Debian's dnsmasq) serving a headless Service's records, so discovery
is tested against a real server: an unprivileged port, records from a hosts file, reloaded by
SIGHUP when pods "appear", no upstream servers and no negative caching."""

from __future__ import annotations

import getpass
import logging
import os
import shutil
import signal
import socket
import subprocess
from pathlib import Path

from .processes import ComponentFailed, free_udp_tcp_port, start, stop, wait_until

logger = logging.getLogger(__name__)


def find_dnsmasq() -> str | None:
    """The dnsmasq binary (``dnsmasq-base`` installs it in /usr/sbin), or None."""
    return shutil.which("dnsmasq") or next(
        (p for p in ("/usr/sbin/dnsmasq", "/sbin/dnsmasq") if os.access(p, os.X_OK)), None)


class LocalDnsServer:
    """dnsmasq on ``127.0.0.1:port`` answering only the names in its hosts file."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.hosts_file = workdir / "hosts"
        self.port = 0
        self._proc: subprocess.Popen | None = None

    def set_records(self, records: dict[str, str]) -> None:
        """Replace the served ``{name: ipv4}`` records (applied at once if running)."""
        self.hosts_file.write_text("".join(f"{ip} {name}\n" for name, ip in records.items()))
        if self._proc is not None:
            os.kill(self._proc.pid, signal.SIGHUP)

    def start(self) -> LocalDnsServer:
        binary = find_dnsmasq()
        if binary is None:
            raise ComponentFailed("dnsmasq not found: run scripts/k8s/build.sh (apt dnsmasq-base)")
        self.workdir.mkdir(parents=True, exist_ok=True)
        if not self.hosts_file.exists():
            self.set_records({})
        self.port = free_udp_tcp_port()
        argv = [binary, "--keep-in-foreground", "--conf-file=/dev/null", "--no-resolv",
                "--no-hosts", f"--addn-hosts={self.hosts_file}", "--no-negcache",
                "--listen-address=127.0.0.1", "--bind-interfaces", f"--port={self.port}",
                f"--user={getpass.getuser()}", "--pid-file=", "--log-queries",
                "--log-facility=-"]
        self._proc = start("dnsmasq", argv, self.workdir)
        wait_until(self._answers_tcp, self._proc, "dnsmasq", self.workdir, timeout_s=10)
        logger.info("dnsmasq serving %s on 127.0.0.1:%d", self.hosts_file, self.port)
        return self

    def _answers_tcp(self) -> bool:
        with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
            return True

    def stop(self) -> None:
        if self._proc is not None:
            stop(self._proc, "dnsmasq")
            self._proc = None

    def __enter__(self) -> LocalDnsServer:  # noqa: PYI034
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
