"""Who may hold a DNS-over-TCP or DNS-over-TLS connection: one listener kind's table.

Stream connections are cheap to open and each holds a descriptor and buffers, so one host could
take every slot (issue #10). The table caps connections per client (an address; for IPv6 a
/64, which one host usually owns whole), in total, and for clients outside every network
together (they are answered REFUSED, so they need little room). When the table is full, an
inside client takes the slot of the oldest outside connection. Trusted front ends (dnsdist)
carry many clients on their connections, so they have no per-client cap.

Every refusal and every close the gateway decides is counted (gateway.dns.stats.StreamStats)
and logged at most once a minute per client and reason: a flood never floods the log.
"""

from __future__ import annotations

import ipaddress
import logging
import time
from collections.abc import Callable
from typing import Generic, Protocol, TypeVar

from gateway.config.limits import StreamLimits
from gateway.dns.chain import Resolver
from gateway.dns.stats import StreamStats

log = logging.getLogger(__name__)

LOG_INTERVAL = 60.0      # seconds between two log lines for one client and reason
_LOG_MEMORY = 4096       # clients remembered for that; forgotten in bulk beyond


class Evictable(Protocol):
    def evict(self) -> bool:
        """Close now, the table needs the slot for an inside client (False: not now)."""


C = TypeVar("C", bound=Evictable)

_NAMES = {"tcp": "DNS over TCP", "dot": "DNS over TLS"}


def client_key(address: str) -> str:
    """What the per-client cap counts: the address, or for IPv6 its /64 (but link-local)."""
    if ":" not in address:
        return address
    try:
        ip = ipaddress.IPv6Address(address.partition("%")[0])   # `exploded` trips on a zone
    except ValueError:
        return address
    if ip.is_link_local:
        return address   # every host of a LAN shares fe80::/64: each address is a client
    return ip.exploded[:19] + "::/64"


class StreamTable(Generic[C]):
    """The open connections of one transport ("tcp" or "dot") in one process."""

    def __init__(self, limits: StreamLimits, protocol: str, resolver: Resolver,
                 stats: StreamStats, clock: Callable[[], float] = time.monotonic) -> None:
        self.limits = limits
        self.protocol = protocol
        self.resolver = resolver   # its current view says who is inside and who is a front end
        self.stats = stats
        self.clock = clock
        self.conns: dict[C, str] = {}          # connection -> its client key
        self.outside: dict[C, None] = {}       # connections from no network, oldest first
        self.per_client: dict[str, int] = {}
        self._logged: dict[tuple[str, str], float] = {}

    def __len__(self) -> int:
        return len(self.conns)

    def admit(self, conn: C, peer: str) -> bool:
        """Take a slot for `conn` from `peer`, or count and log why not (False: close it)."""
        view = self.resolver.view
        frontend = view.frontends is not None and bool(view.frontends.lookup(peer))
        outside = not frontend and view.clients.lookup(peer) is None
        key = client_key(peer)
        lim = self.limits
        what = f"limits.{self.protocol}"
        if not frontend and self.per_client.get(key, 0) >= lim.per_client:
            return self._refuse(key, "per_client", "refused a connection from %s: it holds %d "
                                "already (%s.per_client)", peer, lim.per_client, what)
        if outside and len(self.outside) >= min(lim.outside, lim.connections):
            return self._refuse(key, "outside", "refused a connection from %s (in no network): "
                                "%d such connections open (%s.outside)", peer, len(self.outside),
                                what)
        # Full: an inside client takes an outside one's slot (the oldest that can go now).
        if len(self.conns) >= lim.connections and (outside or not self._evict_outside()):
            return self._refuse(key, "global", "refused a connection from %s: all %d "
                                "connections in use (%s.connections)", peer, lim.connections,
                                what)
        self.conns[conn] = key
        self.per_client[key] = self.per_client.get(key, 0) + 1
        if outside:
            self.outside[conn] = None
        self.stats.connections[self.protocol] += 1
        return True

    def _evict_outside(self) -> bool:
        """Close the oldest outside connection that can go now (counted by `closed`)."""
        for victim in self.outside:
            if victim.evict():
                self.release(victim)
                return True
        return False

    def release(self, conn: C) -> None:
        """`conn` is gone (or going): free its slot. Safe to call more than once."""
        key = self.conns.pop(conn, None)
        if key is None:
            return
        self.outside.pop(conn, None)
        n = self.per_client[key] - 1
        if n:
            self.per_client[key] = n
        else:
            del self.per_client[key]
        self.stats.connections[self.protocol] -= 1

    def closed(self, conn: C, reason: str, peer: str) -> None:
        """The gateway closes `conn` on a limit (a STREAM_CLOSES reason): count, log, free."""
        self.stats.closed[(self.protocol, reason)] += 1
        lim = self.limits
        what = f"limits.{self.protocol}"
        key = client_key(peer)
        if reason == "frame_timeout":
            self._log(key, reason, "closed a connection from %s: a query (or the TLS handshake) "
                      "did not complete within %gs (%s.frame_timeout)", peer, lim.frame_timeout,
                      what)
        elif reason == "backpressure":
            self._log(key, reason, "closed a connection from %s: it has not read its answers "
                      "for %gs (%s.queued_bytes, idle_timeout)", peer, lim.idle_timeout, what)
        elif reason == "evicted":
            self._log(key, reason, "closed a connection from %s (in no network) to make room "
                      "for an inside client (%s.connections)", peer, what)
        elif reason in ("handshake", "proxy_header"):
            log.debug("%s: closed a connection from %s (%s)", _NAMES[self.protocol], peer,
                      reason)
        self.release(conn)

    def _refuse(self, key: str, reason: str, msg: str, *args: object) -> bool:
        self.stats.refused[(self.protocol, reason)] += 1
        self._log(key, reason, msg, *args)
        return False

    def _log(self, key: str, reason: str, msg: str, *args: object) -> None:
        now = self.clock()
        last = self._logged.get((key, reason))
        if last is not None and now - last < LOG_INTERVAL:
            return
        if len(self._logged) >= _LOG_MEMORY:
            self._logged = {k: t for k, t in self._logged.items() if now - t < LOG_INTERVAL}
            if len(self._logged) >= _LOG_MEMORY:   # that many clients within a minute
                self._logged.clear()
        self._logged[(key, reason)] = now
        log.warning("%s: " + msg + " [logged once a minute per client]",
                    _NAMES[self.protocol], *args)
