"""The DNS listeners: binds UDP and TCP on each dns.listen address and stops them cleanly."""

from __future__ import annotations

import asyncio
import logging
import socket
from types import ModuleType

from gateway.config.limits import StreamLimits, UdpLimits
from gateway.dns.chain import Resolver
from gateway.dns.rrl import Rrl
from gateway.dns.stats import StreamStats
from gateway.dns.streams import StreamTable
from gateway.dns.tasks import Tasks
from gateway.dns.tcp import TcpProtocol
from gateway.dns.udp import UdpProtocol
from gateway.dns.udp_batch import UdpBatchListener

log = logging.getLogger(__name__)


class DnsServer:
    """All DNS listeners (UDP + TCP on each configured address)."""

    def __init__(self, resolver: Resolver, listen: list[tuple[str, int]],
                 limits: StreamLimits | None = None, stats: StreamStats | None = None, *,
                 reuse_port: bool = False, rrl: Rrl | None = None,
                 udp_limits: UdpLimits | None = None, udp_io: ModuleType | None = None) -> None:
        self.resolver = resolver
        self.rrl = rrl
        # udp_io: gateway.dns._udpio (batched recvmmsg/sendmmsg, dns/udp_batch.py) when the
        # caller found it usable (runtime/resolver.py); None: asyncio's UdpProtocol.
        self.udp_io = udp_io
        self.udp_limits = udp_limits or UdpLimits()
        self.stats = stats or StreamStats()
        # dns.workers > 1: every process binds the same addresses and the kernel spreads
        # queries over them (by the 4-tuple hash). Each process has its own TCP table.
        self.reuse_port = reuse_port
        self.listen = listen
        self.tasks = Tasks()
        self.table: StreamTable[TcpProtocol] = StreamTable(
            limits or StreamLimits(), "tcp", resolver, self.stats)
        self._udp: list[asyncio.DatagramTransport] = []
        self._batched: list[UdpBatchListener] = []
        self._tcp: list[asyncio.Server] = []

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        for host, port in self.listen:
            family = socket.AF_INET6 if ":" in host else socket.AF_INET
            sock = socket.socket(family, socket.SOCK_DGRAM)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if self.reuse_port:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 * 1024 * 1024)
            _bind(sock, host, port, "UDP")
            if self.udp_io is not None:
                listener = UdpBatchListener(sock, self.resolver, self.tasks, self.rrl,
                                            self.udp_limits, self.stats, self.udp_io)
                listener.start()
                self._batched.append(listener)
            else:
                transport, _ = await loop.create_datagram_endpoint(
                    lambda: UdpProtocol(self.resolver, self.tasks, self.rrl), sock=sock)
                self._udp.append(transport)
            tsock = socket.socket(family, socket.SOCK_STREAM)
            if family == socket.AF_INET6:
                tsock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            tsock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if self.reuse_port:
                tsock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            _bind(tsock, host, port, "TCP")
            server = await loop.create_server(
                lambda: TcpProtocol(self.resolver, self.tasks, self.table),
                sock=tsock, backlog=256)
            self._tcp.append(server)
            log.info("DNS listening on %s port %d (%s, TCP)", host, port,
                     "UDP batched" if self.udp_io is not None else "UDP")

    async def stop(self) -> None:
        for transport in self._udp:
            transport.close()
        for listener in self._batched:
            listener.close()
        for server in self._tcp:
            server.close()
        for conn in list(self.table.conns):
            if conn.transport is not None:
                conn.transport.close()
        await self.tasks.cancel_all()
        for server in self._tcp:
            await server.wait_closed()


def _bind(sock: socket.socket, host: str, port: int, proto: str) -> None:
    """bind(), with the address in the error: "Address already in use" alone does not say
    which of the listeners `safegate run` was starting."""
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise OSError(exc.errno, f"error while attempting to bind on address {(host, port)!r} "
                                 f"(DNS over {proto}): {exc.strerror}") from None
