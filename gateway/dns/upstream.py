"""Forwarding to upstream resolvers: UDP, TCP on truncation, failover, health, in-flight dedup."""

from __future__ import annotations

import asyncio
import logging
import secrets
import socket
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from gateway.dns import wire

log = logging.getLogger(__name__)


class UpstreamError(Exception):
    """Every upstream failed (timeout, network error, or an answer we could not use)."""


@dataclass(frozen=True)
class ForwarderConfig:
    attempt_timeout: float = 1.5     # one try at one upstream
    query_timeout: float = 4.0       # the whole resolution, all upstreams included
    fail_threshold: int = 3          # consecutive failures before an upstream is benched
    bench_seconds: float = 30.0      # how long a benched upstream is skipped


class Upstream:
    """One upstream resolver and its health."""

    __slots__ = ("benched_until", "failures", "family", "host", "label", "port")

    def __init__(self, host: str, port: int) -> None:
        self.host = host
        self.port = port
        self.family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self.label = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        self.failures = 0
        self.benched_until = 0.0


class UpstreamObserver:
    """Hooks the forwarder calls so metrics stay outside it (a no-op base)."""

    def query(self, upstream: str, protocol: str) -> None:
        """An attempt was sent."""

    def error(self, upstream: str, reason: str) -> None:
        """An attempt failed."""

    def latency(self, upstream: str, seconds: float) -> None:
        """An attempt got a usable answer after `seconds`."""


class _UdpChannel(asyncio.DatagramProtocol):
    """One connected UDP socket to one upstream, shared by many queries, matched by ID.

    A channel is retired after `MAX_CHANNEL_USES` queries so the source port keeps changing
    (spoofed answers must guess port and ID); a fresh socket per query costs more than the
    whole rest of a cache miss.
    """

    def __init__(self) -> None:
        self.transport: asyncio.DatagramTransport | None = None
        self.pending: dict[int, tuple[bytes, asyncio.Future[bytes]]] = {}
        self.uses = 0
        self.closed = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: Any) -> None:
        if len(data) < 12:
            return
        entry = self.pending.get((data[0] << 8) | data[1])
        if entry is None:
            return  # late, duplicate or spoofed: ignored
        question, fut = entry
        if _matches(data, (data[0] << 8) | data[1], question) and not fut.done():
            fut.set_result(data)

    def error_received(self, exc: Exception) -> None:
        # On a connected socket this is the upstream's ICMP "port unreachable": fail fast.
        for _question, fut in self.pending.values():
            if not fut.done():
                fut.set_exception(exc)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.error_received(exc or ConnectionResetError("upstream socket closed"))

    def retire_if_idle(self) -> None:
        if self.uses >= MAX_CHANNEL_USES and not self.pending and self.transport is not None:
            self.transport.close()


MAX_CHANNEL_USES = 512


class Forwarder:
    """Resolves a question through the configured upstreams, sharing identical in-flight queries."""

    def __init__(self, upstreams: list[Upstream], cfg: ForwarderConfig,
                 observer: UpstreamObserver | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if not upstreams:
            raise ValueError("at least one upstream is needed")
        self.upstreams = upstreams
        self.cfg = cfg
        self.observer = observer or UpstreamObserver()
        self.clock = clock
        self._inflight: dict[tuple[bytes, bool, bool, bytes], asyncio.Future[bytes]] = {}
        self._channels: dict[str, _UdpChannel] = {}

    async def resolve(self, question: bytes, *, do: bool, cd: bool, ecs: bytes = b"") -> bytes:
        """The upstream reply (raw bytes) for a question section with a lowercased name.

        `ecs`: EDNS Client Subnet option data to send (only with dns.forward_ecs; never by
        default: the subscriber's address stays with us).
        """
        key = (question, do, cd, ecs)
        fut = self._inflight.get(key)
        if fut is not None:
            return await asyncio.shield(fut)
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
        self.observer.query(upstream.label, "udp")
        reply = await self._udp(upstream, question, do, cd, timeout, ecs)
        if reply[2] & (wire.TC >> 8):
            self.observer.query(upstream.label, "tcp")
            qid = secrets.randbits(16)
            msg = wire.build_query(qid, question, do=do, cd=cd, ecs=ecs)
            reply = await asyncio.wait_for(self._tcp(upstream, msg, qid, question), timeout)
        self.observer.latency(upstream.label, time.perf_counter() - start)
        return reply

    async def _channel(self, upstream: Upstream) -> _UdpChannel:
        chan = self._channels.get(upstream.label)
        if chan is None or chan.closed or chan.uses >= MAX_CHANNEL_USES:
            if chan is not None:
                chan.retire_if_idle()
            loop = asyncio.get_running_loop()
            _, chan = await loop.create_datagram_endpoint(
                _UdpChannel, remote_addr=(upstream.host, upstream.port), family=upstream.family)
            self._channels[upstream.label] = chan
        return chan

    async def _udp(self, upstream: Upstream, question: bytes, do: bool, cd: bool,
                   timeout: float, ecs: bytes = b"") -> bytes:
        """One UDP exchange over the upstream's current channel."""
        chan = await self._channel(upstream)
        loop = asyncio.get_running_loop()
        qid = secrets.randbits(16)
        while qid in chan.pending:
            qid = secrets.randbits(16)
        fut: asyncio.Future[bytes] = loop.create_future()
        chan.pending[qid] = (question, fut)
        chan.uses += 1
        timer = loop.call_later(timeout, _expire, fut)
        try:
            assert chan.transport is not None
            chan.transport.sendto(wire.build_query(qid, question, do=do, cd=cd, ecs=ecs))
            return await fut
        finally:
            timer.cancel()
            del chan.pending[qid]
            if chan is not self._channels.get(upstream.label):
                chan.retire_if_idle()

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
        for chan in self._channels.values():
            if chan.transport is not None:
                chan.transport.close()
        self._channels.clear()


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


# Every value of the upstream error label (servfail and refused also name such replies).
ERROR_REASONS = ("timeout", "refused", "network", "bad_reply", "servfail")


def _reason(exc: BaseException) -> str:
    """A bounded label for upstream errors (metrics must not carry free text)."""
    if isinstance(exc, TimeoutError):
        return "timeout"
    if isinstance(exc, ConnectionRefusedError):
        return "refused"
    if isinstance(exc, OSError):
        return "network"
    return "bad_reply"
