"""Forwarding to upstream resolvers: UDP (TCP on truncation) or DNS over TLS, failover,
health, in-flight dedup and caps.

Spoofing resistance of plain-DNS upstream queries (an off-path attacker must guess all of it):
- a random 16-bit query ID (`secrets`) per query;
- a random source port: each upstream has a pool of at most `limits.upstream.sockets`
  (default 8) connected UDP sockets, each bound by the kernel to a random ephemeral port
  (Linux: ip_local_port_range, 28,232 ports by default, ~14.8 bits). A query takes a pool
  socket at random and a socket is replaced after `limits.upstream.socket_uses` (default 16)
  queries. Blind: ~16 + 14.8 = ~30.8 bits per reply. An attacker who somehow learned which
  ports are open (an ICMP side channel, SAD DNS) still faces 16 + log2(8) = 19 bits, for
  at most 16 queries per port. bench/upstream_sockets.py measured the alternative, a fresh
  socket per query: ~11 us more per query on loopback (~38 vs ~27 us for the exchange), so
  the pool it is;
- optional 0x20 (`dns.upstream_0x20`): the query name's letters in random case, and the reply
  must echo them exactly: one more bit per letter (www.example.com: +13 bits). A reply that
  matches in all but case is treated as a spoof (ignored, counted).
- tls:// upstreams (RFC 7858) are authenticated: nothing to guess. One persistent connection
  per upstream carries pipelined queries matched by ID.
Replies that match no pending query, or match its ID but not its question, are ignored and
counted (`mismatch`), never believed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import socket
import ssl
import struct
import time
from collections.abc import Callable, Iterable

from gateway.config.dns import ForwarderConfig
from gateway.config.limits import UpstreamLimits
from gateway.config.upstreams import TLS, UpstreamSpec
from gateway.dns import wire

log = logging.getLogger(__name__)

EDE_NOT_READY = 14    # RFC 8914: the server cannot answer this now (over our upstream caps)
_RECV_SIZE = 65_535


class UpstreamError(Exception):
    """Every upstream failed (timeout, network error, or an answer we could not use)."""

    ede: bytes = b""   # an EDE option (RFC 8914) for the SERVFAIL, when there is one to give


class UpstreamBusy(UpstreamError):
    """Not sent at all: `limits.upstream.inflight` (or its per-zone share) is full."""

    def __init__(self, reason: str) -> None:
        super().__init__(f"upstream in-flight cap reached ({reason})")
        self.reason = reason
        self.ede = wire.ede_option(EDE_NOT_READY, "too many upstream queries in flight")


class Upstream:
    """One upstream resolver and its health."""

    __slots__ = ("benched_until", "failures", "family", "host", "label", "port", "tls_name",
                 "transport")

    def __init__(self, host: str, port: int, transport: str = "udp",
                 tls_name: str | None = None) -> None:
        self.host = host
        self.port = port
        self.transport = transport
        self.tls_name = tls_name
        self.family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self.label = UpstreamSpec(host, port, transport, tls_name).label
        self.failures = 0
        self.benched_until = 0.0


def upstreams_from(specs: Iterable[UpstreamSpec]) -> list[Upstream]:
    """The forwarder's upstreams for config's `dns.upstreams`."""
    return [Upstream(s.host, s.port, s.transport, s.tls_name) for s in specs]


class UpstreamObserver:
    """Hooks the forwarder calls so metrics stay outside it (a no-op base)."""

    def query(self, upstream: str, protocol: str) -> None:
        """An attempt was sent."""

    def error(self, upstream: str, reason: str) -> None:
        """An attempt failed."""

    def latency(self, upstream: str, seconds: float) -> None:
        """An attempt got a usable answer after `seconds`."""

    def mismatch(self, upstream: str, reason: str) -> None:
        """A reply was ignored (MISMATCH_REASONS): late, or a spoofing attempt."""

    def dropped(self, reason: str) -> None:
        """A question was not sent: an in-flight cap (DROP_REASONS) was full."""


# Label values: why a reply was ignored, and why a question was not sent.
MISMATCH_REASONS = ("unknown_id", "question", "case")
DROP_REASONS = ("inflight", "zone")


class _UdpSocket:
    """One connected UDP socket (a kernel-chosen random source port) in an upstream's pool."""

    __slots__ = ("pending", "pool", "sock", "uses")

    def __init__(self, pool: _UdpPool, sock: socket.socket) -> None:
        self.pool = pool
        self.sock = sock
        self.pending: dict[int, tuple[bytes, asyncio.Future[bytes]]] = {}
        self.uses = 0

    def readable(self) -> None:
        while True:
            try:
                data = self.sock.recv(_RECV_SIZE)
            except BlockingIOError:
                return
            except OSError as exc:
                # On a connected socket this is the upstream's ICMP "port unreachable": fail
                # fast. (The socket stays usable.)
                for _question, fut in self.pending.values():
                    if not fut.done():
                        fut.set_exception(exc)
                return
            self.pool.deliver(self, data)


