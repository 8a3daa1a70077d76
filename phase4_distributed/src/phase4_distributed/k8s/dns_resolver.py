"""A resolver that asks one DNS server directly (``dnspython``), for discovery outside the pod's
/etc/resolv.conf: a test's loopback dnsmasq, or a cluster DNS reached from outside the cluster."""

from __future__ import annotations

import logging
from dataclasses import dataclass

import dns.exception
import dns.resolver

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class DirectDnsResolver:
    """Resolves A records at ``nameserver:port``; a name the server does not know gives ``[]``."""

    nameserver: str = "127.0.0.1"
    port: int = 53
    timeout_s: float = 1.0

    def __call__(self, name: str) -> list[str]:
        resolver = dns.resolver.Resolver(configure=False)
        resolver.nameservers = [self.nameserver]
        resolver.port = self.port
        resolver.lifetime = self.timeout_s
        try:
            answer = resolver.resolve(name, "A", search=False)
        except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer, dns.resolver.NoNameservers,
                dns.exception.Timeout) as exc:
            logger.debug("%s did not resolve at %s:%d: %s", name, self.nameserver, self.port, exc)
            return []
        return sorted(record.address for record in answer)
