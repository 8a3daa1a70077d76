"""DNS discovery of the workers against a real DNS server (dnsmasq on a loopback port)."""

from __future__ import annotations

import threading
import time

import pytest
from phase4_distributed.k8s.discovery import (
    NotAStatefulSetPod,
    WorkerDiscoveryTimeout,
    WorkerTopology,
    rank_from_hostname,
    resolve_all,
)
from phase4_distributed.k8s.dns_resolver import DirectDnsResolver
from phase4_distributed.k8s.dnsmasq import LocalDnsServer, find_dnsmasq

TOPOLOGY = WorkerTopology(statefulset="llama-worker", service="llama-workers",
                          namespace="serving", replicas=3)


@pytest.fixture()
def dns_server(tmp_path, k8s_required):
    if find_dnsmasq() is None:
        k8s_required("dnsmasq is not installed (scripts/k8s/build.sh installs dnsmasq-base)")
    server = LocalDnsServer(tmp_path / "dns").start()
    yield server
    server.stop()


def records(topology: WorkerTopology, count: int) -> dict[str, str]:
    return {topology.hostname(i): f"127.0.10.{i + 1}" for i in range(count)}


def test_names_follow_the_headless_service_layout():
    assert TOPOLOGY.hostnames() == [
        f"llama-worker-{i}.llama-workers.serving.svc.cluster.local" for i in range(3)]
    assert TOPOLOGY.addresses()[2] == "llama-worker-2.llama-workers.serving.svc.cluster.local:50051"
    assert TOPOLOGY.master() == TOPOLOGY.hostname(0)


@pytest.mark.parametrize("hostname, expected", [
    ("llama-worker-0", ("llama-worker", 0)),
    ("llama-worker-12.llama-workers.serving.svc.cluster.local", ("llama-worker", 12)),
    ("a-1-7", ("a-1", 7)),
])
def test_rank_is_the_hostname_ordinal(hostname, expected):
    assert rank_from_hostname(hostname) == expected


@pytest.mark.parametrize("hostname", ["driver", "worker-", "Worker-1x", "-3"])
def test_a_hostname_without_ordinal_is_refused(hostname):
    with pytest.raises(NotAStatefulSetPod, match="ordinal"):
        rank_from_hostname(hostname)


def test_all_workers_resolve_through_the_dns_server(dns_server):
    dns_server.set_records(records(TOPOLOGY, 3))
    resolver = DirectDnsResolver(port=dns_server.port)
    found = resolve_all(TOPOLOGY.hostnames(), resolver, deadline_s=5)
    assert found == {name: [ip] for name, ip in records(TOPOLOGY, 3).items()}
    assert list(found) == TOPOLOGY.hostnames()


def test_resolution_waits_for_late_workers(dns_server):
    """Only rank 0 exists at first; the others 'start' 1.5 s later (records added + SIGHUP)."""
    dns_server.set_records(records(TOPOLOGY, 1))
    resolver = DirectDnsResolver(port=dns_server.port)
    assert resolver(TOPOLOGY.hostname(2)) == []
    timer = threading.Timer(1.5, dns_server.set_records, args=(records(TOPOLOGY, 3),))
    timer.start()
    start = time.monotonic()
    try:
        found = resolve_all(TOPOLOGY.hostnames(), resolver, deadline_s=15, interval_s=0.2)
    finally:
        timer.cancel()
    assert time.monotonic() - start >= 1.4
    assert found[TOPOLOGY.hostname(2)] == ["127.0.10.3"]


def test_missing_workers_give_a_typed_timeout(dns_server):
    dns_server.set_records(records(TOPOLOGY, 2))
    resolver = DirectDnsResolver(port=dns_server.port)
    start = time.monotonic()
    with pytest.raises(WorkerDiscoveryTimeout) as info:
        resolve_all(TOPOLOGY.hostnames(), resolver, deadline_s=1.0, interval_s=0.2)
    assert 0.9 <= time.monotonic() - start < 5
    assert info.value.unresolved == [TOPOLOGY.hostname(2)]
    assert "1 worker name(s) did not resolve within 1.0 s" in str(info.value)
