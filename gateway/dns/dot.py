"""DNS over TLS (RFC 7858): TCP's framing and pipelining (RFC 7766) inside TLS 1.2+."""

from __future__ import annotations

import asyncio
import logging
import socket
import ssl
from pathlib import Path

from gateway.config.limits import StreamLimits
from gateway.dns.chain import Resolver
from gateway.dns.stats import StreamStats
from gateway.dns.streams import StreamTable
from gateway.dns.tasks import Tasks
from gateway.dns.tcp import TcpProtocol

log = logging.getLogger(__name__)


def server_context(cert: Path, key: Path, alpn: tuple[str, ...] = ()) -> ssl.SSLContext:
    """A server context: TLS 1.2 or newer, no client certificates. Raises OSError/ValueError."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(cert, key)
    if alpn:
        ctx.set_alpn_protocols(list(alpn))
    return ctx


class ReloadableContext:
    """The SSLContext a listener is created with, whose certificate a reload can replace.

    A listening server keeps the context it was created with, so this one hands each new
    handshake over to the current context from its SNI callback (OpenSSL calls it for every
    ClientHello, with or without SNI). Connections already open keep their certificate;
    new ones get the renewed one (Let's Encrypt) without a restart.
    """

    def __init__(self, cert: Path, key: Path, alpn: tuple[str, ...] = ()) -> None:
        self.alpn = alpn
        self.current = server_context(cert, key, alpn)
        self.outer = server_context(cert, key, alpn)
        self.outer.sni_callback = self._pick
        self.source = (cert, key)

    def _pick(self, sslobj: ssl.SSLObject, name: str | None, ctx: ssl.SSLContext) -> None:
        sslobj.context = self.current

    def reload(self, cert: Path, key: Path) -> None:
        """Load the files again (they may be renewed in place); raises and keeps the old one."""
        self.current = server_context(cert, key, self.alpn)
        self.source = (cert, key)


class DotServer:
    """DoT listeners: one TLS socket per address, each connection a TcpProtocol labelled "dot".

    Connections are accepted here, in plain TCP, and admitted by the table before TLS starts:
    a refused peer costs no handshake, and a handshake holds its slot for at most
    frame_timeout.
    """

    def __init__(self, resolver: Resolver, listen: list[tuple[str, int]],
                 context: ReloadableContext, limits: StreamLimits | None = None,
                 stats: StreamStats | None = None) -> None:
        self.resolver = resolver
        self.listen = listen
        self.context = context
        self.tasks = Tasks()
        self.table: StreamTable[TcpProtocol] = StreamTable(
            limits or StreamLimits(), "dot", resolver, stats or StreamStats())
        self._sockets: list[socket.socket] = []
        self._accepting: list[asyncio.Task[None]] = []

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        for host, port in self.listen:
            family = socket.AF_INET6 if ":" in host else socket.AF_INET
            sock = socket.socket(family, socket.SOCK_STREAM)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((host, port))
            sock.listen(256)
            sock.setblocking(False)
            self._sockets.append(sock)
            self._accepting.append(loop.create_task(self._accept(sock)))
            log.info("DNS over TLS listening on %s port %d", host, port)

    async def _accept(self, listener: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        while True:
            try:
                sock, addr = await loop.sock_accept(listener)
            except OSError as exc:   # out of descriptors, mostly: let some close first
                log.warning("DoT: accept failed: %s", exc)
                await asyncio.sleep(0.1)
                continue
            conn = TcpProtocol(self.resolver, self.tasks, self.table, tls=True)
            if not conn.admit(addr[0]):
                sock.close()
                continue
            self.tasks.spawn(self._handshake(conn, sock))

    async def _handshake(self, conn: TcpProtocol, sock: socket.socket) -> None:
        try:
            await asyncio.get_running_loop().connect_accepted_socket(
                lambda: conn, sock, ssl=self.context.outer,
                ssl_handshake_timeout=self.table.limits.frame_timeout)
        except ConnectionAbortedError:   # what the loop raises on ssl_handshake_timeout
            conn.handshake_failed("frame_timeout")
        except Exception as exc:   # bad TLS, a reset: the peer's failure
            log.debug("DoT handshake with %s failed: %r", conn.remote, exc)
            conn.handshake_failed("handshake")

    async def stop(self) -> None:
        for task in self._accepting:
            task.cancel()
        await asyncio.gather(*self._accepting, return_exceptions=True)
        for sock in self._sockets:
            sock.close()
        for conn in list(self.table.conns):
            if conn.transport is not None:
                conn.transport.abort()
        await self.tasks.cancel_all()
