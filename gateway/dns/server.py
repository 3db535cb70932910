"""DNS transports: UDP and TCP (RFC 7766) listeners that feed bytes to the Resolver."""

from __future__ import annotations

import asyncio
import logging
import socket
import struct
from collections.abc import Coroutine
from typing import Any, cast

from gateway.dns import proxyproto
from gateway.dns.chain import Resolver
from gateway.dns.rrl import Rrl
from gateway.dns.wire import formerr_from_header

log = logging.getLogger(__name__)

MAX_TCP_CONNECTIONS = 1024
MAX_TCP_PIPELINE = 64  # queries one TCP connection may have in flight


class Tasks:
    """Keeps references to background tasks (a bare create_task may be garbage-collected)."""

    def __init__(self) -> None:
        self._tasks: set[asyncio.Task[Any]] = set()

    def spawn(self, coro: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def cancel_all(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)


class UdpProtocol(asyncio.DatagramProtocol):
    """Answers each datagram synchronously when it can; schedules upstream work otherwise."""

    def __init__(self, resolver: Resolver, tasks: Tasks, rrl: Rrl | None = None) -> None:
        self.resolver = resolver
        self.tasks = tasks
        self.rrl = rrl  # response rate limiting: UDP sources can be forged (dns/rrl.py)
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)  # uvloop's is no subclass

    def datagram_received(self, data: bytes, addr: tuple[Any, ...]) -> None:
        try:
            result = self.resolver.handle(data, addr[0], "udp")
        except Exception:
            log.exception("bug: query handling raised; answering FORMERR")
            result = formerr_from_header(data)
        if result is None:
            return
        if isinstance(result, bytes):
            if self.rrl is not None:
                result = self.rrl.check(addr[0], result, self.resolver.view.frontends)
                if result is None:
                    return
            self.transport.sendto(result, addr)  # type: ignore[union-attr]
        else:
            self.tasks.spawn(self._finish(result, addr))

    async def _finish(self, pending: Coroutine[Any, Any, bytes | None],
                      addr: tuple[Any, ...]) -> None:
        try:
            reply = await pending
        except Exception:
            log.exception("bug: upstream handling raised")
            return
        if reply is not None and self.rrl is not None:
            reply = self.rrl.check(addr[0], reply, self.resolver.view.frontends)
        if reply is not None and self.transport is not None and not self.transport.is_closing():
            self.transport.sendto(reply, addr)

    def error_received(self, exc: Exception) -> None:
        log.debug("UDP socket error: %s", exc)


