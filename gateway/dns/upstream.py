"""Forwarding to upstream resolvers: order, failover, benching, in-flight dedup and caps.

The transports are upstream_udp.py (plain DNS, and its spoofing resistance), upstream_tls.py
(DNS over TLS) and upstream_https.py (DNS over HTTPS), each a `Transport`; upstream_base.py
holds what they share (the Upstream and its health, errors, observer hooks, reply checks).
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import time
from collections.abc import Callable

from gateway.config.dns import ForwarderConfig
from gateway.config.limits import UpstreamLimits
from gateway.config.upstreams import HTTPS, TLS
from gateway.dns import wire
from gateway.dns.tasks import LoopRef
from gateway.dns.upstream_base import (
    DROP_REASONS,
    HttpStatusError,
    Transport,
    Upstream,
    UpstreamBusy,
    UpstreamError,
    UpstreamObserver,
)
from gateway.dns.upstream_tls import TlsClient, tls_context
from gateway.dns.upstream_udp import UdpClient, UdpPool
from gateway.util.psl import default_suffixes

log = logging.getLogger(__name__)


class Forwarder:
    """Resolves a question through the configured upstreams, sharing identical in-flight queries."""

    def __init__(self, upstreams: list[Upstream], cfg: ForwarderConfig,
                 observer: UpstreamObserver | None = None,
                 clock: Callable[[], float] = time.monotonic,
                 limits: UpstreamLimits | None = None,
                 zone_of: Callable[[bytes], bytes] | None = None) -> None:
        """`zone_of`: a question section -> the zone whose in-flight share it counts against
        (default: its registrable domain by the Public Suffix List, util/psl.py)."""
        if not upstreams:
            raise ValueError("at least one upstream is needed")
        self.upstreams = upstreams
        self.cfg = cfg
        self.observer = observer or UpstreamObserver()
        self.clock = clock
        self.limits = limits or UpstreamLimits()
        self._loop = LoopRef()
        self._inflight: dict[tuple[bytes, bool, bool, bytes], asyncio.Future[bytes]] = {}
        self.zone_of = zone_of or default_suffixes().zone_of_wire
        self._zone_memo: tuple[bytes, bytes] = (b"", b"")   # refusal() then resolve() ask twice
        # refusal() hands these out and nobody raises them: one instance per reason will do
        self._refused = {reason: UpstreamBusy(reason) for reason in DROP_REASONS}
        self._zones: dict[bytes, int] = {}   # registrable domain -> its questions in flight
        # Keyed by the Upstream itself: two entries may share a label (the same address twice,
        # or one TLS address with two certificate names).
        self._ctx: ssl.SSLContext | None = None   # one for all tls:// and https:// upstreams
        self._clients: dict[Upstream, Transport] = {u: self._transport(u) for u in upstreams}

    def _transport(self, u: Upstream) -> Transport:
        if u.transport in (TLS, HTTPS) and self._ctx is None:
            self._ctx = tls_context(self.cfg.tls_ca)
        if u.transport == TLS:
            assert self._ctx is not None
            return TlsClient(u, self._ctx, self.limits.tls_idle_timeout, self.observer)
        if u.transport == HTTPS:
            # Imported here: aiohttp's client is loaded only when an https:// upstream is set.
            from gateway.dns.upstream_https import HttpsClient

            assert self._ctx is not None
            return HttpsClient(u, self._ctx, self.limits, self.observer)
        return UdpClient(UdpPool(u, self.limits.sockets, self.limits.socket_uses,
                                 self.cfg.qname_0x20, self.observer), self.observer)

    def open_sockets(self) -> int:
        """UDP sockets, TLS and HTTPS connections open to upstreams now (the sockets gauge)."""
        return sum(c.open_connections() for c in self._clients.values())

    def _zone(self, question: bytes) -> bytes:
        memo = self._zone_memo
        if memo[0] is question:
            return memo[1]
        zone = self.zone_of(question)
        self._zone_memo = (question, zone)
        return zone

    def refusal(self, question: bytes, do: bool, cd: bool, ecs: bytes = b"") -> UpstreamBusy | None:
        """The UpstreamBusy resolve() would raise at once for this question (counted as a drop
        here), or None: the query path answers a flood's refused questions without scheduling
        anything. A question already in flight is never refused (it shares the answer)."""
        inflight = self._inflight
        if (question, do, cd, ecs) in inflight:
            return None
        if len(inflight) >= self.limits.inflight:
            reason = "inflight"
        elif self._zones.get(self._zone(question), 0) >= self.limits.inflight_per_zone:
            reason = "zone"
        else:
            return None
        self.observer.dropped(reason)
        return self._refused[reason]

    async def resolve(self, question: bytes, *, do: bool, cd: bool, ecs: bytes = b"") -> bytes:
        """The upstream reply (raw bytes) for a question section with a lowercased name.

        `ecs`: EDNS Client Subnet option data to send (only with dns.forward_ecs; never by
        default: the subscriber's address stays with us). Raises UpstreamBusy at once when
        limits.upstream.inflight, or the share of it of the question's registrable domain
        (limits.upstream.inflight_per_zone: `<r>.flood.test` and `<r>.<r>.flood.test` are both
        flood.test's), is full.
        """
        key = (question, do, cd, ecs)
        fut = self._inflight.get(key)
        if fut is not None:
            return await asyncio.shield(fut)
        if len(self._inflight) >= self.limits.inflight:
            self.observer.dropped("inflight")
            raise UpstreamBusy("inflight")
        zone = self._zone(question)
        zones = self._zones
        held = zones.get(zone, 0)
        if held >= self.limits.inflight_per_zone:
            self.observer.dropped("zone")
            raise UpstreamBusy("zone")
        zones[zone] = held + 1
        fut = self._loop.get().create_future()
        self._inflight[key] = fut
        try:
            reply = await self._resolve(question, do, cd, ecs)
        except BaseException as exc:
            err = exc if isinstance(exc, UpstreamError) else UpstreamError(repr(exc))
            if not fut.done():
                fut.set_exception(err)
                fut.exception()  # mark retrieved: waiters may be gone
            if isinstance(exc, asyncio.CancelledError):
                raise
            raise err from None
        else:
            fut.set_result(reply)
            return reply
        finally:
            del self._inflight[key]
            left = zones[zone] - 1
            if left:
                zones[zone] = left
            else:
                del zones[zone]

    def _order(self) -> list[Upstream]:
        """Healthy upstreams in configured order, then benched ones as a last resort."""
        now = self.clock()
        if all(u.benched_until <= now for u in self.upstreams):
            return self.upstreams
        healthy = [u for u in self.upstreams if u.benched_until <= now]
        benched = [u for u in self.upstreams if u.benched_until > now]
        return healthy + benched

    async def _resolve(self, question: bytes, do: bool, cd: bool, ecs: bytes) -> bytes:
        deadline = time.monotonic() + self.cfg.query_timeout
        last_error = "no upstream answered"
        fallback: bytes | None = None
        for upstream in self._order():
            budget = min(self.cfg.attempt_timeout, deadline - time.monotonic())
            if budget <= 0:
                last_error = "query timeout"
                break
            try:
                reply = await self._ask(upstream, question, do, cd, budget, ecs)
            except (OSError, TimeoutError, wire.WireError, UpstreamError) as exc:
                reason = _reason(exc)
                last_error = f"{upstream.label}: {reason}"
                self.observer.error(upstream.label, reason)
                self._failed(upstream)
                continue
            rcode = reply[3] & 0xF
            if rcode in (wire.SERVFAIL, wire.REFUSED):
                # Another upstream may do better; keep this reply in case none does.
                self.observer.error(upstream.label, "servfail" if rcode == wire.SERVFAIL
                                    else "refused")
                fallback = reply
                continue
            upstream.failures = 0
            return reply
        if fallback is not None:
            return fallback
        raise UpstreamError(last_error)

    def _failed(self, upstream: Upstream) -> None:
        upstream.failures += 1
        if upstream.failures >= self.cfg.fail_threshold:
            now = self.clock()
            was_benched = upstream.benched_until > now
            upstream.benched_until = now + self.cfg.bench_seconds
            if not was_benched:
                # Once per outage, not per query: with every upstream down (a school's uplink
                # cut), benched ones are still tried as a last resort and fail each time.
                log.warning("upstream %s benched for %.0fs after %d failures", upstream.label,
                            self.cfg.bench_seconds, upstream.failures)

    async def _ask(self, upstream: Upstream, question: bytes, do: bool, cd: bool,
                   timeout: float, ecs: bytes = b"") -> bytes:
        start = time.perf_counter()
        reply = await self._clients[upstream].ask(question, do, cd, timeout, ecs)
        self.observer.latency(upstream.label, time.perf_counter() - start)
        return reply

    def close(self) -> None:
        for client in self._clients.values():
            client.close()


def _reason(exc: BaseException) -> str:
    """A bounded label for upstream errors (metrics must not carry free text)."""
    if isinstance(exc, TimeoutError):
        return "timeout"
    if isinstance(exc, ConnectionRefusedError):
        return "refused"
    if isinstance(exc, ssl.SSLError):   # handshake, certificate or name check
        return "tls"
    if isinstance(exc, HttpStatusError):
        return "http"
    if isinstance(exc, OSError):
        return "network"
    return "bad_reply"
