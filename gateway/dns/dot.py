"""DNS over TLS (RFC 7858): TCP's framing and pipelining (RFC 7766) inside TLS 1.2+."""

from __future__ import annotations

import asyncio
import logging
import socket
import ssl
from pathlib import Path

from gateway.dns.chain import Resolver
from gateway.dns.server import Tasks, TcpProtocol

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
    """DoT listeners: one TLS socket per address, each connection a TcpProtocol labelled "dot"."""

    def __init__(self, resolver: Resolver, listen: list[tuple[str, int]], context:
                 ReloadableContext, idle_timeout: float = 10.0) -> None:
        self.resolver = resolver
        self.listen = listen
        self.context = context
        self.idle_timeout = idle_timeout
        self.tasks = Tasks()
        self._servers: list[asyncio.Server] = []
        self._connections: set[TcpProtocol] = set()

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        for host, port in self.listen:
            family = socket.AF_INET6 if ":" in host else socket.AF_INET
            sock = socket.socket(family, socket.SOCK_STREAM)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((host, port))
            server = await loop.create_server(
                lambda: TcpProtocol(self.resolver, self.tasks, self.idle_timeout,
                                    self._connections, "dot"),
                sock=sock, backlog=256, ssl=self.context.outer, ssl_handshake_timeout=10.0)
            self._servers.append(server)
            log.info("DNS over TLS listening on %s port %d", host, port)

    async def stop(self) -> None:
        for server in self._servers:
            server.close()
        for conn in list(self._connections):
            if conn.transport is not None:
                conn.transport.abort()
        await self.tasks.cancel_all()
        for server in self._servers:
            await server.wait_closed()
