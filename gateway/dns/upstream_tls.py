"""DNS over TLS to tls:// upstreams (RFC 7858): one persistent, pipelined connection each.

Spoofing: the connection is authenticated, so there is nothing for an off-path attacker to
guess. Queries are pipelined on it and replies matched by ID and question.
"""

from __future__ import annotations

import asyncio
import secrets
import ssl
import struct
import time
from collections.abc import Callable

from gateway.dns import wire
from gateway.dns.upstream_base import (
    Upstream,
    UpstreamError,
    UpstreamObserver,
    expire,
    reply_mismatch,
)


class _TlsConnection:
    """One DNS-over-TLS connection: queries pipelined, replies matched by ID (RFC 7858)."""

    def __init__(self, upstream: Upstream, reader: asyncio.StreamReader,
                 writer: asyncio.StreamWriter, observer: UpstreamObserver) -> None:
        self.upstream = upstream
        self.reader = reader
        self.writer = writer
        self.observer = observer
        self.pending: dict[int, tuple[bytes, asyncio.Future[bytes]]] = {}
        self.closed = False
        self.last_used = time.monotonic()
        self.task = asyncio.get_running_loop().create_task(self._read())

    async def _read(self) -> None:
        exc: BaseException = ConnectionResetError("TLS connection to the upstream closed")
        try:
            while True:
                size = struct.unpack(">H", await self.reader.readexactly(2))[0]
                data = await self.reader.readexactly(size)
                entry = self.pending.get((data[0] << 8) | data[1]) if size >= 12 else None
                if entry is None:
                    self.observer.mismatch(self.upstream.label, "unknown_id")
                    continue
                sent, fut = entry
                problem = reply_mismatch(data, sent, exact_case=False)
                if problem:
                    self.observer.mismatch(self.upstream.label, problem)
                elif not fut.done():
                    fut.set_result(data)
        except (asyncio.IncompleteReadError, OSError) as err:
            if isinstance(err, OSError):
                exc = err
        finally:
            self.close()
            for _question, fut in self.pending.values():
                if not fut.done():
                    fut.set_exception(exc)

    def send(self, msg: bytes) -> None:
        self.writer.write(struct.pack(">H", len(msg)) + msg)

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self.writer.close()
            if asyncio.current_task() is not self.task:
                self.task.cancel()


class TlsClient:
    """A tls:// upstream: one persistent connection, opened on demand, shared by all queries,
    reopened after the server closes it, closed after `idle` seconds with nothing asked."""

    def __init__(self, upstream: Upstream, ctx: ssl.SSLContext, idle: float,
                 observer: UpstreamObserver) -> None:
        self.upstream = upstream
        self.ctx = ctx
        self.idle = idle
        self.observer = observer
        self.conn: _TlsConnection | None = None
        self._connecting: asyncio.Task[_TlsConnection] | None = None
        self._idle_timer: asyncio.TimerHandle | None = None

    async def _connection(self) -> _TlsConnection:
        conn = self.conn
        if conn is not None and not conn.closed:
            return conn
        if self._connecting is None:
            # One handshake for every query that arrives meanwhile (no await before this).
            self._connecting = asyncio.get_running_loop().create_task(self._open())
            self._connecting.add_done_callback(self._opened)
        return await asyncio.shield(self._connecting)

    async def _open(self) -> _TlsConnection:
        up = self.upstream
        reader, writer = await asyncio.open_connection(
            up.host, up.port, ssl=self.ctx, server_hostname=up.tls_name or up.host)
        return _TlsConnection(up, reader, writer, self.observer)

    def _opened(self, task: asyncio.Task[_TlsConnection]) -> None:
        self._connecting = None
        if not task.cancelled() and task.exception() is None:
            self.conn = task.result()

    async def ask(self, question: bytes, do: bool, cd: bool, timeout: float,
                  ecs: bytes) -> bytes:
        """The Transport of upstream_base: one query on the shared connection."""
        self.observer.query(self.upstream.label, "tls")
        return await self.exchange(
            question, lambda qid: wire.build_query(qid, question, do=do, cd=cd, ecs=ecs),
            timeout)

    async def exchange(self, question: bytes, msg_for: Callable[[int], bytes],
                       timeout: float) -> bytes:
        """One query; once more on a new connection if a reused one closed under it (the
        server's idle timeout may have raced our query)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        reused = self.conn is not None and not self.conn.closed
        try:
            return await self._exchange(question, msg_for, timeout)
        except ConnectionError:
            remaining = deadline - loop.time()
            if not reused or remaining <= 0:
                raise
            return await self._exchange(question, msg_for, remaining)

    async def _exchange(self, question: bytes, msg_for: Callable[[int], bytes],
                        timeout: float) -> bytes:
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[bytes] = loop.create_future()
        timer = loop.call_later(timeout, expire, fut)
        conn: _TlsConnection | None = None
        qid = -1
        try:
            conn = await asyncio.wait_for(self._connection(), timeout)
            if len(conn.pending) >= 0xFFFF:
                raise UpstreamError("no query ID free on the TLS connection")
            qid = secrets.randbits(16)
            while qid in conn.pending:
                qid = secrets.randbits(16)
            conn.pending[qid] = (question, fut)
            conn.send(msg_for(qid))
            return await fut
        finally:
            timer.cancel()
            if conn is not None:
                conn.pending.pop(qid, None)
                conn.last_used = time.monotonic()
                if not conn.pending:
                    self._arm_idle(loop)

    def _arm_idle(self, loop: asyncio.AbstractEventLoop) -> None:
        if self._idle_timer is None:
            self._idle_timer = loop.call_later(self.idle, self._idle_check)

    def _idle_check(self) -> None:
        self._idle_timer = None
        conn = self.conn
        if conn is None or conn.closed:
            return
        quiet = time.monotonic() - conn.last_used
        if conn.pending or quiet < self.idle:
            self._idle_timer = asyncio.get_running_loop().call_later(
                max(self.idle - quiet, 0.01), self._idle_check)
            return
        conn.close()
        self.conn = None

    def open_connections(self) -> int:
        return int(self.conn is not None and not self.conn.closed)

    def close(self) -> None:
        if self._idle_timer is not None:
            self._idle_timer.cancel()
            self._idle_timer = None
        if self._connecting is not None:
            self._connecting.cancel()
        if self.conn is not None:
            self.conn.close()
            self.conn = None


def tls_context(cafile: str | None) -> ssl.SSLContext:
    """Certificates checked against `cafile` (dns.upstream_ca) or the system store."""
    ctx = ssl.create_default_context(cafile=cafile)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    return ctx
