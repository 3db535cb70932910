"""The UDP transport: one protocol per listening socket, answering datagrams for the Resolver."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine
from typing import Any, cast

from gateway.dns.chain import Resolver
from gateway.dns.rrl import Rrl
from gateway.dns.tasks import Tasks
from gateway.dns.wire import formerr_from_header

log = logging.getLogger(__name__)


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
