"""Plain-DNS upstream queries: a pool of random-port UDP sockets, TCP when a reply is truncated.

Spoofing resistance of plain-DNS upstream queries (an off-path attacker must guess all of it):
- a random 16-bit query ID per query (os.urandom, read in blocks: upstream_base.Entropy);
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
- tls:// upstreams are authenticated instead: nothing to guess (upstream_tls.py).
Replies that match no pending query, or match its ID but not its question, are ignored and
counted (`mismatch`), never believed (upstream_base.reply_mismatch).
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import socket
import struct

from gateway.dns import wire
from gateway.dns.tasks import LoopRef
from gateway.dns.upstream_base import (
    Entropy,
    Upstream,
    UpstreamError,
    UpstreamObserver,
    expire,
    reply_mismatch,
)

_RECV_SIZE = 65_535


class _UdpSocket:
    """One connected UDP socket (a kernel-chosen random source port) in an upstream's pool."""

    __slots__ = ("pending", "pool", "sock", "uses")

    def __init__(self, pool: UdpPool, sock: socket.socket) -> None:
        self.pool = pool
        self.sock = sock
        self.pending: dict[int, tuple[bytes, asyncio.Future[bytes]]] = {}
        self.uses = 0

    def readable(self) -> None:
        # One datagram per call: the loop calls again while more are queued (level-triggered),
        # and the usual single reply costs no second recv() ending in EAGAIN (~3 us a miss).
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


class UdpPool:
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
        self.entropy = Entropy()
        self._loop = LoopRef()

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
            chan = self.active[self.entropy.below(len(self.active))]
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
        problem = reply_mismatch(data, sent, self.exact_case)
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

    async def exchange(self, question: bytes, do: bool, cd: bool, timeout: float,
                       ecs: bytes = b"") -> bytes:
        """One UDP exchange over a socket picked at random from the pool."""
        loop = self._loop.get()
        chan = self.pick(loop)
        bits16 = self.entropy.bits16
        qid = bits16()
        while qid in chan.pending:
            qid = bits16()
        sent = _mix_case(question) if self.exact_case else question
        fut: asyncio.Future[bytes] = loop.create_future()
        chan.pending[qid] = (sent, fut)
        timer = loop.call_later(timeout, expire, fut)
        try:
            chan.sock.send(wire.build_query(qid, sent, do=do, cd=cd, ecs=ecs))
            return await fut
        finally:
            timer.cancel()
            del chan.pending[qid]
            self.release(chan, loop)


async def tcp_exchange(upstream: Upstream, msg: bytes, qid: int, question: bytes) -> bytes:
    """One query over a new TCP connection (after a truncated UDP reply)."""
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


def _matches(reply: bytes, qid: int, question: bytes) -> bool:
    """The reply answers our query: same ID, QR set, same question (name case-insensitively)."""
    if len(reply) < 12 + len(question):
        return False
    rid, flags, qd = struct.unpack_from(">HHH", reply)
    if rid != qid or not flags & wire.QR or qd != 1:
        return False
    echoed = reply[12:12 + len(question)]
    return echoed[:-4].lower() == question[:-4] and echoed[-4:] == question[-4:]


# bytes.translate table: 0x20 for ASCII letters, 0 elsewhere (label lengths are <= 63).
_LETTERS = bytes(0x20 if chr(i).isascii() and chr(i).isalpha() else 0 for i in range(256))


def _mix_case(question: bytes) -> bytes:
    """The question with its name's letters in random case (0x20, draft-vixie-dnsext-dns0x20)."""
    name = question[:-4]
    n = len(name)
    flips = int.from_bytes(name.translate(_LETTERS), "big") & secrets.randbits(8 * n)
    return (int.from_bytes(name, "big") ^ flips).to_bytes(n, "big") + question[-4:]


class UdpClient:
    """A plain-DNS upstream (the Transport of upstream_base): UDP from the socket pool, the
    question again over a new TCP connection when the reply is truncated."""

    def __init__(self, pool: UdpPool, observer: UpstreamObserver) -> None:
        self.pool = pool
        self.upstream = pool.upstream
        self.observer = observer

    async def ask(self, question: bytes, do: bool, cd: bool, timeout: float,
                  ecs: bytes) -> bytes:
        label = self.upstream.label
        self.observer.query(label, "udp")
        reply = await self.pool.exchange(question, do, cd, timeout, ecs)
        if reply[2] & (wire.TC >> 8):
            self.observer.query(label, "tcp")
            qid = secrets.randbits(16)
            msg = wire.build_query(qid, question, do=do, cd=cd, ecs=ecs)
            reply = await asyncio.wait_for(tcp_exchange(self.upstream, msg, qid, question),
                                           timeout)
        return reply

    def open_connections(self) -> int:
        return len(self.pool)

    def close(self) -> None:
        self.pool.close()
