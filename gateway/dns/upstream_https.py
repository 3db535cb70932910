"""DNS over HTTPS to https:// upstreams (RFC 8484): POST application/dns-message, keep-alive.

One aiohttp ClientSession per upstream, created on first use, holding at most
limits.upstream.https_connections HTTP/1.1 keep-alive connections (aiohttp does not speak
HTTP/2; keep-alive gives the same reuse for a resolver's stream of small POSTs). Idle
connections close after limits.upstream.tls_idle_timeout. Certificates are checked against
dns.upstream_ca or the system store, and against the URL's host (or its `#name`).

The query ID is 0 (RFC 8484 4.1); the reply must echo it and the question, be 200 with
Content-Type application/dns-message, and fit a DNS message (65,535 bytes): anything else is
a failed attempt like a timeout, and the forwarder's failover and benching take it from there.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl

import aiohttp

from gateway.config.limits import UpstreamLimits
from gateway.dns import wire
from gateway.dns.upstream_base import (
    HttpStatusError,
    Upstream,
    UpstreamError,
    UpstreamObserver,
    reply_mismatch,
)

CONTENT_TYPE = "application/dns-message"
_MAX_REPLY = 65_535


class HttpsClient:
    """An https:// upstream (the Transport of upstream_base)."""

    def __init__(self, upstream: Upstream, ctx: ssl.SSLContext, limits: UpstreamLimits,
                 observer: UpstreamObserver) -> None:
        self.upstream = upstream
        self.ctx = ctx
        self.limits = limits
        self.observer = observer
        netloc = f"[{upstream.host}]" if ":" in upstream.host else upstream.host
        self.url = f"https://{netloc}:{upstream.port}{upstream.path}"
        self.headers = {"Accept": CONTENT_TYPE, "Content-Type": CONTENT_TYPE}
        if upstream.tls_name:
            # https://9.9.9.9/dns-query#dns.quad9.net: the name is the virtual host too
            self.headers["Host"] = upstream.tls_name if upstream.port == 443 \
                else f"{upstream.tls_name}:{upstream.port}"
        self._session: aiohttp.ClientSession | None = None
        self._closing: set[asyncio.Task[None]] = set()

    def _client(self) -> aiohttp.ClientSession:
        session = self._session
        if session is None or session.closed:
            connector = aiohttp.TCPConnector(
                limit=self.limits.https_connections, ssl=self.ctx,
                keepalive_timeout=self.limits.tls_idle_timeout, ttl_dns_cache=300)
            # No proxy from the environment, no cookies, no User-Agent: a resolver's uplink.
            session = self._session = aiohttp.ClientSession(
                connector=connector, cookie_jar=aiohttp.DummyCookieJar(),
                skip_auto_headers=("User-Agent",), auto_decompress=False)
        return session

    async def ask(self, question: bytes, do: bool, cd: bool, timeout: float,
                  ecs: bytes) -> bytes:
        self.observer.query(self.upstream.label, "https")
        msg = wire.build_query(0, question, do=do, cd=cd, ecs=ecs)
        try:
            async with self._client().post(
                    self.url, data=msg, headers=self.headers, allow_redirects=False,
                    timeout=aiohttp.ClientTimeout(total=timeout),
                    server_hostname=self.upstream.tls_name) as resp:
                if resp.status != 200:
                    raise HttpStatusError(f"HTTP {resp.status}")
                if resp.content_type != CONTENT_TYPE:
                    raise UpstreamError(f"Content-Type {resp.content_type!r}")
                if (resp.content_length or 0) > _MAX_REPLY:
                    raise UpstreamError("reply larger than a DNS message")
                body = bytearray()
                async for chunk in resp.content.iter_chunked(16_384):
                    body += chunk
                    if len(body) > _MAX_REPLY:
                        raise UpstreamError("reply larger than a DNS message")
        except (aiohttp.ClientSSLError, ssl.SSLError):
            raise      # both are ssl.SSLError: the forwarder labels them "tls"
        except aiohttp.ClientError as exc:
            if isinstance(exc, OSError):
                raise
            raise ConnectionError(f"DoH: {exc!r}") from exc   # "network"
        reply = bytes(body)
        problem = "unknown_id" if len(reply) < 12 or reply[:2] != b"\x00\x00" \
            else reply_mismatch(reply, question, exact_case=False)
        if problem:
            self.observer.mismatch(self.upstream.label, problem)
            raise UpstreamError(f"DoH reply does not answer the question ({problem})")
        return reply

    def open_connections(self) -> int:
        """Connections open now, in use or idle (aiohttp keeps no public count)."""
        session = self._session
        if session is None or session.closed:
            return 0
        connector = session.connector
        idle = getattr(connector, "_conns", {})
        busy = getattr(connector, "_acquired", ())
        return sum(len(v) for v in idle.values()) + len(busy)

    def close(self) -> None:
        session, self._session = self._session, None
        if session is None or session.closed:
            return
        with contextlib.suppress(RuntimeError):   # no running loop: nothing left to close on
            task = asyncio.get_running_loop().create_task(session.close())
            self._closing.add(task)
            task.add_done_callback(self._closing.discard)