class _UdpPool:
    """An upstream's UDP sockets: at most `size` in use, each retired after `max_uses`.

    Sockets are created synchronously (no await between the check and the insert), so any
    number of concurrent misses share the pool. A retired socket closes once its last
    pending query ends; each one still open holds a pending query, so the sockets open are
    at most `size` + the queries in flight (capped by limits.upstream.inflight).
    """

    def __init__(self, upstream: Upstream, size: int, max_uses: int, exact_case: bool,
                 observer: UpstreamObserver) -> None:
        self.upstream = upstream
        self.size = max(1, size)
        self.max_uses = max(1, max_uses)
        self.exact_case = exact_case
        self.observer = observer
        self.active: list[_UdpSocket] = []
        self.retired: set[_UdpSocket] = set()

    def __len__(self) -> int:
        return len(self.active) + len(self.retired)

    def pick(self, loop: asyncio.AbstractEventLoop) -> _UdpSocket:
        if len(self.active) < self.size:
            sock = socket.socket(self.upstream.family, socket.SOCK_DGRAM)
            try:
                sock.setblocking(False)
                sock.connect((self.upstream.host, self.upstream.port))
                chan = _UdpSocket(self, sock)
                loop.add_reader(sock.fileno(), chan.readable)
            except BaseException:
                sock.close()
                raise
            self.active.append(chan)
        else:
            chan = self.active[secrets.randbelow(len(self.active))]
        chan.uses += 1
        if chan.uses >= self.max_uses:
            self.active.remove(chan)
            self.retired.add(chan)
        return chan

    def release(self, chan: _UdpSocket, loop: asyncio.AbstractEventLoop) -> None:
        """A query on `chan` ended: close it if it is retired and idle."""
        if not chan.pending and chan in self.retired:
            self.retired.discard(chan)
            self._close(chan, loop)

    def deliver(self, chan: _UdpSocket, data: bytes) -> None:
        label = self.upstream.label
        if len(data) < 12:
            self.observer.mismatch(label, "unknown_id")
            return
        entry = chan.pending.get((data[0] << 8) | data[1])
        if entry is None:
            self.observer.mismatch(label, "unknown_id")   # late, duplicate or spoofed
            return
        sent, fut = entry
        problem = _mismatch(data, sent, self.exact_case)
        if problem:
            self.observer.mismatch(label, problem)
        elif not fut.done():
            fut.set_result(data)

    def _close(self, chan: _UdpSocket, loop: asyncio.AbstractEventLoop) -> None:
        with contextlib.suppress(Exception):
            loop.remove_reader(chan.sock.fileno())
        chan.sock.close()

    def close(self) -> None:
        loop: asyncio.AbstractEventLoop | None
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            loop = None
        for chan in [*self.active, *self.retired]:
            if loop is not None:
                self._close(chan, loop)
            else:
                chan.sock.close()
            for _question, fut in chan.pending.values():
                if not fut.done():
                    fut.set_exception(ConnectionResetError("upstream socket closed"))
        self.active.clear()
        self.retired.clear()


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
                problem = _mismatch(data, sent, exact_case=False)
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


