"""What the forwarder and its transports share: an upstream, the errors, the observer hooks.

Also the check that a reply answers what was sent: replies that match no pending query, or
match its ID but not its question, are ignored and counted (`mismatch`), never believed.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
from collections.abc import Iterable
from typing import Protocol

from gateway.config.upstreams import UpstreamSpec
from gateway.dns import wire

log = logging.getLogger(__name__)

EDE_NOT_READY = 14    # RFC 8914: the server cannot answer this now (over our upstream caps)


class UpstreamError(Exception):
    """Every upstream failed (timeout, network error, or an answer we could not use)."""

    ede: bytes = b""   # an EDE option (RFC 8914) for the SERVFAIL, when there is one to give


class HttpStatusError(UpstreamError):
    """A DoH server answered, but not 200 (error label "http")."""


class UpstreamBusy(UpstreamError):
    """Not sent at all: `limits.upstream.inflight` (or its per-zone share) is full."""

    def __init__(self, reason: str) -> None:
        super().__init__(f"upstream in-flight cap reached ({reason})")
        self.reason = reason
        self.ede = wire.ede_option(EDE_NOT_READY, "too many upstream queries in flight")


class Upstream:
    """One upstream resolver and its health (the same for every transport)."""

    __slots__ = ("benched_until", "failures", "family", "host", "label", "path", "port",
                 "tls_name", "transport")

    def __init__(self, host: str, port: int, transport: str = "udp",
                 tls_name: str | None = None, path: str = "") -> None:
        self.host = host
        self.port = port
        self.transport = transport
        self.tls_name = tls_name
        self.path = path                # https:// only: the URL path
        self.family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self.label = UpstreamSpec(host, port, transport, tls_name, path).label
        self.failures = 0
        self.benched_until = 0.0


def upstreams_from(specs: Iterable[UpstreamSpec]) -> list[Upstream]:
    """The forwarder's upstreams for config's `dns.upstreams`."""
    return [Upstream(s.host, s.port, s.transport, s.tls_name, s.path) for s in specs]


class Transport(Protocol):
    """How one upstream is asked: udp (TCP on truncation), tls or https. The forwarder owns
    the order, failover, benching and latency; a transport sends, counts its attempt with
    `observer.query(label, protocol)`, and checks that the reply answers the question."""

    async def ask(self, question: bytes, do: bool, cd: bool, timeout: float,
                  ecs: bytes) -> bytes: ...

    def open_connections(self) -> int: ...   # for safegate_upstream_sockets

    def close(self) -> None: ...


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

# Every value of the upstream error label (servfail and refused also name such replies;
# tls: the handshake or certificate check failed; http: a DoH server's non-200 answer).
ERROR_REASONS = ("timeout", "refused", "network", "bad_reply", "servfail", "tls", "http")
# The protocol label of safegate_upstream_queries_total per transport.
PROTOCOLS = {"udp": ("udp", "tcp"), "tls": ("tls",), "https": ("https",)}


class Entropy:
    """Unpredictable 16-bit numbers (query IDs, socket picks) from os.urandom read 4 KiB at a
    time: the same kernel CSPRNG as `secrets`, one getrandom() call per 2,048 numbers instead
    of one per number (two or three per miss). A byte is never handed out twice; the buffer is
    filled on first use, so no two processes share one (workers are spawned, never forked).
    """

    __slots__ = ("_buf", "_pos")

    def __init__(self) -> None:
        self._buf = b""
        self._pos = 0

    def bits16(self) -> int:
        pos = self._pos
        buf = self._buf
        if pos + 2 > len(buf):
            buf = self._buf = os.urandom(4096)
            pos = 0
        self._pos = pos + 2
        return (buf[pos] << 8) | buf[pos + 1]

    def below(self, n: int) -> int:
        """Uniform in range(n), 1 <= n <= 65,536 (rejection sampling: no modulo bias)."""
        limit = 65_536 - 65_536 % n
        while True:
            value = self.bits16()
            if value < limit:
                return value % n


def log_failure(exc: UpstreamError, what: str) -> None:
    """Log that no upstream answered `what`. Over an in-flight cap is a flood's normal outcome
    (counted by a metric): no log line per query at INFO."""
    log.log(logging.DEBUG if isinstance(exc, UpstreamBusy) else logging.INFO,
            "upstreams failed for %s: %s", what, exc)


def expire(fut: asyncio.Future[bytes]) -> None:
    """A query's timer ran out (call_later target)."""
    if not fut.done():
        fut.set_exception(TimeoutError())


def reply_mismatch(reply: bytes, sent: bytes, exact_case: bool) -> str:
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
