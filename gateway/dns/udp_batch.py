"""The batched UDP listener: recvmmsg/sendmmsg (gateway/dns/_udpio.c) instead of one syscall
pair and one transport callback per query.

Each datagram still goes through UdpProtocol.datagram_received (dns/udp.py), with this
listener as its transport: FORMERR on a handler bug, RRL, no reply for None and a task per
upstream miss stay exactly what the asyncio listener does. Only the I/O differs: a readable
event reads at most limits.udp.batch datagrams and answers them with one send_batch, then
returns to the loop (TCP, timers and upstream replies are not starved). Replies the socket
buffer cannot take wait in a queue bounded by limits.udp.send_queue_bytes and flushed on
writability; beyond it they are dropped and counted (safegate_dns_udp_send_dropped_total), so a
client that never reads cannot grow the gateway's memory.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import sys
from collections import deque
from itertools import islice
from types import ModuleType
from typing import Any, cast

from gateway.config.limits import UdpLimits
from gateway.dns.chain import Resolver
from gateway.dns.rrl import Rrl
from gateway.dns.stats import StreamStats
from gateway.dns.tasks import Tasks
from gateway.dns.udp import UdpProtocol

log = logging.getLogger(__name__)

Reply = tuple[bytes, bytes]   # (reply, the client's raw sockaddr)


def batched_udp_io(pure: bool) -> ModuleType | None:
    """The C extension when it can serve (Linux, built, not SAFEGATE_PURE); None otherwise."""
    if pure or not sys.platform.startswith("linux"):
        return None
    try:
        from gateway.dns import _udpio
    except ImportError:
        return None
    return _udpio


class UdpBatchListener:
    """One bound UDP socket served with batched reads and writes on the running loop."""

    def __init__(self, sock: socket.socket, resolver: Resolver, tasks: Tasks, rrl: Rrl | None,
                 limits: UdpLimits, stats: StreamStats, io: ModuleType) -> None:
        self.sock = sock
        self.fd = sock.fileno()
        self.batch = max(1, min(limits.batch, io.MAX_BATCH))
        self.queue_limit = limits.send_queue_bytes
        self.stats = stats
        self._recv = io.recv_batch
        self._send_batch = io.send_batch
        self.queue: deque[Reply] = deque()
        self.queued_bytes = 0
        self.closed = False
        self._out: list[Reply] | None = None    # the replies of the batch being answered
        self._later: list[Reply] = []           # upstream answers finished this loop turn
        self._loop: asyncio.AbstractEventLoop | None = None
        self.protocol = UdpProtocol(resolver, tasks, rrl)
        self.protocol.connection_made(cast(asyncio.BaseTransport, self))

    def start(self) -> None:
        self.sock.setblocking(False)
        self._loop = asyncio.get_running_loop()
        self._loop.add_reader(self.fd, self._readable)

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        if self._loop is not None:
            self._loop.remove_reader(self.fd)
            self._loop.remove_writer(self.fd)
        self.queue.clear()
        self.queued_bytes = 0
        self.sock.close()

    def _readable(self) -> None:
        try:
            batch = self._recv(self.fd, self.batch)
        except OSError as exc:   # e.g. ICMP errors surfacing on the socket: not fatal
            log.debug("UDP receive error: %s", exc)
            return
        out: list[Reply] = []
        self._out = out
        received = self.protocol.datagram_received
        for data, ip, name in batch:
            if data is None:   # longer than a UDP datagram can be: dropped
                continue
            try:
                received(data, (ip, name))
            except Exception:   # as the asyncio transport does: log, go on with the others
                log.exception("bug: UDP datagram handling raised")
        self._out = None
        if out:
            self._send(out)

    # The transport UdpProtocol sees: its address is (ip, raw sockaddr).
    def sendto(self, data: bytes, addr: tuple[Any, ...]) -> None:
        out = self._out
        if out is not None:
            out.append((data, addr[1]))
            return
        # An upstream answer arriving later: the answers finished in this turn of the loop (an
        # upstream socket reads several replies per wake-up) go out in one sendmmsg.
        later = self._later
        later.append((data, addr[1]))
        if len(later) == 1 and self._loop is not None:
            self._loop.call_soon(self._flush_later)

    def _flush_later(self) -> None:
        later, self._later = self._later, []
        if later:
            self._send(later)

    def is_closing(self) -> bool:
        return self.closed

    def _send(self, replies: list[Reply]) -> None:
        if self.closed:
            return
        if not self.queue:   # else keep the order: behind what already waits
            try:
                n = self._send_batch(self.fd, replies)
            except OSError as exc:
                log.debug("UDP send error: %s", exc)
                return
            if n == len(replies):
                return
            replies = replies[n:]
            assert self._loop is not None
            self._loop.add_writer(self.fd, self._writable)
        limit, queue = self.queue_limit, self.queue
        for reply in replies:
            size = len(reply[0])
            if self.queued_bytes + size > limit:
                self.stats.udp["send_dropped"] += 1
                continue
            queue.append(reply)
            self.queued_bytes += size
        if not queue and self._loop is not None:   # everything dropped (a zero bound)
            self._loop.remove_writer(self.fd)

    def _writable(self) -> None:
        queue = self.queue
        items = list(islice(queue, self.batch))   # one batch per event, like reads
        try:
            n = self._send_batch(self.fd, items)
        except OSError as exc:
            log.debug("UDP send error: %s", exc)
            n = len(items)
        for _ in range(n):
            self.queued_bytes -= len(queue.popleft()[0])
        if not queue and self._loop is not None:
            self._loop.remove_writer(self.fd)