class _TlsClient:
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
        timer = loop.call_later(timeout, _expire, fut)
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


class Forwarder:
    """Resolves a question through the configured upstreams, sharing identical in-flight queries."""

    def __init__(self, upstreams: list[Upstream], cfg: ForwarderConfig,
                 observer: UpstreamObserver | None = None,
                 clock: Callable[[], float] = time.monotonic,
                 limits: UpstreamLimits | None = None) -> None:
        if not upstreams:
            raise ValueError("at least one upstream is needed")
        self.upstreams = upstreams
        self.cfg = cfg
        self.observer = observer or UpstreamObserver()
        self.clock = clock
        self.limits = limits or UpstreamLimits()
        self._inflight: dict[tuple[bytes, bool, bool, bytes], asyncio.Future[bytes]] = {}
        self._zones: dict[bytes, int] = {}   # parent zone -> questions of it in flight
        # Keyed by the Upstream itself: two entries may share a label (the same address twice,
        # or one TLS address with two certificate names).
        self._pools = {u: _UdpPool(u, self.limits.sockets, self.limits.socket_uses,
                                   cfg.qname_0x20, self.observer)
                       for u in upstreams if u.transport != TLS}
        self._tls: dict[Upstream, _TlsClient] = {}
        if any(u.transport == TLS for u in upstreams):
            ctx = tls_context(cfg.tls_ca)
            self._tls = {u: _TlsClient(u, ctx, self.limits.tls_idle_timeout, self.observer)
                         for u in upstreams if u.transport == TLS}

    def open_sockets(self) -> int:
        """UDP sockets and TLS connections open to upstreams now (the sockets gauge)."""
        return sum(len(p) for p in self._pools.values()) + \
            sum(c.open_connections() for c in self._tls.values())

    async def resolve(self, question: bytes, *, do: bool, cd: bool, ecs: bytes = b"") -> bytes:
        """The upstream reply (raw bytes) for a question section with a lowercased name.

        `ecs`: EDNS Client Subnet option data to send (only with dns.forward_ecs; never by
        default: the subscriber's address stays with us). Raises UpstreamBusy at once when
        limits.upstream.inflight, or the question's parent zone's share of it, is full.
        """
        key = (question, do, cd, ecs)
        fut = self._inflight.get(key)
        if fut is not None:
            return await asyncio.shield(fut)
        if len(self._inflight) >= self.limits.inflight:
            self.observer.dropped("inflight")
            raise UpstreamBusy("inflight")
        zone = _parent_zone(question)
        zones = self._zones
        held = zones.get(zone, 0)
        if held >= self.limits.inflight_per_zone:
            self.observer.dropped("zone")
            raise UpstreamBusy("zone")
        zones[zone] = held + 1
        fut = asyncio.get_running_loop().create_future()
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
        if upstream.transport == TLS:
            self.observer.query(upstream.label, "tls")
            reply = await self._tls[upstream].exchange(
                question, lambda qid: wire.build_query(qid, question, do=do, cd=cd, ecs=ecs),
                timeout)
            self.observer.latency(upstream.label, time.perf_counter() - start)
            return reply
        self.observer.query(upstream.label, "udp")
        reply = await self._udp(upstream, question, do, cd, timeout, ecs)
        if reply[2] & (wire.TC >> 8):
            self.observer.query(upstream.label, "tcp")
            qid = secrets.randbits(16)
            msg = wire.build_query(qid, question, do=do, cd=cd, ecs=ecs)
            reply = await asyncio.wait_for(self._tcp(upstream, msg, qid, question), timeout)
        self.observer.latency(upstream.label, time.perf_counter() - start)
        return reply

    async def _udp(self, upstream: Upstream, question: bytes, do: bool, cd: bool,
                   timeout: float, ecs: bytes = b"") -> bytes:
        """One UDP exchange over a socket picked at random from the upstream's pool."""
        loop = asyncio.get_running_loop()
        pool = self._pools[upstream]
        chan = pool.pick(loop)
        qid = secrets.randbits(16)
        while qid in chan.pending:
            qid = secrets.randbits(16)
        sent = _mix_case(question) if pool.exact_case else question
        fut: asyncio.Future[bytes] = loop.create_future()
        chan.pending[qid] = (sent, fut)
        timer = loop.call_later(timeout, _expire, fut)
        try:
            chan.sock.send(wire.build_query(qid, sent, do=do, cd=cd, ecs=ecs))
            return await fut
        finally:
            timer.cancel()
            del chan.pending[qid]
            pool.release(chan, loop)

    async def _tcp(self, upstream: Upstream, msg: bytes, qid: int, question: bytes) -> bytes:
        reader, writer = await asyncio.open_connection(upstream.host, upstream.port)
        try:
            writer.write(struct.pack(">H", len(msg)) + msg)
            await writer.drain()
            size = struct.unpack(">H", await reader.readexactly(2))[0]
            reply = await reader.readexactly(size)
        except asyncio.IncompleteReadError as exc:
            raise UpstreamError("TCP connection closed mid-answer") from exc
        finally:
            writer.close()
        if not _matches(reply, qid, question):
            raise UpstreamError("TCP answer does not match the question")
        return reply

    def close(self) -> None:
        for pool in self._pools.values():
            pool.close()
        for client in self._tls.values():
            client.close()


