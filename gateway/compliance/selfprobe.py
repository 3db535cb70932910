"""Self-probes: send a real query through the live query path and read what a client would get.

A probe is the gateway's proof to itself that an entry is enforced: it runs the same
`Resolver.handle` a client's packet runs (identify, decide, answer), once from an address in
every configured network, and reads the reply with dnslib (a full parse is fine here: probes
are rare).
"""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from dataclasses import dataclass, field

from dnslib import EDNS0, DNSRecord

from gateway.dns.chain import Resolver
from gateway.dns.stats import PROBE
from gateway.dns.wire import NXDOMAIN
from gateway.policy.decide import ProfileId
from gateway.policy.identify import Clients, identify
from gateway.policy.policyfile import Policy

EDE_OPTION = 15
BLOCKED_EDES = (15, 16, 17)


@dataclass(frozen=True)
class NetworkProbe:
    network: str
    client: str
    rcode: int
    ede: int | None
    blocked: bool


@dataclass(frozen=True)
class ProbeResult:
    name: str
    results: tuple[NetworkProbe, ...] = field(default_factory=tuple)

    @property
    def blocked(self) -> bool:
        """Blocked from every network probed (and at least one was)."""
        return bool(self.results) and all(r.blocked for r in self.results)


def probe_clients(policy: Policy, view: Clients) -> Iterator[tuple[str, str]]:
    """(network name, an address identify() really places in that network)."""
    for i, net in enumerate(policy.networks):
        for cidr in net.cidrs:
            first = cidr.network_address
            candidates = [first, first + 1] if cidr.num_addresses > 1 else [first]
            for addr in candidates:
                profile = identify(view, str(addr)).profile
                if profile is not None and profile.id == ProfileId("network", i):
                    yield net.name, str(addr)
                    break
            else:
                continue
            break


async def probe_name(resolver: Resolver, policy: Policy, name: str) -> ProbeResult:
    """Query `name` (A, with EDNS) as each network would, through Resolver.handle."""
    results = []
    for network, client in probe_clients(policy, resolver.view):
        q = DNSRecord.question(name, "A")
        q.header.id = secrets.randbits(16)
        q.add_ar(EDNS0(udp_len=1232))
        result = resolver.handle(bytes(q.pack()), client, PROBE)
        reply = result if isinstance(result, bytes) or result is None else await result
        if reply is None:
            results.append(NetworkProbe(network, client, -1, None, False))
            continue
        parsed = DNSRecord.parse(reply)
        ede = _ede(parsed)
        rcode = parsed.header.rcode
        blocked = ede in BLOCKED_EDES or (rcode == NXDOMAIN and ede is not None)
        results.append(NetworkProbe(network, client, rcode, ede, blocked))
    return ProbeResult(name, tuple(results))


def _ede(record: DNSRecord) -> int | None:
    for rr in record.ar:
        if rr.rtype == 41:
            for opt in rr.rdata:
                if opt.code == EDE_OPTION and len(opt.data) >= 2:
                    return int.from_bytes(opt.data[:2], "big")
    return None


__all__ = ["NetworkProbe", "ProbeResult", "probe_clients", "probe_name"]
