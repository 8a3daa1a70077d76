"""Finding the gRPC workers of a StatefulSet through its headless Service's DNS names.

A StatefulSet pod ``{statefulset}-{i}`` behind the headless Service ``{service}`` is reachable as
``{statefulset}-{i}.{service}.{namespace}.svc.{domain}``; its hostname's ordinal ``i`` is its rank,
and rank 0 is the torch.distributed master. Pods start in any order, so names resolve one by one:
``resolve_all`` retries until every worker resolves or the deadline passes."""

from __future__ import annotations

import logging
import re
import socket
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

logger = logging.getLogger(__name__)

Resolver = Callable[[str], list[str]]
_ORDINAL = re.compile(r"^(?P<set>[a-z0-9]([-a-z0-9]*[a-z0-9])?)-(?P<ordinal>[0-9]+)$")


class DiscoveryError(RuntimeError):
    """The workers' addresses could not be determined."""


class NotAStatefulSetPod(DiscoveryError):
    """A hostname without the ``-{ordinal}`` suffix that StatefulSet pods carry."""


class WorkerDiscoveryTimeout(DiscoveryError):
    """Some worker names did not resolve before the deadline."""

    def __init__(self, unresolved: Sequence[str], deadline_s: float, attempts: int) -> None:
        self.unresolved = list(unresolved)
        self.deadline_s = deadline_s
        super().__init__(
            f"{len(self.unresolved)} worker name(s) did not resolve within {deadline_s:.1f} s "
            f"({attempts} attempts): {', '.join(self.unresolved)}")


@dataclass(frozen=True)
class WorkerTopology:
    """The DNS layout of one StatefulSet of ``replicas`` workers."""

    statefulset: str
    service: str
    namespace: str
    replicas: int
    cluster_domain: str = "cluster.local"
    port: int = 50051

    def __post_init__(self) -> None:
        if self.replicas < 1:
            raise DiscoveryError(f"replicas is {self.replicas}, the minimum is 1")

    def hostname(self, rank: int) -> str:
        """The pod's fully qualified name, stable across restarts and rescheduling."""
        if not 0 <= rank < self.replicas:
            raise DiscoveryError(f"rank {rank} is outside 0..{self.replicas - 1}")
        return (f"{self.statefulset}-{rank}.{self.service}.{self.namespace}"
                f".svc.{self.cluster_domain}")

    def hostnames(self) -> list[str]:
        return [self.hostname(rank) for rank in range(self.replicas)]

    def addresses(self) -> list[str]:
        """``host:port`` of every worker's gRPC service, in rank order."""
        return [f"{host}:{self.port}" for host in self.hostnames()]

    def master(self) -> str:
        """Rank 0's name: the torch.distributed rendezvous (``MASTER_ADDR``)."""
        return self.hostname(0)


def rank_from_hostname(hostname: str | None = None) -> tuple[str, int]:
    """``(statefulset, ordinal)`` from a StatefulSet pod's hostname (default: this machine's)."""
    name = (hostname or socket.gethostname()).split(".", 1)[0]
    match = _ORDINAL.match(name)
    if match is None:
        raise NotAStatefulSetPod(
            f"hostname {name!r} does not end in -<ordinal>; is this a StatefulSet pod?")
    return match["set"], int(match["ordinal"])


def system_resolver(name: str) -> list[str]:
    """IPv4/IPv6 addresses of ``name`` through the C library (the pod's /etc/resolv.conf)."""
    try:
        infos = socket.getaddrinfo(name, None, proto=socket.IPPROTO_TCP)
    except socket.gaierror:
        return []
    return sorted({str(info[4][0]) for info in infos})


def resolve_all(names: Sequence[str], resolver: Resolver = system_resolver,
                deadline_s: float = 300.0, interval_s: float = 1.0) -> dict[str, list[str]]:
    """Resolve every name, retrying the missing ones every ``interval_s`` until ``deadline_s``.

    Returns ``{name: addresses}`` in the given order; raises ``WorkerDiscoveryTimeout`` naming the
    names still unresolved at the deadline."""
    found: dict[str, list[str]] = {}
    start = time.monotonic()
    attempts = 0
    while True:
        attempts += 1
        for name in names:
            if name not in found and (addresses := resolver(name)):
                found[name] = addresses
        missing = [name for name in names if name not in found]
        if not missing:
            return {name: found[name] for name in names}
        remaining = deadline_s - (time.monotonic() - start)
        if remaining <= 0:
            raise WorkerDiscoveryTimeout(missing, deadline_s, attempts)
        logger.info("waiting for %d of %d worker names: %s", len(missing), len(names), missing[:3])
        time.sleep(min(interval_s, remaining))
