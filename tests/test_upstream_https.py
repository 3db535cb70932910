"""The https:// transport's bounds against a misbehaving DoH server (a real aiohttp HTTPS server
on loopback with a test CA): limits.upstream.https_connections caps the connections however
many queries wait, and a reply larger than a DNS message, of the wrong type, with the wrong ID
or question is refused, never believed."""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Awaitable, Callable
from pathlib import Path

import dns.message
import pytest
from aiohttp import web

from gateway.config.dns import ForwarderConfig
from gateway.config.limits import UpstreamLimits
from gateway.dns import wire
from gateway.dns.upstream import Forwarder
from gateway.dns.upstream_base import Upstream, UpstreamError, UpstreamObserver
from gateway.dns.upstream_https import HttpsClient
from gateway.dns.upstream_tls import tls_context
from tests.support.certs import make_ca_and_cert
from tests.support.procs import free_port

QUESTION = wire.key_to_wire(b"allowed.test") + b"\x00\x01\x00\x01"
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def answer(body: bytes, *, qid: int | None = None) -> bytes:
    q = dns.message.from_wire(body)
    r = dns.message.make_response(q)
    if qid is not None:
        r.id = qid
    return r.to_wire()  # type: ignore[no-any-return]


async def serve(tmp_path: Path, handler: Handler) -> tuple[web.AppRunner, int, Path]:
    ca, cert, key = make_ca_and_cert(tmp_path, "doh.test")
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(cert, key)
    app = web.Application()
    app.router.add_post("/dns-query", handler)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    port = free_port(v6=False, udp=False)
    await web.TCPSite(runner, "127.0.0.1", port, ssl_context=ctx).start()
    return runner, port, ca


def client(port: int, ca: Path, limits: UpstreamLimits | None = None) -> HttpsClient:
    up = Upstream("127.0.0.1", port, "https", "doh.test", "/dns-query")
    return HttpsClient(up, tls_context(str(ca)), limits or UpstreamLimits(), UpstreamObserver())


async def test_connections_are_capped_while_queries_wait(tmp_path: Path) -> None:
    peers: set[int] = set()
    busy = 0
    most = 0

    async def slow(request: web.Request) -> web.Response:
        nonlocal busy, most
        peers.add(request.transport.get_extra_info("peername")[1])  # type: ignore[union-attr]
        busy += 1
        most = max(most, busy)
        await asyncio.sleep(0.05)   # a slow server, so queries pile up (not an assertion)
        busy -= 1
        return web.Response(body=answer(await request.read()),
                            content_type="application/dns-message")

    runner, port, ca = await serve(tmp_path, slow)
    c = client(port, ca, UpstreamLimits(https_connections=2))
    try:
        replies = await asyncio.gather(*(c.ask(QUESTION, False, False, 30.0, b"")
                                         for _ in range(20)))
        assert all(r[12:12 + len(QUESTION)] == QUESTION for r in replies)
        assert len(peers) <= 2 and most <= 2, (peers, most)
        assert c.open_connections() <= 2
    finally:
        c.close()
        await asyncio.sleep(0)
        await runner.cleanup()


@pytest.mark.parametrize("problem", ["huge", "type", "id", "question", "status"])
async def test_bad_replies_are_refused(tmp_path: Path, problem: str) -> None:
    async def bad(request: web.Request) -> web.Response:
        body = await request.read()
        ctype = "application/dns-message"
        if problem == "huge":
            reply = answer(body) + b"\x00" * 70_000
        elif problem == "type":
            reply, ctype = answer(body), "text/html"
        elif problem == "id":
            reply = answer(body, qid=1234)
        elif problem == "question":
            other = wire.build_query(0, wire.key_to_wire(b"other.test") + b"\x00\x01\x00\x01",
                                     do=False, cd=False)
            reply = answer(other)
        else:
            return web.Response(status=503)
        return web.Response(body=reply, content_type=ctype)

    runner, port, ca = await serve(tmp_path, bad)
    c = client(port, ca)
    try:
        with pytest.raises(UpstreamError):
            await c.ask(QUESTION, False, False, 10.0, b"")
    finally:
        c.close()
        await asyncio.sleep(0)
        await runner.cleanup()


async def test_the_forwarder_fails_over_from_a_bad_doh_server(tmp_path: Path) -> None:
    async def teapot(request: web.Request) -> web.Response:
        return web.Response(status=418)

    runner, port, ca = await serve(tmp_path, teapot)
    errors: list[tuple[str, str]] = []

    class Seen(UpstreamObserver):
        def error(self, upstream: str, reason: str) -> None:
            errors.append((upstream, reason))

    fwd = Forwarder([Upstream("127.0.0.1", port, "https", "doh.test", "/dns-query")],
                    ForwarderConfig(tls_ca=str(ca)), Seen())
    try:
        with pytest.raises(UpstreamError):
            await fwd.resolve(QUESTION, do=False, cd=False)
        assert errors == [(f"https://127.0.0.1:{port}/dns-query", "http")]
    finally:
        fwd.close()
        await asyncio.sleep(0)
        await runner.cleanup()
