"""Where a proxied name really is: asked of dns.upstreams directly, never of SafeGate.

SafeGate's resolver answers the proxy's own address for names in the intercept set, so the
proxy must not use the system resolver (which may be SafeGate). Answers are cached for their
TTL (at most MAX_TTL), in memory only.
"""

from __future__ import annotations

import ipaddress
import struct
import time
from collections import OrderedDict
from collections.abc import Callable

from dnslib import QTYPE, RCODE, DNSRecord

from gateway.config.gateway import GatewayConfig
from gateway.dns.upstream import Forwarder
from gateway.dns.upstream_base import UpstreamError, upstreams_from
from gateway.dns.wire import key_to_wire
from gateway.util.names import normalize_name

MAX_TTL = 300
NEGATIVE_TTL = 30
CACHE_SIZE = 4096


class ResolveError(Exception):
    """The name has no address upstream (NXDOMAIN, no A/AAAA) or no upstream answered."""


class UpstreamResolver:
    """name -> one address (IPv4 preferred), through the configured upstreams."""

    def __init__(self, forwarder: Forwarder, clock: Callable[[], float] = time.monotonic) -> None:
        self.forwarder = forwarder
        self.clock = clock
        self._cache: OrderedDict[str, tuple[float, str | None]] = OrderedDict()

    @classmethod
    def from_config(cls, config: GatewayConfig) -> UpstreamResolver:
        return cls(Forwarder(upstreams_from(config.upstreams), config.forwarder,
                             limits=config.limits.upstream))

    async def address(self, host: str) -> str:
        """An IP literal is returned as is; a name is resolved (A, then AAAA)."""
        try:
            return str(ipaddress.ip_address(host.strip("[]")))
        except ValueError:
            pass
        try:
            name = normalize_name(host).decode("ascii")
        except ValueError as exc:
            raise ResolveError(f"{host!r}: {exc}") from None
        now = self.clock()
        hit = self._cache.get(name)
        if hit is not None and hit[0] > now:
            if hit[1] is None:
                raise ResolveError(f"{name}: no address upstream")
            return hit[1]
        address, ttl = None, NEGATIVE_TTL
        for qtype in (QTYPE.A, QTYPE.AAAA):
            address, ttl = await self._ask(name, qtype)
            if address is not None:
                break
        self._cache[name] = (now + min(ttl, MAX_TTL), address)
        self._cache.move_to_end(name)
        if len(self._cache) > CACHE_SIZE:
            self._cache.popitem(last=False)
        if address is None:
            raise ResolveError(f"{name}: no address upstream")
        return address

    async def _ask(self, name: str, qtype: int) -> tuple[str | None, int]:
        question = key_to_wire(name.encode()) + struct.pack("!HH", qtype, 1)
        try:
            reply = DNSRecord.parse(await self.forwarder.resolve(question, do=False, cd=False))
        except UpstreamError as exc:
            raise ResolveError(f"{name}: {exc}") from None
        if reply.header.rcode != RCODE.NOERROR:
            return None, NEGATIVE_TTL
        for rr in reply.rr:  # CNAME chains come first; the A/AAAA records follow
            if rr.rtype == qtype:
                return str(rr.rdata), max(int(rr.ttl), 1)
        return None, NEGATIVE_TTL

    def close(self) -> None:
        self.forwarder.close()