class TcpProtocol(asyncio.Protocol):
    """RFC 7766: 2-byte length framing, several (pipelined) queries per connection, idle timeout."""

    def __init__(self, resolver: Resolver, tasks: Tasks, idle_timeout: float,
                 connections: set[TcpProtocol], protocol: str = "tcp") -> None:
        self.resolver = resolver
        self.protocol = protocol  # metrics label: "tcp", or "dot" for the same framing in TLS
        self.tasks = tasks
        self.idle_timeout = idle_timeout
        self.connections = connections
        self.transport: asyncio.Transport | None = None
        self.buffer = bytearray()
        self.peer = ""
        self.inflight = 0
        self.idle_handle: asyncio.TimerHandle | None = None
        self.expect_proxy = False   # a trusted front end's PROXY v2 header may come first
        self.proxied = False        # self.peer came from that header

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        if len(self.connections) >= MAX_TCP_CONNECTIONS:
            self.transport.abort()
            return
        self.connections.add(self)
        peer = transport.get_extra_info("peername")
        self.peer = peer[0] if peer else ""
        self.expect_proxy = self.protocol == "tcp" and self.resolver.expects_proxy(self.peer)
        self._arm_idle()

    def connection_lost(self, exc: Exception | None) -> None:
        self.connections.discard(self)
        if self.idle_handle is not None:
            self.idle_handle.cancel()

    def _arm_idle(self) -> None:
        if self.idle_handle is not None:
            self.idle_handle.cancel()
        self.idle_handle = asyncio.get_running_loop().call_later(self.idle_timeout, self._idle)

    def _idle(self) -> None:
        if self.inflight == 0 and self.transport is not None:
            self.transport.close()
        else:
            self._arm_idle()

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        self._arm_idle()
        buf = self.buffer
        if self.expect_proxy and not self._proxy_header(buf):
            return  # wait for the rest of the header
        while len(buf) >= 2:
            size = struct.unpack_from(">H", buf)[0]
            if len(buf) < 2 + size:
                break
            msg = bytes(buf[2:2 + size])
            del buf[:2 + size]
            if size == 0:
                continue  # a zero-length frame carries nothing to answer
            self._query(msg)
        if self.inflight >= MAX_TCP_PIPELINE and self.transport is not None:
            self.transport.pause_reading()

    def _proxy_header(self, buf: bytearray) -> bool:
        """Consume a PROXY v2 header at the start of the stream; False while it is incomplete.

        A trusted front end that sends plain DNS instead is served as itself.
        """
        head = bytes(buf[:12])
        if proxyproto.SIGNATURE[:len(head)] != head:
            self.expect_proxy = False
            return True
        try:
            if len(buf) < proxyproto.HEADER_LEN or len(buf) < proxyproto.header_size(buf):
                return False
            source, size = proxyproto.parse(buf)
        except proxyproto.ProxyHeaderError as exc:
            log.debug("closing a connection with a bad PROXY v2 header: %s", exc)
            if self.transport is not None:
                self.transport.abort()
            buf.clear()
            return False
        del buf[:size]
        self.expect_proxy = False
        if source is not None:
            self.peer, self.proxied = source, True
        return True

    def _query(self, msg: bytes) -> None:
        try:
            result = self.resolver.handle(msg, self.peer, self.protocol, proxied=self.proxied)
        except Exception:
            log.exception("bug: query handling raised; answering FORMERR")
            result = formerr_from_header(msg)
        if result is None:
            return
        if isinstance(result, bytes):
            self._send(result)
        else:
            self.inflight += 1
            self.tasks.spawn(self._finish(result))

    async def _finish(self, pending: Coroutine[Any, Any, bytes | None]) -> None:
        try:
            reply = await pending
        except Exception:
            log.exception("bug: upstream handling raised")
            reply = None
        finally:
            self.inflight -= 1
        if reply is not None:
            self._send(reply)
        if self.transport is not None and self.inflight < MAX_TCP_PIPELINE:
            self.transport.resume_reading()

    def _send(self, reply: bytes) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(struct.pack(">H", len(reply)) + reply)


class DnsServer:
    """All DNS listeners (UDP + TCP on each configured address)."""

    def __init__(self, resolver: Resolver, listen: list[tuple[str, int]],
                 tcp_idle_timeout: float = 10.0, *, reuse_port: bool = False,
                 rrl: Rrl | None = None) -> None:
        self.resolver = resolver
        self.rrl = rrl
        # dns.workers > 1: every process binds the same addresses and the kernel spreads
        # queries over them (by the 4-tuple hash).
        self.reuse_port = reuse_port
        self.listen = listen
        self.tcp_idle_timeout = tcp_idle_timeout
        self.tasks = Tasks()
        self._udp: list[asyncio.DatagramTransport] = []
        self._tcp: list[asyncio.Server] = []
        self._connections: set[TcpProtocol] = set()

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
            sock.bind((host, port))
            transport, _ = await loop.create_datagram_endpoint(
                lambda: UdpProtocol(self.resolver, self.tasks, self.rrl), sock=sock)
            self._udp.append(transport)
            tsock = socket.socket(family, socket.SOCK_STREAM)
            if family == socket.AF_INET6:
                tsock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            tsock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if self.reuse_port:
                tsock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            tsock.bind((host, port))
            server = await loop.create_server(
                lambda: TcpProtocol(self.resolver, self.tasks, self.tcp_idle_timeout,
                                    self._connections), sock=tsock, backlog=256)
            self._tcp.append(server)
            log.info("DNS listening on %s port %d (UDP, TCP)", host, port)

    async def stop(self) -> None:
        for transport in self._udp:
            transport.close()
        for server in self._tcp:
            server.close()
        for conn in list(self._connections):
            if conn.transport is not None:
                conn.transport.close()
        await self.tasks.cancel_all()
        for server in self._tcp:
            await server.wait_closed()