def _expire(fut: asyncio.Future[bytes]) -> None:
    if not fut.done():
        fut.set_exception(TimeoutError())


def _matches(reply: bytes, qid: int, question: bytes) -> bool:
    """The reply answers our query: same ID, QR set, same question (name case-insensitively)."""
    if len(reply) < 12 + len(question):
        return False
    rid, flags, qd = struct.unpack_from(">HHH", reply)
    if rid != qid or not flags & wire.QR or qd != 1:
        return False
    echoed = reply[12:12 + len(question)]
    return echoed[:-4].lower() == question[:-4] and echoed[-4:] == question[-4:]


def _mismatch(reply: bytes, sent: bytes, exact_case: bool) -> str:
    """"" when `reply` (whose ID matched) answers the question `sent`, else why not: its
    question differs ("question"), or only the case of its name does with 0x20 on ("case")."""
    n = len(sent)
    if len(reply) < 12 + n or not reply[2] & 0x80 or reply[4:6] != b"\x00\x01":
        return "question"
    echoed = reply[12:12 + n]
    if echoed == sent:
        return ""
    if echoed[-4:] != sent[-4:] or echoed[:-4].lower() != sent[:-4].lower():
        return "question"
    return "case" if exact_case else ""


# bytes.translate table: 0x20 for ASCII letters, 0 elsewhere (label lengths are <= 63).
_LETTERS = bytes(0x20 if chr(i).isascii() and chr(i).isalpha() else 0 for i in range(256))


def _mix_case(question: bytes) -> bytes:
    """The question with its name's letters in random case (0x20, draft-vixie-dnsext-dns0x20)."""
    name = question[:-4]
    n = len(name)
    flips = int.from_bytes(name.translate(_LETTERS), "big") & secrets.randbits(8 * n)
    return (int.from_bytes(name, "big") ^ flips).to_bytes(n, "big") + question[-4:]


def _parent_zone(question: bytes) -> bytes:
    """The question's name minus its first label (wire form): what an in-flight share counts."""
    first = question[0]
    return question[1 + first:-4] if first else b"\x00"


# Every value of the upstream error label (servfail and refused also name such replies;
# tls: the handshake or certificate check failed).
ERROR_REASONS = ("timeout", "refused", "network", "bad_reply", "servfail", "tls")


def _reason(exc: BaseException) -> str:
    """A bounded label for upstream errors (metrics must not carry free text)."""
    if isinstance(exc, TimeoutError):
        return "timeout"
    if isinstance(exc, ConnectionRefusedError):
        return "refused"
    if isinstance(exc, ssl.SSLError):   # handshake, certificate or name check
        return "tls"
    if isinstance(exc, OSError):
        return "network"
    return "bad_reply"
