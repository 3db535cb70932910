"""The TCP and DoT transport: RFC 7766 framing and pipelining on one stream connection."""

from __future__ import annotations

import asyncio
import logging
import math
import struct
from collections.abc import Coroutine
from typing import Any, cast

from gateway.dns import proxyproto
from gateway.dns.chain import Resolver
from gateway.dns.stats import PROBE
from gateway.dns.streams import StreamTable
from gateway.dns.tasks import Tasks
from gateway.dns.wire import formerr_from_header

log = logging.getLogger(__name__)

_frame_size = struct.Struct(">H").unpack_from


class TcpProtocol(asyncio.Protocol):
    """RFC 7766 framing and pipelining on one connection, within its table's limits (#10).

    Bounded per connection: queries in flight (`queries_per_connection`), reply bytes queued
    for a client that does not read (`queued_bytes`: parsing and reading stop until the
    transport drains, and a client that reads nothing for `idle_timeout` is closed), a
    started frame or TLS handshake must end within `frame_timeout` (trickling bytes does not
    re-arm it), and no query for `idle_timeout` closes the connection. A client that
    half-closes (shutdown SHUT_WR) still gets every answer, then the connection closes.

    One timer per connection, re-armed only when a deadline comes earlier than the one it
    waits for: the per-query path takes a timestamp, not a timer.
    """

    def __init__(self, resolver: Resolver, tasks: Tasks, table: StreamTable[TcpProtocol],
                 tls: bool = False) -> None:
        limits = table.limits
        self.resolver = resolver
        self.tasks = tasks
        self.table = table
        self.protocol = table.protocol  # metrics label: "tcp", or "dot" (the same in TLS)
        self.tls = tls                  # DoT: admitted at accept, made once TLS is up
        self.admitted = False
        self.max_inflight = max(1, limits.queries_per_connection)
        self.queued_bytes = limits.queued_bytes
        self.idle_timeout = limits.idle_timeout
        self.frame_timeout = limits.frame_timeout
        # Reading pauses while parsing is stalled, so the input holds at most what one read
        # brought (asyncio and uvloop read 256 KiB) and a partial frame; a transport that
        # delivers past pause_reading() is closed beyond that.
        self.input_limit = max(self.queued_bytes, 65_538) + 262_144
        self.loop: asyncio.AbstractEventLoop | None = None
        self.transport: asyncio.Transport | None = None
        self.buffer = bytearray()
        self.peer = ""              # the client: the socket's peer, or a PROXY v2 header's
        self.remote = ""            # the socket's peer (what the table counts)
        self.inflight = 0
        self.expect_proxy = False   # a trusted front end's PROXY v2 header may come first
        self.proxied = False        # self.peer came from that header
        self.write_paused = False   # the transport holds more than queued_bytes
        self.read_paused = False
        self.eof = False            # the client half-closed: answer what is pending, then close
        self.closing = False        # closed by a limit (or gone): nothing more to do
        self.last_query = 0.0       # loop time of the last complete frame or answer
        self.frame_start: float | None = None  # a partial frame (or the handshake) began
        self.stall_start: float | None = None  # the write buffer went over queued_bytes
        self.timer: asyncio.TimerHandle | None = None
        self.timer_at = math.inf

    def admit(self, peer: str) -> bool:
        """Take a slot in the table for `peer` (False: refused, counted and logged)."""
        self.peer = self.remote = peer
        self.admitted = self.table.admit(self, peer)
        return self.admitted

    def handshake_failed(self, reason: str) -> None:
        """DoT: the TLS handshake timed out ("frame_timeout") or failed ("handshake")."""
        self.closing = True
        self.table.closed(self, reason, self.remote)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        tr = cast(asyncio.Transport, transport)
        self.transport = tr
        if not self.admitted:
            peer = tr.get_extra_info("peername")
            if not self.admit(peer[0] if peer else ""):
                self.closing = True
                tr.abort()
                return
        loop = self.loop = asyncio.get_running_loop()
        self.last_query = now = loop.time()
        self._arm(now + self.idle_timeout)
        tr.set_write_buffer_limits(high=self.queued_bytes)
        self.expect_proxy = not self.tls and self.resolver.expects_proxy(self.peer)

    def evict(self) -> bool:
        if self.transport is None:
            return False   # DoT still in its handshake: that ends within frame_timeout
        self._close("evicted")
        return True

    def _close(self, reason: str) -> None:
        """Close on a limit: counted and logged by the table, slot freed at once."""
        if self.closing:
            return
        self.closing = True
        self.table.closed(self, reason, self.remote)
        self._cancel_timer()
        if self.transport is not None:
            if reason == "idle":
                self.transport.close()
            else:
                self.transport.abort()   # what is queued is not worth waiting for

    def connection_lost(self, exc: Exception | None) -> None:
        self.closing = True
        self.table.release(self)
        self._cancel_timer()
        self.buffer.clear()

    def _cancel_timer(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        self.timer_at = math.inf

    def _arm(self, at: float) -> None:
        """Make sure the timer fires by `at` (a later deadline waits for the next tick)."""
        if at < self.timer_at and self.loop is not None and not self.closing:
            if self.timer is not None:
                self.timer.cancel()
            self.timer = self.loop.call_at(at, self._tick)
            self.timer_at = at

    def _tick(self) -> None:
        self.timer = None
        self.timer_at = math.inf
        if self.closing or self.loop is None:
            return
        now = self.loop.time() + 0.001   # a timer may fire a hair early
        start = self.frame_start
        if start is not None and now >= start + self.frame_timeout:
            self._close("frame_timeout")
            return
        stall = self.stall_start
        if stall is not None and now >= stall + self.idle_timeout:
            self._close("backpressure")
            return
        at = self.last_query + self.idle_timeout
        if now >= at:
            if self.inflight == 0 and stall is None:
                self._close("idle")
                return
            at = now + self.idle_timeout   # busy (answers pending or queued): look again
        if start is not None:
            at = min(at, start + self.frame_timeout)
        if stall is not None:
            at = min(at, stall + self.idle_timeout)
        self._arm(at)

    def data_received(self, data: bytes) -> None:
        buf = self.buffer
        buf += data
        if self.read_paused and len(buf) > self.input_limit:
            self._close("backpressure")
            return
        if self.expect_proxy and not self._proxy_header(buf):
            return  # wait for the rest of the header
        self._parse()

    def _parse(self) -> None:
        """Answer the complete frames buffered, until the connection's bounds stop it.

        One read may carry thousands of frames, so the bounds are checked per frame; what is
        left waits in the buffer with reading paused until the bound clears (`_resume`).
        """
        buf = self.buffer
        got = stalled = False
        while len(buf) >= 2:
            if self.write_paused or self.inflight >= self.max_inflight:
                stalled = True
                break
            size = _frame_size(buf)[0]
            if len(buf) < 2 + size:
                break
            msg = bytes(buf[2:2 + size])
            del buf[:2 + size]
            got = True
            if size:  # a zero-length frame carries nothing to answer
                self._query(msg)
        now = self.loop.time() if self.loop is not None else 0.0
        if got:
            self.last_query = now
        if stalled:
            self.frame_start = None   # our pause, not the client's slowness
            self._pause_reading()
        elif buf:
            if got or self.frame_start is None:   # a new partial frame began
                self.frame_start = now
                self._arm(now + self.frame_timeout)
        else:
            self.frame_start = None
            if self.write_paused or self.inflight >= self.max_inflight:
                self._pause_reading()
        if self.eof:
            self._maybe_finish()

    def _pause_reading(self) -> None:
        if not self.read_paused and self.transport is not None:
            self.read_paused = True
            self.transport.pause_reading()

    def _resume(self) -> None:
        """A bound cleared (the write buffer drained, an answer left the pipeline)."""
        if self.closing or self.write_paused or self.inflight >= self.max_inflight:
            return
        if self.buffer:
            self._parse()
        elif self.eof:
            self._maybe_finish()
        if (self.read_paused and not self.eof and not self.closing and not self.write_paused
                and self.inflight < self.max_inflight and self.transport is not None):
            self.read_paused = False
            self.transport.resume_reading()

    def eof_received(self) -> bool | None:
        """The client shut down its sending side: keep the connection for pending answers."""
        self.eof = True
        if self.tls:
            return None   # asyncio cannot keep TLS half-open: it closes either way
        if self.inflight == 0 and not self._frame_waiting():
            return None   # nothing pending: the transport closes after flushing the answers
        return True

    def _frame_waiting(self) -> bool:
        buf = self.buffer
        return len(buf) >= 2 and len(buf) >= 2 + _frame_size(buf)[0]

    def _maybe_finish(self) -> None:
        """After EOF: close (flushing the answers) once nothing is pending."""
        if self.inflight == 0 and not self._frame_waiting() and self.transport is not None:
            self.transport.close()

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
            self._close("proxy_header")
            buf.clear()
            return False
        del buf[:size]
        self.expect_proxy = False
        if source is not None:
            self.peer, self.proxied = source, True
        else:
            # A LOCAL header: the front end's own connection (its health check), counted
            # apart from subscribers' queries (chain.py does the same over UDP).
            self.protocol = PROBE
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
        if self.loop is not None:
            self.last_query = self.loop.time()   # an answer sent: idle counts from here
        self._resume()

    def _send(self, reply: bytes) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(struct.pack(">H", len(reply)) + reply)

    def pause_writing(self) -> None:
        """The transport holds more than queued_bytes: stop answering until it drains."""
        self.write_paused = True
        if self.loop is not None and self.stall_start is None:
            self.stall_start = now = self.loop.time()
            self._arm(now + self.idle_timeout)
        self._pause_reading()

    def resume_writing(self) -> None:
        self.write_paused = False
        self.stall_start = None
        self._resume()
