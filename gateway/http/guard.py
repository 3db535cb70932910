"""Connection limits for the gateway's aiohttp listeners (web, web.tls, metrics).

aiohttp keeps a connection as long as the client wants: one that never finishes its headers,
or sends them a byte a minute, or stays idle between requests holds a descriptor forever. Each
accepted connection's protocol is wrapped here: a global and a per-client cap (refused = closed
at once), a header deadline that starts at the request's first byte and that later bytes do not
move, a deadline for the rest of the request (a body sent a byte at a time, an answer never
read), and an idle deadline between requests. A middleware tells the wrapper when aiohttp has
parsed the headers (request running: no deadline) and when the handler is done (idle again).

With web.tls the listener accepts plain TCP and the guard starts TLS on each admitted
connection: a connection in its handshake counts under the caps, and handshake plus headers are
due within header_timeout.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
from collections.abc import Awaitable, Callable, Sequence
from ssl import SSLContext
from typing import Any, cast

from aiohttp import web
from prometheus_client import CollectorRegistry, Counter, Gauge

from gateway.config.limits import WebLimits

Networks = Sequence[ipaddress.IPv4Network | ipaddress.IPv6Network]
LISTENERS = ("web", "metrics")
REFUSED = ("global", "per_client")
CLOSED = ("header_timeout", "request_timeout", "idle")

WAITING, HEADERS, RUNNING = 0, 1, 2
EARLY_MAX = 64 * 1024      # a ClientHello, or a request sent right behind the handshake

log = logging.getLogger(__name__)


class WebMetrics:
    """safegate_web_* for every listener, on the registry passed in (labels: listener,
    reason; never a client)."""

    def __init__(self, registry: CollectorRegistry,
                 listeners: tuple[str, ...] = LISTENERS) -> None:
        self.connections = Gauge("safegate_web_connections",
                                 "Open HTTP connections, by listener", ["listener"],
                                 registry=registry)
        self.refused = Counter("safegate_web_refused",
                               "HTTP connections closed at once: limits.web.connections "
                               "(global) or per_client reached", ["listener", "reason"],
                               registry=registry)
        self.closed = Counter("safegate_web_closed",
                              "HTTP connections closed by the gateway: headers not complete "
                              "within limits.web.header_timeout, request (body and answer) "
                              "not done within request_timeout, or idle for idle_timeout",
                              ["listener", "reason"], registry=registry)
        for listener in listeners:
            self.connections.labels(listener)
            for reason in REFUSED:
                self.refused.labels(listener, reason)
            for reason in CLOSED:
                self.closed.labels(listener, reason)


def client_key(peer: Any) -> str:
    """Who a per-client cap counts: the address, an IPv6 client by its /64."""
    address = peer[0] if isinstance(peer, tuple) and peer else ""
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return ""
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.ip_network(f"{ip}/64", strict=False))
    return str(ip)


class ConnectionGuard:
    """The limits of one listener; `exempt()` (trusted front ends) skip the per-client cap,
    since every client behind them shares their address."""

    def __init__(self, limits: WebLimits, metrics: WebMetrics, listener: str,
                 exempt: Callable[[], Networks] = lambda: (),
                 tls: SSLContext | None = None) -> None:
        self.limits = limits
        self.listener = listener   # "web", "metrics", "admin": the start-up log names it
        self.exempt = exempt
        self.tls = tls
        self.open = 0
        self.per_client: dict[str, int] = {}
        self.by_handler: dict[asyncio.Protocol, _Guarded] = {}
        self.gauge = metrics.connections.labels(listener)
        self.refused = {r: metrics.refused.labels(listener, r) for r in REFUSED}
        self.closed = {r: metrics.closed.labels(listener, r) for r in CLOSED}

    def install(self, app: web.Application) -> None:
        """Add the middleware that marks requests running and done (before app setup)."""
        by_handler = self.by_handler

        @web.middleware
        async def deadlines(request: web.Request,
                            handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
                            ) -> web.StreamResponse:
            conn = by_handler.get(request.protocol)
            if conn is not None:
                conn.running()
            try:
                return await handler(request)
            finally:
                if conn is not None:
                    conn.waiting()

        app.middlewares.append(deadlines)

    def factory(self, inner: Callable[[], asyncio.Protocol]) -> Callable[[], asyncio.Protocol]:
        return lambda: _Guarded(self, inner)

    def admit(self, key: str, address: str) -> str | None:
        """None (and counted) if a connection from `key` may open, else the refusal reason."""
        if self.open >= self.limits.connections:
            return "global"
        if self.per_client.get(key, 0) >= self.limits.per_client and not self._exempt(address):
            return "per_client"
        self.open += 1
        self.per_client[key] = self.per_client.get(key, 0) + 1
        self.gauge.set(self.open)
        return None

    def release(self, key: str) -> None:
        self.open -= 1
        left = self.per_client.get(key, 1) - 1
        if left > 0:
            self.per_client[key] = left
        else:
            self.per_client.pop(key, None)
        self.gauge.set(self.open)

    def _exempt(self, address: str) -> bool:
        try:
            ip = ipaddress.ip_address(address)
        except ValueError:
            return False
        return any(ip in net for net in self.exempt())


class _Guarded(asyncio.Protocol):
    """One connection: counted from the TCP accept; TLS (if any) is started here, so that a
    connection still in its handshake holds a place under the caps and the header deadline;
    aiohttp's protocol is created once the connection is admitted (and its handshake done)."""

    def __init__(self, guard: ConnectionGuard, inner: Callable[[], asyncio.Protocol]) -> None:
        self.guard = guard
        self.make_inner = inner
        self.inner: asyncio.Protocol | None = None
        self.transport: asyncio.Transport | None = None
        self.key = ""
        self.admitted = False
        self.state = WAITING
        self.timer: asyncio.TimerHandle | None = None
        self.handshake: asyncio.Task[None] | None = None
        # Bytes that arrived before there was anyone to take them: the ClientHello before
        # start_tls put TLS in between, or a request right behind the handshake.
        self.early = bytearray()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)   # a stream server's, always
        peer = transport.get_extra_info("peername")
        self.key = client_key(peer)
        address = peer[0] if isinstance(peer, tuple) and peer else ""
        refused = self.guard.admit(self.key, address)
        if refused is not None:
            self.guard.refused[refused].inc()
            self.transport.abort()
            return
        self.admitted = True
        if self.guard.tls is None:
            self._serve(self.transport)
            return
        # The handshake is part of what must be done within header_timeout.
        self.state = HEADERS
        self._arm(self.guard.limits.header_timeout, "header_timeout")
        loop = asyncio.get_running_loop()
        self.handshake = loop.create_task(self._start_tls(self.transport, self.guard.tls))
        # What the client sent before start_tls swapped in its TLS protocol goes to that
        # protocol once it is connected: call_soon is first in, first out, so this runs after
        # the task's first step and then after the callbacks that step scheduled.
        loop.call_soon(loop.call_soon, self._replay, self.transport)

    async def _start_tls(self, raw: asyncio.Transport, context: SSLContext) -> None:
        loop = asyncio.get_running_loop()
        try:
            # Our own timer closes a slow handshake first (and counts it); this is a backstop.
            tls = await loop.start_tls(raw, self, context, server_side=True,
                                       ssl_handshake_timeout=2 * self.guard.limits.header_timeout)
        except asyncio.CancelledError:
            raw.abort()
            self._release()
            raise
        except Exception as exc:   # reset, timeout, not TLS at all: the client's problem
            log.debug("web listener: TLS handshake failed: %r", exc)
            raw.abort()
            self._release()
            return
        if tls is None or not self.admitted or raw.is_closing() or tls.is_closing():
            # Closed during the handshake: start_tls may still "succeed" with a dead transport.
            raw.abort()
            self._release()
            return
        self.transport = tls
        self._serve(tls)

    def _replay(self, raw: asyncio.Transport) -> None:
        proto = raw.get_protocol()
        data, self.early = bytes(self.early), bytearray()
        if not data or proto is self or raw.is_closing():
            return
        # asyncio's and uvloop's TLS protocols take bytes the buffered way (uvloop's is no
        # subclass of asyncio.BufferedProtocol, hence the duck typing).
        if hasattr(proto, "get_buffer") and hasattr(proto, "buffer_updated"):
            view = memoryview(data)
            while view:
                buf = memoryview(proto.get_buffer(len(view)))
                n = min(len(buf), len(view))
                buf[:n] = view[:n]
                proto.buffer_updated(n)
                view = view[n:]
        else:
            cast(asyncio.Protocol, proto).data_received(data)

    def _serve(self, transport: asyncio.Transport) -> None:
        self.inner = self.make_inner()
        self.guard.by_handler[self.inner] = self
        self.inner.connection_made(transport)
        self.waiting()
        data, self.early = bytes(self.early), bytearray()
        if data:
            self.data_received(data)

    def data_received(self, data: bytes) -> None:
        if self.inner is None:
            if self.admitted:
                self.early += data
                if len(self.early) > EARLY_MAX and self.transport is not None:
                    self.transport.abort()
            return
        if self.state == WAITING:
            # The request's first byte: its headers are due header_timeout from now.
            self.state = HEADERS
            self._arm(self.guard.limits.header_timeout, "header_timeout")
        self.inner.data_received(data)

    def eof_received(self) -> bool | None:
        return self.inner.eof_received() if self.inner is not None else None

    def pause_writing(self) -> None:
        if self.inner is not None:
            self.inner.pause_writing()

    def resume_writing(self) -> None:
        if self.inner is not None:
            self.inner.resume_writing()

    def connection_lost(self, exc: Exception | None) -> None:
        self._release()
        inner, self.inner = self.inner, None
        if inner is None:
            return
        self.guard.by_handler.pop(inner, None)
        inner.connection_lost(exc)

    def _release(self) -> None:
        """Give the connection's places back, once (a failed handshake reports twice)."""
        self._cancel()
        if self.admitted:
            self.admitted = False
            self.guard.release(self.key)

    def running(self) -> None:
        """aiohttp parsed the headers and runs the handler: body and answer are due."""
        if self.inner is None:
            return
        self.state = RUNNING
        self._arm(self.guard.limits.request_timeout, "request_timeout")

    def waiting(self) -> None:
        """Between requests (or before the first): idle_timeout until the next byte."""
        if self.inner is None:
            return      # the handler ended after the connection did
        self.state = WAITING
        self._arm(self.guard.limits.idle_timeout, "idle")

    def _arm(self, delay: float, reason: str) -> None:
        self._cancel()
        self.timer = asyncio.get_running_loop().call_later(delay, self._expire, reason)

    def _cancel(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None

    def _expire(self, reason: str) -> None:
        self.timer = None
        if not self.admitted or self.transport is None:
            return
        self.guard.closed[reason].inc()
        self.transport.abort()
        if self.inner is None:
            self._release()     # in its handshake: no connection_lost reaches us then


class GuardedSite(web.BaseSite):
    """aiohttp's TCPSite with the guard around every connection's protocol (the guard starts
    TLS itself when it has a context)."""

    __slots__ = ("_guard", "_host", "_port")

    def __init__(self, runner: web.BaseRunner, host: str, port: int, guard: ConnectionGuard,
                 backlog: int = 128) -> None:
        super().__init__(runner, backlog=backlog)
        self._host = host
        self._port = port
        self._guard = guard

    @property
    def name(self) -> str:
        scheme = "https" if self._guard.tls is not None else "http"
        host = f"[{self._host}]" if ":" in self._host else self._host
        return f"{scheme}://{host}:{self._port}"

    async def start(self) -> None:
        await super().start()
        server = self._runner.server
        assert server is not None
        self._server = await asyncio.get_running_loop().create_server(
            self._guard.factory(server), self._host, self._port, backlog=self._backlog)
